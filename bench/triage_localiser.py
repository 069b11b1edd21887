"""Triage with the shipped remover's localiser (``model.remover.locate.mark_scores``), measured as a user
meets it: whole photos it never saw, at 10 % prevalence, over three seeds.

    python bench/triage_localiser.py [--weights model/weights/remover.pt] [--seeds 0,1,2]

Photos: ``../shared/corpus/voc150`` (never in the remover's training: pretraining excludes that
folder), minus its 11 photos with real overlays, which are scored on their own. For each seed the
139 clean photos are split in half by the seed: the calibration half picks the thresholds, the
test half is scored. Each photo appears once clean (with the renderer's re-encoding odds) and once
marked by a renderer drawing every family with logos from the *held-out* icon identities
(``model.synth.icons`` val split; the localiser trained on the train identities).

Figures per seed and their mean: accuracy and ROC-AUC at balanced classes; precision and recall
of the watermarked call at 10 % prevalence (from the test's true- and false-positive rates at the
best-accuracy threshold of the calibration half); recall on small marks (mask under 5 % of the
image); the two-threshold band at 0.98 (uncertain share); the real overlays flagged; images/s.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np
import torch
from _common import write_results
from PIL import Image

from model.detector import best_accuracy_threshold, calibrate, roc_auc
from model.remover.locate import mark_scores
from model.remover.network import load_checkpoint
from model.synth.renderer import WatermarkRenderer
from pipeline.pretrain import KNOWN_OVERLAYS

ROOT = Path(__file__).resolve().parents[1]
VOC = ROOT.parent / "shared" / "corpus" / "voc150"
PREVALENCE = 0.1


def _marked_set(paths: list[Path], renderer: WatermarkRenderer, rng: np.random.Generator):
    images, labels, small = [], [], []
    for p in paths:
        clean = np.asarray(Image.open(p).convert("RGB"))
        images.append(renderer.postprocess(clean, rng)[0])
        labels.append(False)
        small.append(False)
        w = renderer.render(clean, rng)
        images.append(w.composite)
        labels.append(True)
        small.append(float(w.mask.mean()) < 0.05)
    return images, np.asarray(labels), np.asarray(small)


def one_seed(model, seed: int, photos: list[Path], real: list[Path]) -> dict:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(photos))
    cal = [photos[i] for i in order[: len(photos) // 2]]
    test = [photos[i] for i in order[len(photos) // 2 :]]
    renderer = WatermarkRenderer(seed=100 + seed, icon_logos=256, icon_split="val")
    cal_imgs, cal_y, _ = _marked_set(cal, renderer, rng)
    test_imgs, y, small = _marked_set(test, renderer, rng)
    cal_s = mark_scores(model, cal_imgs)
    thr = best_accuracy_threshold(cal_s, cal_y)
    band = calibrate(cal_s, cal_y, 0.98)
    t0 = time.perf_counter()
    s = mark_scores(model, test_imgs)
    ips = len(test_imgs) / (time.perf_counter() - t0)
    pred = s >= thr
    tpr, fpr = float(pred[y].mean()), float(pred[~y].mean())
    precision10 = PREVALENCE * tpr / max(PREVALENCE * tpr + (1 - PREVALENCE) * fpr, 1e-12)
    real_s = mark_scores(model, [Image.open(p).convert("RGB") for p in real]) if real else np.array([])
    clean_sel, wm_sel = s < band.low, s >= band.high
    return {"seed": seed, "accuracy": float((pred == y).mean()), "roc_auc": roc_auc(s, y), "threshold": float(thr),
            "recall": tpr, "false_positive_rate": fpr, "precision_at_10pct": precision10,
            "small_mark_recall": float(pred[y & small].mean()) if (y & small).any() else None,
            "small_marks": int((y & small).sum()), "uncertain": float((~clean_sel & ~wm_sel).mean()),
            "real_flagged": int((real_s >= thr).sum()), "real": len(real),
            "real_scores": {p.name: round(float(v), 4) for p, v in zip(real, real_s, strict=True)},
            "images_per_s": round(ips, 1), "test_images": len(test_imgs)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", type=Path, default=ROOT / "model" / "weights" / "remover.pt")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = load_checkpoint(args.weights)
    model.float()
    if not hasattr(model, "localiser"):
        raise SystemExit(f"{args.weights} is not a locate-then-restore model")
    photos = sorted(p for p in VOC.glob("*.jpg") if p.stem not in KNOWN_OVERLAYS)
    real = sorted(p for p in VOC.glob("*.jpg") if p.stem in KNOWN_OVERLAYS)
    rows = [one_seed(model, int(k), photos, real) for k in args.seeds.split(",")]
    keys = ("accuracy", "roc_auc", "precision_at_10pct", "recall", "small_mark_recall", "uncertain", "real_flagged",
            "images_per_s")
    mean = {k: float(np.mean([r[k] for r in rows if r[k] is not None])) for k in keys}
    for r in rows:
        print({k: r[k] for k in ("seed", *keys, "threshold")})
    print("mean", mean)
    table = "\n".join(
        f"| {r['seed']} | {r['accuracy']:.3f} | {r['roc_auc']:.3f} | {r['precision_at_10pct']:.3f} | {r['recall']:.3f} | "
        f"{r['small_mark_recall'] if r['small_mark_recall'] is None else round(r['small_mark_recall'], 3)} "
        f"({r['small_marks']}) | {r['uncertain']:.3f} | {r['real_flagged']} of {r['real']} | {r['images_per_s']} |"
        for r in rows)
    body = (f"The localiser of `{args.weights.name}` as the triage detector, on voc150 photos it never saw "
            f"({len(photos)} clean photos halved per seed into calibration and test; each photo clean and marked "
            f"with held-out icon identities and every family). {args.threads} threads.\n\n"
            "| seed | accuracy | ROC-AUC | precision @10 % | recall | small-mark recall (n) | uncertain @0.98 | "
            "real overlays | images/s |\n|---|---|---|---|---|---|---|---|---|\n" + table + "\n")
    write_results("triage_localiser", {"seeds": rows, "mean": mean, "weights": str(args.weights)}, body)


if __name__ == "__main__":
    main()
