"""``unmark pretrain detector``: the detector that ships in ``model/weights/`` — the shipped
remover's localiser (``model.detector.LocaliserDetector``), optionally fine-tuned for detection,
calibrated on held-out photos and measured on others, with its model card.

Stages:
1. ``pipeline.pretrain.corpus_paths`` and ``model.synth.pairs.split_paths``: the same photos and the same
   train / val / test split (by SHA-256) as the shipped remover's.
2. Start: ``detector.pt`` when one ships and ``resume`` (its localiser fine-tuned further), else a
   copy of ``remover.pt``'s localiser.
3. ``train_localiser_detector`` for ``minutes`` on the train photos, half of the samples unmarked
   (0 minutes: no fine-tuning).
4. Pick the pooling share (``top_fraction``, of ``TOP_FRACTIONS``) with the best val ROC-AUC, then
   calibrate (``model.detector.calibrate``: triage's two thresholds at ``target_precision``) on the
   val photos, each clean and marked by logos of held-out icon identities; measure on the test
   photos the same way: accuracy, ROC-AUC, the uncertain share, precision and recall of the
   watermarked call at 10 % prevalence, recall on small marks.
5. Export ``detector.pt`` (fp16, its calibration inside), ``detector.md`` and
   ``detector-runs.jsonl``.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from model.api import WEIGHTS_DIR
from model.detector import (
    LocaliserDetector,
    best_accuracy_threshold,
    calibrate,
    clean_and_marked,
    detector_from_bytes,
    roc_auc,
    save_detector,
    train_localiser_detector,
)
from model.remover.network import load_checkpoint
from model.synth.pairs import load_rgb, split_paths
from model.synth.renderer import WatermarkRenderer
from pipeline.pretrain import SPLIT, _sha256, _shown, corpus_paths

PREVALENCE = 0.1  # the watermarked share triage is measured at
TOP_FRACTIONS = (0.002, 0.005, 0.01, 0.03)  # the pooling shares tried on the val photos


def _pool_precision(called_clean: np.ndarray, labels: np.ndarray) -> float | None:
    """The clean pool's purity at ``PREVALENCE``: the clean share of what is called clean."""
    tn, fn = called_clean[~labels].mean() * (1 - PREVALENCE), called_clean[labels].mean() * PREVALENCE
    return float(tn / (tn + fn)) if tn + fn > 0 else None


def measure(detector: LocaliserDetector, images: list[np.ndarray], labels: np.ndarray, area: np.ndarray,
            low: float, high: float, threshold: float) -> dict:
    """Triage figures of ``detector`` on ``images`` at its thresholds (see the module docstring)."""
    t0 = time.perf_counter()
    s = detector.score(images)
    ips = len(images) / max(time.perf_counter() - t0, 1e-9)
    pred = s >= threshold
    tpr, fpr = float(pred[labels].mean()), float(pred[~labels].mean())
    small = labels & (area < 0.05)
    clean, wm = s < low, s >= high
    decided = clean | wm
    return {"images": len(images), "roc_auc": roc_auc(s, labels), "accuracy": float((pred == labels).mean()),
            "recall": tpr, "false_positive_rate": fpr,
            "precision_at_10pct": PREVALENCE * tpr / max(PREVALENCE * tpr + (1 - PREVALENCE) * fpr, 1e-12),
            "small_mark_recall": float(pred[small].mean()) if small.any() else None, "small_marks": int(small.sum()),
            "uncertain": float((~decided).mean()),
            "uncertain_at_10pct": float((1 - PREVALENCE) * (~decided)[~labels].mean() + PREVALENCE * (~decided)[labels].mean()),
            "clean_pool_precision_at_10pct": _pool_precision(clean, labels),
            "accuracy_of_decided": float((wm[decided] == labels[decided]).mean()) if decided.any() else None,
            "images_per_s": round(ips, 1)}


def pretrain_detector(folders: list[str | Path], minutes: float = 0.0, out_dir: str | Path = WEIGHTS_DIR,
                      resume: bool = True, threads: int | None = None, target_precision: float = 0.98,
                      prevalence: float | None = 0.1, command: str = "", log=print) -> dict:
    """Build (and fine-tune for ``minutes``) the shipped detector; write it and its card."""
    if minutes < 0:
        raise ValueError(f"minutes must be zero or positive, got {minutes}")
    log = log or (lambda _m: None)
    if threads:
        torch.set_num_threads(threads)
    out = Path(out_dir)
    paths = corpus_paths(folders)
    train_p, val_p, test_p = ([Path(p) for p in s] for s in split_paths(paths, SPLIT))
    shipped = out / "detector.pt"
    if resume and shipped.exists():
        detector, _ = detector_from_bytes(shipped.read_bytes())
        start = _shown(shipped)
    else:
        remover = out / "remover.pt"
        if not remover.exists():
            raise FileNotFoundError(f"no shipped remover at {remover}: the detector is its localiser")
        detector = LocaliserDetector.from_remover(load_checkpoint(remover)[0].float())
        start = "the localiser of " + _shown(remover)
    log(f"pretrain detector: {len(train_p)} train / {len(val_p)} val / {len(test_p)} test photos, from {start}")
    t0 = time.perf_counter()
    tuned = None
    if minutes > 0:
        renderer = WatermarkRenderer(seed=0, icon_logos=512, icon_split="train")
        tuned = train_localiser_detector(detector, [str(p) for p in train_p], renderer, steps=10**7,
                                         minutes=minutes,
                                         progress=lambda k, _n, loss: k % 100 or log(f"step {k}: loss {loss:.4f}"))
        log(f"fine-tuned {tuned['steps']} steps in {tuned['seconds'] / 60:.1f} min")
    val_imgs, val_y, _ = clean_and_marked([load_rgb(p) for p in val_p], seed=0)
    by_fraction = {}
    for f in TOP_FRACTIONS:  # how an image's score pools its view: the best on the val photos
        detector.config["top_fraction"] = f
        by_fraction[f] = roc_auc(detector.score(val_imgs), val_y)
    detector.config["top_fraction"] = max(by_fraction, key=by_fraction.get)
    log(f"val ROC-AUC by top fraction {by_fraction}: scoring with {detector.config['top_fraction']}")
    val_s = detector.score(val_imgs)
    cal = calibrate(val_s, val_y, target_precision, prevalence)
    threshold = best_accuracy_threshold(val_s, val_y)
    test_imgs, test_y, test_area = clean_and_marked([load_rgb(p) for p in test_p], seed=1)
    test = measure(detector, test_imgs, test_y, test_area, cal.low, cal.high, threshold)
    calibration = {**cal.__dict__, "threshold": threshold, "val_roc_auc": roc_auc(val_s, val_y),
                   "val_images": len(val_imgs), "val_roc_auc_by_top_fraction": by_fraction}
    version = "detector-pretrained-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    weights = save_detector(detector, out / "detector.pt", half=True, version=version, calibration=cal.__dict__,
                            threshold=threshold, metrics={"test": test, "calibration": calibration})
    run = {"finished_at": datetime.now(UTC).isoformat(timespec="seconds"), "command": command, "started_from": start,
           "fine_tune": tuned, "hours_this_run": round((time.perf_counter() - t0) / 3600, 3),
           "threads": torch.get_num_threads(), "calibration": calibration, "test": test}
    runs_path = out / "detector-runs.jsonl"
    with open(runs_path, "a") as fh:
        fh.write(json.dumps(run) + "\n")
    runs = [json.loads(line) for line in runs_path.read_text().splitlines() if line.strip()]
    card = out / "detector.md"
    card.write_text(_card(detector, calibration, test, runs, {"val": val_p, "test": test_p}, train_p))
    log(f"test: ROC-AUC {test['roc_auc']:.3f}, accuracy {test['accuracy']:.3f}, uncertain {test['uncertain']:.3f}")
    return {"weights": str(weights), "card": str(card), "calibration": calibration, "test": test,
            "fine_tune": tuned}


def _card(detector: LocaliserDetector, cal: dict, test: dict, runs: list[dict], held: dict[str, list[Path]],
          train_p: list[Path]) -> str:
    c = detector.config
    steps = sum((r.get("fine_tune") or {}).get("steps", 0) for r in runs)
    held_rows = "\n".join(f"| {split} | {p.parent.name} | {p.name} | {_sha256(p)[:16]} |"
                          for split, ps in held.items() for p in ps)
    run_rows = "\n".join(f"| {r['finished_at']} | {r['started_from']} | {(r.get('fine_tune') or {}).get('steps', 0)} | "
                         f"{r['hours_this_run']:.2f} | {r['test']['roc_auc']:.3f} | {r['test']['accuracy']:.3f} | "
                         f"{r['test']['uncertain']:.3f} |" for r in runs)
    small = test["small_mark_recall"]
    return f"""# Shipped detector: `detector.pt`

The triage detector that `unmark init` registers on an empty catalog (and triage's cold start when
none is promoted): the localiser of the shipped locate-then-restore remover (`remover.pt`,
`model.remover.locate.Localiser`, base {c['base']}, depth {c['depth']}) as a `model.detector.LocaliserDetector`.
It sees the whole photo at a {c['view']} px view (long side), whatever its size, and an image's score is
the mean of its top {c['top_fraction'] * 100:.1f} % mark probabilities there. Fine-tuned for detection
for {steps:,} steps in all (half of the samples unmarked, the rest marked with the training icon
identities); fp16 weights, loaded as float32.

Data: the remover's training photos ({len(train_p)}, listed in `remover-manifest.tsv`), from
`../shared/corpus/` under their research terms (see its README). Calibration and test photos below
are never trained on; each is scored once clean and once marked by logos of *held-out* icon
identities, every family.

## Calibration (val photos, target precision {cal['target_precision']} at {_prevalence(cal)})

Triage calls an image clean below **{cal['low']:.4f}**, watermarked at or above **{cal['high']:.4f}**,
uncertain between; the best-accuracy single threshold is {cal['threshold']:.4f}. Val ROC-AUC
{cal['val_roc_auc']:.3f} on {cal['val_images']} images; by pooling share (the best is used):
{', '.join(f"top {f * 100:g} % {a:.3f}" for f, a in cal['val_roc_auc_by_top_fraction'].items())}.

## Test (held-out photos, {test['images']} images)

| ROC-AUC | accuracy | precision @10 % | recall | small-mark recall (n) | uncertain (half marked) | uncertain @10 % | clean pool @10 % | accuracy of decided | images/s |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
| {test['roc_auc']:.3f} | {test['accuracy']:.3f} | {test['precision_at_10pct']:.3f} | {test['recall']:.3f} | {'–' if small is None else f'{small:.3f}'} ({test['small_marks']}) | {test['uncertain']:.3f} | {_fig(test.get('uncertain_at_10pct'))} | {_fig(test.get('clean_pool_precision_at_10pct'))} | {test['accuracy_of_decided'] or 0:.3f} | {test['images_per_s']} |

Real overlays and three seeds: `python bench/triage_localiser.py` (`bench/RESULTS.md`).

## Runs

| finished (UTC) | started from | steps | hours | test ROC-AUC | accuracy | uncertain |
| --- | --- | --- | --- | --- | --- | --- |
{run_rows}

## Held-out photos

| split | folder | file | sha256 (first 16) |
| --- | --- | --- | --- |
{held_rows}

Reproduce: `unmark pretrain detector --images DIR ... [--minutes M]` (see README).
"""


def _prevalence(cal: dict) -> str:
    p = cal.get("prevalence")
    return "the samples' own balance" if p is None else f"{p * 100:g} % watermarked"


def _fig(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"
