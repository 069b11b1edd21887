"""``unmark train``: a remover trained on the clean pool, scored on its test split, registered in the
catalog, and promoted only when it beats the promoted remover on the same test samples.

The clean pool's split is the catalog's (``images.split``, stable by content hash); images that
have none yet get ``split_for(sha256)`` written back, so a later run sees the same split. A run
killed mid-way is resumed by the next ``train_remover`` with the same profile, pairing, cap and
pool: its ``training_runs`` row is still ``running`` and nobody holds its run folder's lock.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from model.remover import train as trainer
from model.remover.network import load_checkpoint
from pipeline import registry
from pipeline.config import Settings
from storage import BlobStore, Catalog, pools, status
from storage import queries as q
from storage import runs as training_runs

SPLITS = ("train", "val", "test")


class NotEnoughImages(ValueError):
    """The clean pool lacks images in a split; carries the counts."""

    def __init__(self, counts: dict[str, int]):
        super().__init__(
            "training needs at least one clean image in each split, the clean pool has "
            + ", ".join(f"{k} {v}" for k, v in counts.items())
            + " (import or scrape more images, then run dedup and triage)"
        )
        self.counts = counts


def resolve_config(settings: Settings, profile: str, pairing: str, max_minutes: float | None) -> trainer.TrainConfig:
    """The profile, with the pairing, the cap and the settings that apply.

    The VGG weights choice: a profile records its own (``quick-cpu`` and ``tiny``: off, with the
    reason); ``UNMARK_PERCEPTUAL`` set explicitly overrides it. ``seed`` takes the settings' value,
    so by default it asks for ImageNet weights and stops with the loss's error when they are absent.
    """
    overrides: dict = {"pairing": pairing, "device": settings.models.device}
    if max_minutes is not None:
        if max_minutes <= 0:
            raise ValueError(f"max_minutes must be positive, got {max_minutes}")
        overrides["max_minutes"] = float(max_minutes)
    config = trainer.profile_config(profile, **overrides)
    if "perceptual" in settings.train.model_fields_set or profile == "seed":
        reason = "UNMARK_PERCEPTUAL" if "perceptual" in settings.train.model_fields_set else "settings default"
        loss = dict(config.loss)
        if settings.train.perceptual != "off" and not loss.get("perceptual"):
            loss["perceptual"] = trainer.PROFILES["seed"].loss["perceptual"]
        config = dataclasses.replace(config, perceptual=settings.train.perceptual, perceptual_reason=reason, loss=loss)
    return config


def pool_splits(catalog: Catalog, blobs: BlobStore, settings: Settings) -> dict[str, list[Path]]:
    """Image files of the clean pool per split; assigns the stable split where it is missing."""
    with catalog.session() as s:
        pool = [(im.id, im.sha256, im.blob_key, im.split) for im in pools.clean_pool(s)]
    missing = [(i, q.split_for(sha)) for i, sha, _, split in pool if split not in SPLITS]
    if missing:
        with catalog.write() as s:
            status.assign_splits(s, missing)
    assigned = dict(missing)
    cache = settings.home / "cache" / "blobs"
    out: dict[str, list[Path]] = {sp: [] for sp in SPLITS}
    for i, _, key, split in pool:
        out[split if split in SPLITS else assigned[i]].append(blobs.local_file(key, cache))
    return out


def _fingerprint(splits: dict[str, list[Path]]) -> str:
    h = hashlib.sha256()
    for sp in SPLITS:
        for p in sorted(str(x) for x in splits[sp]):
            h.update(f"{sp}:{Path(p).name}\n".encode())
    return h.hexdigest()[:16]


def _resumable_run(catalog: Catalog, params: dict) -> tuple[int, str, Path] | None:
    """``(id, version, run_dir)`` of an interrupted run with these parameters: still ``running``
    in the catalog, a checkpoint on disk, and no live process holding its folder."""
    with catalog.session() as s:
        runs = training_runs.running_runs(s, "remover")
    for run_id, version, run_dir, run_params in runs:
        if run_params == params and run_dir and (Path(run_dir) / "last.pt").exists() \
                and not trainer.run_is_locked(Path(run_dir)):
            return run_id, version, Path(run_dir)
    return None


def _new_version(settings: Settings, profile: str, pairing: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    base = f"remover-{stamp}-{profile}-{'ss' if pairing == 'self-supervised' else 'sup'}"
    version, n = base, 1
    while (settings.runs_dir / version).exists():
        n += 1
        version = f"{base}-{n}"
    return version


def _metrics(summary: dict) -> dict:
    test = summary["test"]
    return {
        "psnr": test["model"]["psnr"],
        "ssim": test["model"]["ssim"],
        "masked_psnr": test["model"]["masked_psnr"],
        "input_psnr": test["input"]["psnr"],
        "input_ssim": test["input"]["ssim"],
        "inpaint_psnr": test["inpaint"]["psnr"],
        "inpaint_ssim": test["inpaint"]["ssim"],
        "test_samples": test["n"],
        "best_val_psnr": summary["best_val_psnr"],
        "test": test,
    }


def train_remover(
    catalog: Catalog,
    blobs: BlobStore,
    settings: Settings,
    profile: str = "locate-cpu",
    pairing: str = "supervised",
    max_minutes: float | None = None,
    log: Callable[[str], None] | None = None,
    from_scratch: bool = False,
) -> dict:
    """Train a remover on the clean pool (train/val), evaluate it on the test split against the
    input and inpainting, register it (checkpoint blob, config, metrics, a ``training_runs`` row)
    and promote it when its test PSNR beats the promoted remover's on the same samples.

    A new run starts from the promoted remover's weights (fine-tuning) when its network is the
    profile's, unless ``from_scratch``; ``result["started_from"]`` says which.

    Returns ``{"version", "promoted", "previous", "metrics", "run_dir", ...}``.
    """
    config = resolve_config(settings, profile, pairing, max_minutes)
    splits = pool_splits(catalog, blobs, settings)
    counts = {sp: len(v) for sp, v in splits.items()}
    if min(counts.values()) == 0:
        raise NotEnoughImages(counts)
    params = {"profile": profile, "pairing": pairing, "max_minutes": config.max_minutes,
              "perceptual": config.perceptual, "pool": _fingerprint(splits), "images": counts}
    if config.max_minutes is None:
        params["epochs"] = config.epochs  # planned epochs (a capped run's count depends on speed)

    run_id, version, run_dir = _open_run(catalog, settings, params)

    def record_epoch(history: list[dict]) -> None:
        with catalog.write() as s:
            training_runs.save_history(s, run_id, history)

    started_from, init = ("scratch", None) if from_scratch else _promoted_start(catalog, blobs, config)
    try:
        summary = trainer.train(splits["train"], splits["val"], splits["test"], config, run_dir, resume=True,
                                log=log, on_epoch=record_epoch, init_weights=init)
    except BaseException as exc:
        _run_failed(catalog, run_id, exc)
        raise

    metrics = _metrics(summary)
    previous = _challenge_promoted(catalog, blobs, config, splits["test"])
    promote = previous is None or metrics["psnr"] > previous["psnr"]
    key = _register_run(catalog, blobs, run_id, version, run_dir, summary, metrics, promote)
    line = (f"- {datetime.now(UTC):%Y-%m-%d %H:%M:%S UTC} {version}: {profile}/{pairing}, "
            f"{summary['epochs']} epochs in {summary['train_minutes']:.1f} min, perceptual={config.perceptual}; "
            f"{_decision(metrics, previous, promote)}\n")
    for changelog in (settings.runs_dir / "CHANGELOG.md", run_dir / "changelog.md"):
        with open(changelog, "a") as fh:
            fh.write(line)
    return {
        "version": version,
        "promoted": promote,
        "previous": previous,
        "profile": profile,
        "pairing": pairing,
        "perceptual": config.perceptual,
        "metrics": {k: v for k, v in metrics.items() if k != "test"},
        "test": summary["test"],
        "epochs": summary["epochs"],
        "steps": summary["steps"],
        "stopped_by": summary["stopped_by"],
        "train_minutes": summary["train_minutes"],
        "images": counts,
        "checkpoint": key,
        "run_dir": str(run_dir),
        "started_from": started_from,
    }


def _open_run(catalog: Catalog, settings: Settings, params: dict) -> tuple[int, str, Path]:
    """(run id, version, run folder) of the interrupted run with these ``params``, else of a new
    ``training_runs`` row (status ``running``) and its folder."""
    resumable = _resumable_run(catalog, params)
    if resumable is not None:
        return resumable
    version = _new_version(settings, params["profile"], params["pairing"])
    run_dir = settings.runs_dir / version
    run_dir.mkdir(parents=True, exist_ok=True)
    with catalog.write() as s:
        return training_runs.open_run(s, version, "remover", params, str(run_dir)), version, run_dir


def _run_failed(catalog: Catalog, run_id: int, exc: BaseException) -> None:
    with catalog.write() as s:
        training_runs.fail_run(s, run_id, exc)  # a Ctrl-C run stays resumable


def _register_run(catalog: Catalog, blobs: BlobStore, run_id: int, version: str, run_dir: Path, summary: dict,
                  metrics: dict, promote: bool) -> str:
    """Register the run's best checkpoint (promoted or not) and complete its ``training_runs`` row,
    in one transaction; returns the checkpoint's blob key."""
    resolved = json.loads((run_dir / "config.json").read_text())
    with catalog.write() as s:
        key = registry.register(s, blobs, version, "remover", (run_dir / "best.pt").read_bytes(),
                                config=resolved, metrics=metrics, promote=promote)
        training_runs.complete_run(
            s, run_id, json.loads((run_dir / "history.json").read_text()) if (run_dir / "history.json").exists() else [],
            {"train_minutes": summary["train_minutes"], "epochs": summary["epochs"], "steps": summary["steps"],
             "stopped_by": summary["stopped_by"], "test_eval_s": summary["test"]["seconds"]})
    return key


def _decision(metrics: dict, previous: dict | None, promote: bool) -> str:
    if promote:
        return (f"promoted (test PSNR {metrics['psnr']:.2f} dB"
                + (f" > {previous['psnr']:.2f} dB of {previous['version']})" if previous else ", first remover)"))
    return (f"not promoted (test PSNR {metrics['psnr']:.2f} dB <= {previous['psnr']:.2f} dB of "
            f"{previous['version']} on the same samples)")


def _promoted_start(catalog: Catalog, blobs: BlobStore, config: trainer.TrainConfig) -> tuple[str, bytes | None]:
    """(its version, checkpoint bytes) of the promoted remover when its network is the one
    ``config`` builds, else ("scratch", None)."""
    ref = registry.find(catalog, "remover")
    if ref is None or not ref.checkpoint_key:
        return "scratch", None
    data = registry.checkpoint(blobs, ref)
    promoted, _ = load_checkpoint(data)
    if dict(promoted.config) != dict(trainer.build_network(config).config):
        return "scratch", None
    return ref.version, data


def _challenge_promoted(catalog: Catalog, blobs: BlobStore, config: trainer.TrainConfig, test_paths: list[Path]) -> dict | None:
    """The promoted remover's test PSNR on this run's test samples (None when there is none)."""
    if registry.find(catalog, "remover") is None:
        return None
    ref, model = registry.load_remover(catalog, blobs)
    version = ref.version
    harden = bool(ref.config.get("harden_mask", False))
    scores = trainer.score_on_test(model, trainer.fixed_test_set(test_paths, config), config, harden_mask=harden)
    return {"version": version, "psnr": scores["model"]["psnr"], "ssim": scores["model"]["ssim"]}
