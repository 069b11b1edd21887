"""``unmark triage``: sort every image into clean / watermarked / uncertain with the detector.

Cold start: when no detector is promoted, the shipped one (``model/weights/detector.pt``: the
shipped remover's localiser with its calibration) is registered and promoted, as ``unmark init``
does; only where none ships is one trained (self-supervised, a cell-grid CNN) on the current pool,
validated and calibrated on held-out watermark styles. Later runs reuse the promoted detector.
``retrain_detector=True`` fine-tunes a localiser detector on the pool minus images already judged
watermarked and promotes it only if it ranks the same held-out images better (a cell detector is
retrained from scratch, as before). Every image whose score came from another detector version (or none) is
(re-)scored in batches; unreadable images become failure rows and the batch goes on. Clean images
get their stable split. Once ``stop`` is set (SIGTERM at the command line), the chunk in hand is
committed and ``Stopped`` raised; a detector still training is abandoned, nothing registered.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from model.detector import (
    SCORE_SCALES,
    DetectorTrainConfig,
    calibrate,
    detection_metrics,
    detector_to_bytes,
    roc_auc,
    train_detector,
)
from pipeline import registry
from pipeline.config import Settings
from pipeline.images import BadImage, open_image
from pipeline.registry import LoadedDetector
from pipeline.stopping import StopFlag
from storage import BlobStore, Catalog, pools, status
from storage import queries as q
from storage.blobs import STORE_FAULTS, BlobError

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]


class NoTrainingImages(RuntimeError):
    """The catalog holds no usable images to train a detector on."""


def _training_paths(catalog: Catalog, blobs: BlobStore, tmp: Path, exclude_watermarked: bool) -> list[str]:
    """Local files of the pool to train on: one image per dedup group, no failures, and (on a
    retrain) none already judged watermarked. Remote blobs are copied to ``tmp``."""
    with catalog.session() as s:
        keys = pools.detector_training_keys(s, exclude_watermarked)
    return [str(blobs.local_file(k, tmp)) for k in keys]


def detector_train_families(holdout: Sequence[str], skip: str) -> tuple[str, ...]:
    """The watermark families a detector trains on: every family neither held out (for its
    validation) nor in ``skip`` (comma-separated, ``TriageSettings.detector_skip_families``)."""
    from model.synth.renderer import FAMILIES

    skipped = tuple(f for f in skip.split(",") if f)
    unknown = (set(holdout) | set(skipped)) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown watermark families {sorted(unknown)} in the detector settings; known: {list(FAMILIES)}")
    train = tuple(f for f in FAMILIES if f not in holdout and f not in skipped)
    if not train:
        raise ValueError("detector_holdout_families and detector_skip_families leave no family to train the detector on")
    return train


def train_and_register(
    catalog: Catalog, blobs: BlobStore, settings: Settings, exclude_watermarked: bool = False,
    progress: Progress | None = None, stop: StopFlag | None = None,
) -> LoadedDetector:
    """Train a detector on the pool, calibrate it on held-out styles, register and promote it.
    Once ``stop`` is set, training is abandoned at its next step (``Stopped``)."""
    from model.synth.renderer import FAMILIES, WatermarkRenderer

    t = settings.triage
    holdout = tuple(f for f in t.detector_holdout_families.split(",") if f)
    train_fams = detector_train_families(holdout, t.detector_skip_families)
    val_fams = holdout or FAMILIES
    with tempfile.TemporaryDirectory(prefix="unmark-detector-") as tmp:
        paths = _training_paths(catalog, blobs, Path(tmp), exclude_watermarked)
        if not paths:
            raise NoTrainingImages("triage needs a detector, and there are no readable images to train one on; "
                                   "scrape or import images first")
        rng = np.random.default_rng(0)
        order = rng.permutation(len(paths))
        n_val = max(1, len(paths) // 5) if len(paths) >= 5 else len(paths)
        val_paths = [paths[i] for i in order[:n_val]]
        train_paths = [paths[i] for i in order[n_val:]] or val_paths
        cfg = DetectorTrainConfig(
            steps=t.detector_steps, crop=t.detector_crop, batch_size=t.detector_batch_size,
            train_families=train_fams, val_families=val_fams, val_samples=t.detector_val_samples,
            max_minutes=t.detector_max_minutes, hard_negatives=t.detector_hard_negatives,
            mine_every=t.detector_mine_every,
        )
        renderer = WatermarkRenderer(seed=0)
        def cb(step: int, total: int, _loss: float) -> None:
            if stop is not None:
                stop.check("triage", {"detector": "abandoned mid-training", "step": step})
            if progress:
                progress("detector", step, total)
        model, report = train_detector(train_paths, renderer, cfg, val_paths=val_paths,
                                       progress=cb if progress or stop else None)
    scores = np.asarray(report.pop("_val_scores"))
    labels = np.asarray(report.pop("_val_labels"), bool)
    cal = calibrate(scores, labels, t.triage_target_precision, t.triage_prevalence)
    version = "detector-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
    metrics = {
        **{k: v for k, v in report.items() if k != "config"},
        "roc_auc": roc_auc(scores, labels),
        "at_calibration": {"clean_precision": cal.clean_precision, "clean_recall": cal.clean_recall,
                           "watermarked_precision": cal.watermarked_precision,
                           "watermarked_recall": cal.watermarked_recall,
                           "uncertain_fraction": cal.uncertain_fraction},
        "at_high_threshold": detection_metrics(scores, labels, cal.high),
        "train_images": len(train_paths),
        "val_images": len(val_paths),
        "val_families": list(val_fams),
    }
    config = {"widths": model.config["widths"], "scales": list(SCORE_SCALES), "calibration": cal.__dict__,
              "train": report["config"], "train_families": list(train_fams), "val_families": list(val_fams)}
    with catalog.write() as s:
        registry.register(s, blobs, version, "detector", detector_to_bytes(model, version=version),
                          config=config, metrics=metrics, promote=True)
    log.info("detector %s: val ROC-AUC %.3f, thresholds low %.3f high %.3f", version, metrics["roc_auc"], cal.low, cal.high)
    return LoadedDetector(model, version, cal, config["scales"])


def fine_tune_and_register(catalog: Catalog, blobs: BlobStore, settings: Settings, current: LoadedDetector,
                           progress: Progress | None = None) -> tuple[LoadedDetector, dict]:
    """Fine-tune a copy of the promoted localiser detector on the pool (minus images judged
    watermarked), score both on the same held-out pool photos, register the new one, and promote
    it only when its ROC-AUC there is higher. Returns the detector to use and the comparison."""
    import copy

    from model.detector import train_localiser_detector
    from model.synth.renderer import WatermarkRenderer

    with tempfile.TemporaryDirectory(prefix="unmark-detector-") as tmp:
        paths = _training_paths(catalog, blobs, Path(tmp), exclude_watermarked=True)
        if len(paths) < 2:
            raise NoTrainingImages("retraining the detector needs at least two readable images in the pool")
        order = np.random.default_rng(0).permutation(len(paths))
        n_val = max(1, len(paths) // 5)
        val = [paths[i] for i in order[:n_val]]
        train = [paths[i] for i in order[n_val:]]
        from model.detector import clean_and_marked
        from model.synth.pairs import load_rgb

        images, labels, _ = clean_and_marked([load_rgb(p) for p in val])
        before = current.score(images)
        model = copy.deepcopy(current.model)
        cb = (lambda step, total, _loss: progress("detector", step, total)) if progress else None
        report = train_localiser_detector(model, train, WatermarkRenderer(seed=0, icon_logos=64, icon_split="train"),
                                          steps=settings.triage.detector_steps,
                                          minutes=settings.triage.detector_max_minutes, progress=cb)
    after = model.score(images)
    cal = calibrate(after, labels, settings.triage.triage_target_precision, settings.triage.triage_prevalence)
    auc_before, auc_after = roc_auc(before, labels), roc_auc(after, labels)
    better = auc_after > auc_before
    version = "detector-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
    comparison = {"held_out_images": len(images), "roc_auc_before": auc_before, "roc_auc_after": auc_after,
                  "before": current.version, "promoted": better}
    metrics = {"fine_tune": report, **comparison, "at_calibration": cal.__dict__,
               "at_high_threshold": detection_metrics(after, labels, cal.high)}
    config = {**model.config, "calibration": cal.__dict__, "scales": [], "fine_tuned_from": current.version}
    with catalog.write() as s:
        registry.register(s, blobs, version, "detector", detector_to_bytes(model, half=True, version=version,
                                                                           calibration=cal.__dict__),
                          config=config, metrics=metrics, promote=better)
    log.info("detector %s fine-tuned from %s: held-out ROC-AUC %.3f → %.3f (%s)", version, current.version,
             auc_before, auc_after, "promoted" if better else "kept the old one")
    return (LoadedDetector(model, version, cal, []) if better else current), {**comparison, "version": version}


def _decode(blobs: BlobStore, key: str, max_pixels: int):
    im = open_image(blobs.get(key), max_pixels)
    return im.convert("RGB")


def score_chunk(
    catalog: Catalog, blobs: BlobStore, settings: Settings, detector: LoadedDetector, ids: Sequence[int],
) -> dict[str, int]:
    """Score one chunk of image ids and write label, score, detector version, status and split."""
    rows = catalog.read(lambda s: q.image_blobs(s, ids))
    decoded, good, bad = [], [], []
    for iid, sha, key in rows:
        try:
            decoded.append(_decode(blobs, key, settings.images.max_image_pixels))
            good.append((iid, sha))
        except STORE_FAULTS:
            raise  # the store is down, not the image to blame: the step stops, the chunk stays unscored
        except (BadImage, BlobError, OSError, ValueError) as exc:
            bad.append((iid, sha, exc))
    scores = detector.score(decoded) if decoded else np.array([])
    counts = {"clean": 0, "watermarked": 0, "uncertain": 0, "failed": len(bad)}
    labels = [(iid, detector.calibration.label(float(score)), float(score)) for (iid, _sha), score in zip(good, scores)]
    for _iid, label, _score in labels:
        counts[label] += 1

    def write(s) -> None:  # one transaction, run again whole after a lost connection
        for iid, label, score in labels:
            status.mark_triaged(s, iid, label, score, detector.version)
        for iid, sha, exc in bad:
            status.mark_triage_failed(s, iid, detector.version)
            q.record_failure(s, "triage", sha, exc)

    catalog.transact(write)
    return counts


def images_to_score(catalog: Catalog, version: str) -> list[int]:
    return catalog.read(lambda s: q.images_to_score(s, version))


def triage(
    catalog: Catalog, blobs: BlobStore, settings: Settings, retrain_detector: bool = False,
    progress: Progress | None = None,
    score_chunks: Callable[[LoadedDetector, list[list[int]]], Iterable[dict[str, int]]] | None = None,
    stop: StopFlag | None = None,
) -> dict:
    """Label every image not yet scored by the promoted detector; train one first when needed.
    ``score_chunks(detector, chunks)`` replaces the in-process ``score_chunk`` loop (it yields one
    count dict per chunk, in order): the flows pass one that scores the chunks on Dask workers."""
    t0 = time.perf_counter()
    trained, fine_tune = None, None
    detector = registry.load_detector(catalog, blobs)
    if detector is None and registry.register_shipped_detector(catalog, blobs, settings.models.shipped_weights):
        detector = registry.load_detector(catalog, blobs)
    if retrain_detector and detector is not None and getattr(detector.model, "scores_whole_images", False):
        detector, fine_tune = fine_tune_and_register(catalog, blobs, settings, detector, progress)
        trained = fine_tune["version"]
    elif detector is None or retrain_detector:
        detector = train_and_register(catalog, blobs, settings, exclude_watermarked=retrain_detector,
                                      progress=progress, stop=stop)
        trained = detector.version
    ids = images_to_score(catalog, detector.version)
    totals = {"clean": 0, "watermarked": 0, "uncertain": 0, "failed": 0}
    bs = settings.triage.triage_batch_size
    t1 = time.perf_counter()
    chunks = [ids[i : i + bs] for i in range(0, len(ids), bs)]
    scored = (score_chunks(detector, chunks) if score_chunks is not None
              else (score_chunk(catalog, blobs, settings, detector, c) for c in chunks))
    done = 0
    for chunk, counts in zip(chunks, scored, strict=True):
        for k, v in counts.items():
            totals[k] += v
        done += len(chunk)
        if progress:
            progress("triage", done, len(ids))
        if stop is not None and stop.requested:
            stop.check("triage", {"detector": detector.version, "trained_detector": trained, "scored": done,
                                  "todo": len(ids), **totals})
    score_s = time.perf_counter() - t1
    return {
        "detector": detector.version,
        "trained_detector": trained,
        **({"fine_tune": fine_tune} if fine_tune else {}),
        "scored": len(ids),
        **totals,
        "thresholds": {"low": detector.calibration.low, "high": detector.calibration.high},
        "images_per_s": round(len(ids) / score_s, 2) if ids and score_s > 0 else None,
        "seconds": round(time.perf_counter() - t0, 2),
    }
