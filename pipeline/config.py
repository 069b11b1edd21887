"""The one settings object, in a room per stage. Every value can be set with an ``UNMARK_``
environment variable named after its field (``UNMARK_MAX_PAGES``, ``UNMARK_CLEAN_TILE``), whatever
stage it belongs to; code reads it as ``settings.<stage>.<field>`` (``settings.scrape.max_pages``).

``UNMARK_HOME`` (default ``./data``) holds the catalog, blobs, training runs and reports; the
catalog URL and blob root default to places inside it.

| stage | holds |
| --- | --- |
| ``storage`` | home, the catalog (URL, SQLite timeout, write batches, retry) and the blob store |
| ``images`` | the pixel cap every decoder of untrusted bytes applies |
| ``scrape`` | the fetcher, the crawl's bounds and the headless browser |
| ``dedup`` | near-duplicate threshold and hashing workers |
| ``triage`` | detector training, calibration and scoring |
| ``models`` | where the shipped models are read from and the device models run on |
| ``train`` | remover training |
| ``clean`` | batch cleaning: tiles, precision, backend, output format, decoding workers |
| ``scale`` | the task runner, Dask, and cleaning claims |
"""

from __future__ import annotations

import difflib
from pathlib import Path

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from storage.db import default_catalog_url

_ENV = SettingsConfigDict(env_prefix="UNMARK_", extra="forbid")


class StorageSettings(BaseSettings):
    """Where things live: home, the catalog and the blob store (``storage.open_catalog``,
    ``storage.BlobStore.from_settings``)."""

    model_config = _ENV

    home: Path = Field(default=Path("./data"), description="root of runtime data")
    catalog_url: str | None = Field(default=None, description="SQLAlchemy URL; default sqlite in home")
    blob_root: str | None = Field(default=None, description="local folder or fsspec URL; default home/blobs")
    # Extra fsspec storage options for the blob root (e.g. s3 endpoint / credentials).
    blob_endpoint_url: str | None = None
    blob_key_id: str | None = None
    blob_secret: str | None = None
    blob_region: str | None = None  # S3 region name (set it for S3 so nothing asks AWS for one)
    blob_retry_s: float = 60.0  # how long an object store that does not answer is retried before a step fails
    sqlite_busy_timeout_ms: int = 60_000
    write_batch_size: int = 500
    catalog_retry_s: float = 60.0  # how long a lost database connection is retried before a step fails

    @model_validator(mode="after")
    def _fill_defaults(self) -> StorageSettings:
        self.home = Path(self.home).expanduser()
        if self.catalog_url is None:
            self.catalog_url = default_catalog_url(self.home)
        if self.blob_root is None:
            self.blob_root = str((self.home / "blobs").resolve())
        return self

    def blob_storage_options(self) -> dict:
        """fsspec storage options derived from the blob_* settings (empty for local folders)."""
        opts: dict = {}
        if self.blob_endpoint_url:
            opts["client_kwargs"] = {"endpoint_url": self.blob_endpoint_url}
        if self.blob_region:
            opts.setdefault("client_kwargs", {})["region_name"] = self.blob_region
        if self.blob_key_id:
            opts["key"] = self.blob_key_id
        if self.blob_secret:
            opts["secret"] = self.blob_secret
        return opts


class ImageSettings(BaseSettings):
    """The guard of ``pipeline.images``, applied wherever untrusted bytes are decoded."""

    model_config = _ENV

    max_image_pixels: int = 64_000_000


class ScrapeSettings(BaseSettings):
    """The fetcher, the crawl and the headless browser (``pipeline/scrape/``)."""

    model_config = _ENV

    user_agent: str = "UnmarkBot/0.1 (+https://example.invalid/unmark)"
    max_image_bytes: int = 20 * 1024 * 1024
    max_page_bytes: int = 5 * 1024 * 1024
    min_image_side: int = 64
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 15.0
    download_deadline_s: float = 60.0
    per_host_concurrency: int = 4
    per_host_delay_s: float = 0.0
    global_concurrency: int = 16
    max_retries: int = 3
    max_redirects: int = 5
    max_pages: int = 1000  # per scrape run (``--max-pages``, the ingest flow's ``max_pages``)
    max_depth: int = 3  # link hops from a seed (``--max-depth``, the ingest flow's ``max_depth``)
    max_links_per_page: int = 20_000
    max_images_per_page: int = 1_000
    retry_backoff_s: float = 0.5  # first retry waits this, doubling (Retry-After wins when sent)
    max_backoff_s: float = 60.0  # cap on any one wait, Retry-After included
    max_crawl_delay_s: float = 30.0  # cap on a robots.txt Crawl-delay
    scrape_icons: bool = False  # also take <link rel=icon> / apple-touch-icon images
    max_stylesheets_per_page: int = 20  # linked and @import-ed sheets read for images, per page
    max_import_depth: int = 3  # @import levels followed from a page's own sheets
    # rendered pages (pipeline/scrape/render.py): never | auto (pages with scripts and no static image) | always
    render: str = "never"
    chromium_path: str | None = None  # default: `chromium` on PATH
    render_timeout_s: float = 15.0  # a page's whole time in the browser: load, scrolls, reading the DOM
    render_max_requests: int = 200  # requests one page may make through the fetcher
    render_restart_every: int = 100  # pages, then a fresh browser process
    render_concurrency: int = 4  # pages in the browser at once (bench/render.py)
    render_max_scrolls: int = 20  # viewport steps down a page (lazy loading, infinite scroll)
    render_settle_s: float = 0.15  # quiet time (no request in flight or started) that ends a wait
    # where a browser request that escaped interception would go: a loopback port nothing serves
    # (tests listen there to prove that nothing arrives)
    render_trap_proxy: str = "http://127.0.0.1:9"


class DedupSettings(BaseSettings):
    """Exact and near duplicates (``pipeline/dedup.py``)."""

    model_config = _ENV

    # Max Hamming distance between the 128-bit (pHash ‖ dHash) codes of two near duplicates;
    # chosen from the precision/recall curve in bench/dedup.py (bench/results/dedup.json).
    dedup_threshold: int = 22
    dedup_workers: int = 0  # hashing processes; 0 = one per core
    dedup_chunk_size: int = 64  # images per hashing task


class TriageSettings(BaseSettings):
    """The watermark detector: training, calibration and scoring (``pipeline/triage.py``)."""

    model_config = _ENV

    triage_target_precision: float = 0.98
    # The watermarked share triage expects to meet; both pools are calibrated to the target precision
    # at that mix (model.detector.calibrate), not at the calibration samples' own half-and-half.
    triage_prevalence: float = Field(default=0.1, gt=0, lt=1)
    triage_batch_size: int = 32
    # cold-start / retrain length (self-supervised pairs); whichever of steps and minutes ends
    # first (bench/triage.py: held-out ROC-AUC 0.80 after 3,800 steps, 0.86 after 4,200 paired ones)
    detector_steps: int = 6000
    detector_crop: int = 160
    detector_batch_size: int = 16
    detector_max_minutes: float | None = 20.0
    detector_val_samples: int = 200
    # Watermark families held out of detector training and used only for its validation and
    # calibration, so its reported numbers measure generalisation to unseen styles.
    detector_holdout_families: str = "tiled,badge"
    # Families the detector never trains on. Plain lines, rectangles and circles ("shape") look
    # like picture content (fences, horizons, flat walls): trained on them, detectors fired on
    # clean photos, and one trained without them ranked held-out marks better
    # (bench/results/triage.json). The remover still trains on every family.
    detector_skip_families: str = "shape"
    # Share of each detector training batch drawn from hard negatives: clean windows around the
    # cells that fire most on the clean training photos scored whole, re-mined every
    # detector_mine_every steps (model.detector.mine_hard_cells). Four 40-minute seeds with 0.25
    # against two without: mean accuracy 0.883 vs 0.839, images left uncertain 31 % vs 48 %
    # (bench/results/triage.json); 0 turns it off.
    detector_hard_negatives: float = 0.25
    detector_mine_every: int = 1000


class ModelSettings(BaseSettings):
    """Where the shipped models come from and where models run (init, triage, train, clean, evaluate)."""

    model_config = _ENV

    # where the shipped detector and remover are read from (None: model/weights/; a folder without
    # them: nothing ships, and triage's cold start trains a cell detector on the pool)
    shipped_weights: Path | None = None
    device: str = "auto"


class TrainSettings(BaseSettings):
    """Remover training (``pipeline/train.py``)."""

    model_config = _ENV

    perceptual: str = Field(default="imagenet", description="imagenet | random | off")


class CleanSettings(BaseSettings):
    """Batch cleaning (``pipeline/clean.py``, ``model/remover/infer.py``)."""

    model_config = _ENV

    output_format: str = Field(default="png", description="png | jpeg")
    # Tiles: None = by device (CUDA 512/64; CPU 512/32: with the fused CPU backend, fewer overlap
    # pixels beat smaller tiles; bench/results/infer.json). Any size works: memory depends on
    # the tile, not the image.
    clean_tile: int | None = None
    clean_overlap: int | None = None
    clean_batch_size: int | None = None  # tiles per forward pass; None = by device
    clean_precision: str = Field(default="auto", description="auto | fp32 | bf16 | fp16")
    clean_compile: bool = False  # torch.compile the remover (minutes to compile; bench/results/infer.json)
    clean_backend: str = Field(default="auto", description="auto | eager | fused (CPU fp32: BatchNorm folded, fused activations) | int8 (CPU with VNNI: calibrated int8 copy; auto takes it where faster and ≥40 dB from fp32)")
    clean_chunk_images: int = 8  # images decoded, cleaned and committed together
    num_workers: int = 2  # DataLoader processes decoding images for the cleaner (0 = in-process)
    clean_changed_threshold: int = 8  # |output − input| above this (0–255, any channel) = changed
    clean_score_real_pairs: bool = True  # also run the model on real pairs, scored vs the clean copy


class ScaleSettings(BaseSettings):
    """Scale-out: the Dask task runner in ``flows/`` and cleaning claims (``storage/claims.py``)."""

    model_config = _ENV

    task_runner: str = Field(default="thread", description="thread | dask: where hashing and triage scoring run")
    dask_address: str | None = None  # a running Dask scheduler (tcp://host:8786); None = a local cluster
    dask_workers: int = 2  # processes of the local cluster, one thread each
    claim_batch: int = 16  # images a cleaning worker claims at a time
    claim_lease_s: float = 600.0  # a claim neither completed nor renewed in this time is free again


STAGES: dict[str, type[BaseSettings]] = {
    "storage": StorageSettings, "images": ImageSettings, "scrape": ScrapeSettings, "dedup": DedupSettings,
    "triage": TriageSettings, "models": ModelSettings, "train": TrainSettings, "clean": CleanSettings,
    "scale": ScaleSettings,
}


def _stage_of_fields() -> dict[str, str]:
    """Field name -> its stage. A field name is unique across stages, so a flat name (and its
    ``UNMARK_`` variable) says where it goes."""
    out: dict[str, str] = {}
    for stage, cls in STAGES.items():
        for name in cls.model_fields:
            if name in out:
                raise RuntimeError(f"setting {name!r} is declared by both {out[name]} and {stage}")
            out[name] = stage
    return out


STAGE_OF = _stage_of_fields()


class UnknownSettingError(TypeError):
    """A flat override named no field of any stage."""

    def __init__(self, name: str):
        self.name = name
        near = difflib.get_close_matches(name, STAGE_OF, n=1)
        super().__init__(f"unknown setting {name!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))


def by_stage(overrides: dict) -> dict[str, dict]:
    """Flat ``{field: value}`` overrides grouped as ``{stage: {field: value}}``."""
    grouped: dict[str, dict] = {}
    for name, value in overrides.items():
        if name not in STAGE_OF:
            raise UnknownSettingError(name)
        grouped.setdefault(STAGE_OF[name], {})[name] = value
    return grouped


class Settings(BaseModel):
    """Every stage's settings; ``load_settings`` builds one from the environment."""

    storage: StorageSettings = Field(default_factory=StorageSettings)
    images: ImageSettings = Field(default_factory=ImageSettings)
    scrape: ScrapeSettings = Field(default_factory=ScrapeSettings)
    dedup: DedupSettings = Field(default_factory=DedupSettings)
    triage: TriageSettings = Field(default_factory=TriageSettings)
    models: ModelSettings = Field(default_factory=ModelSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    clean: CleanSettings = Field(default_factory=CleanSettings)
    scale: ScaleSettings = Field(default_factory=ScaleSettings)

    def updated(self, **overrides) -> Settings:
        """A copy with flat overrides (``max_retries=0``) routed to their stages and validated;
        this one is left as it was. ``catalog_url`` and ``blob_root`` were filled from ``home``
        when loaded: a new ``home`` does not move them."""
        changes: dict = {}
        for stage, values in by_stage(overrides).items():
            current = getattr(self, stage)
            valid = type(current).model_validate({**current.model_dump(), **values})
            changes[stage] = type(current).model_construct(_fields_set=current.model_fields_set | set(values),
                                                           **dict(valid))
        return self.model_copy(deep=True, update=changes)

    @property
    def home(self) -> Path:
        return self.storage.home

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    def blob_storage_options(self) -> dict:
        return self.storage.blob_storage_options()


def load_settings(**overrides) -> Settings:
    """Settings from the environment, with explicit flat overrides (``home=…``, ``max_pages=…``)
    that win over it (used by the CLI, flows and tests); an unknown name raises
    ``UnknownSettingError``."""
    grouped = by_stage(overrides)
    return Settings(**{stage: cls(**grouped.get(stage, {})) for stage, cls in STAGES.items()})
