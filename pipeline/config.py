"""The one settings object. Every value can be set with an ``UNMARK_`` environment variable.

``UNMARK_HOME`` (default ``./data``) holds the catalog, blobs, training runs and reports; the
catalog URL and blob root default to places inside it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from storage.db import default_catalog_url


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UNMARK_", extra="ignore")

    # --- where things live -------------------------------------------------------------
    home: Path = Field(default=Path("./data"), description="root of runtime data")
    catalog_url: str | None = Field(default=None, description="SQLAlchemy URL; default sqlite in home")
    blob_root: str | None = Field(default=None, description="local folder or fsspec URL; default home/blobs")
    # Extra fsspec storage options for the blob root (e.g. s3 endpoint / credentials).
    blob_endpoint_url: str | None = None
    blob_key_id: str | None = None
    blob_secret: str | None = None
    blob_region: str | None = None  # S3 region name (set it for S3 so nothing asks AWS for one)
    blob_retry_s: float = 60.0  # how long an object store that does not answer is retried before a step fails

    # --- catalog -----------------------------------------------------------------------
    sqlite_busy_timeout_ms: int = 60_000
    write_batch_size: int = 500
    catalog_retry_s: float = 60.0  # how long a lost database connection is retried before a step fails

    # --- scraping ----------------------------------------------------------------------
    user_agent: str = "UnmarkBot/0.1 (+https://example.invalid/unmark)"
    max_image_bytes: int = 20 * 1024 * 1024
    max_page_bytes: int = 5 * 1024 * 1024
    max_image_pixels: int = 64_000_000
    min_image_side: int = 64
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 15.0
    download_deadline_s: float = 60.0
    per_host_concurrency: int = 4
    per_host_delay_s: float = 0.0
    global_concurrency: int = 16
    max_retries: int = 3
    max_redirects: int = 5
    max_pages: int = 1000  # per scrape run (``--max-pages``)
    max_depth: int = 3  # link hops from a seed (``--max-depth``)
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

    # --- dedup -------------------------------------------------------------------------
    # Max Hamming distance between the 128-bit (pHash ‖ dHash) codes of two near duplicates;
    # chosen from the precision/recall curve in bench/dedup.py (bench/results/dedup.json).
    dedup_threshold: int = 22
    dedup_workers: int = 0  # hashing processes; 0 = one per core
    dedup_chunk_size: int = 64  # images per hashing task

    # --- triage ------------------------------------------------------------------------
    # where the shipped detector and remover are read from (None: model/weights/; a folder without
    # them: nothing ships, and triage's cold start trains a cell detector on the pool)
    shipped_weights: Path | None = None
    triage_target_precision: float = 0.98
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

    # --- model / training --------------------------------------------------------------
    perceptual: str = Field(default="imagenet", description="imagenet | random | off")
    device: str = "auto"
    output_format: str = Field(default="png", description="png | jpeg")

    # --- cleaning (pipeline/clean.py, model/remover/infer.py) ----------------------------------
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

    # --- scale-out (storage/claims.py; the Dask task runner in flows/) -------------------
    task_runner: str = Field(default="thread", description="thread | dask: where hashing and triage scoring run")
    dask_address: str | None = None  # a running Dask scheduler (tcp://host:8786); None = a local cluster
    dask_workers: int = 2  # processes of the local cluster, one thread each
    claim_batch: int = 16  # images a cleaning worker claims at a time
    claim_lease_s: float = 600.0  # a claim neither completed nor renewed in this time is free again

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        self.home = Path(self.home).expanduser()
        if self.catalog_url is None:
            self.catalog_url = default_catalog_url(self.home)
        if self.blob_root is None:
            self.blob_root = str((self.home / "blobs").resolve())
        return self

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

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


def load_settings(**overrides) -> Settings:
    """Settings from the environment, with explicit overrides (used by the CLI and tests)."""
    return Settings(**overrides)
