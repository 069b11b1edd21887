"""Calibration and metrics of a detector's scores: the two thresholds of triage (clean below
``low``, watermarked at or above ``high``, uncertain between), ROC-AUC, accuracy at a threshold."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Calibration:
    low: float  # score < low → clean
    high: float  # score ≥ high → watermarked; between → uncertain
    target_precision: float
    clean_precision: float
    clean_recall: float
    watermarked_precision: float
    watermarked_recall: float
    uncertain_fraction: float

    def label(self, score: float) -> str:
        if score < self.low:
            return "clean"
        return "watermarked" if score >= self.high else "uncertain"


def calibrate(scores: np.ndarray, is_watermarked: np.ndarray, target_precision: float = 0.98) -> Calibration:
    """Choose ``low`` as the largest threshold whose clean pool (score < low) reaches
    ``target_precision``, and ``high`` as the smallest whose watermarked pool (score ≥ high) does;
    ``low ≤ high`` always (the band between is uncertain)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(is_watermarked, dtype=bool)
    cands = np.unique(np.concatenate([s, [0.0, 1.0 + 1e-9]]))
    low = 0.0
    for t in cands:  # ascending: keep the largest t that still meets the target
        sel = s < t
        if sel.sum() and (~y[sel]).mean() >= target_precision:
            low = float(t)
    high = 1.0 + 1e-9
    for t in cands[::-1]:  # descending: keep the smallest t that still meets the target
        sel = s >= t
        if sel.sum() and y[sel].mean() >= target_precision:
            high = float(t)
    if high < low:
        low = high = (low + high) / 2
    clean, wm = s < low, s >= high
    return Calibration(
        low=low,
        high=high,
        target_precision=target_precision,
        clean_precision=float((~y[clean]).mean()) if clean.any() else 1.0,
        clean_recall=float(clean[~y].mean()) if (~y).any() else 0.0,
        watermarked_precision=float(y[wm].mean()) if wm.any() else 1.0,
        watermarked_recall=float(wm[y].mean()) if y.any() else 0.0,
        uncertain_fraction=float((~clean & ~wm).mean()),
    )


def roc_auc(scores: np.ndarray, is_watermarked: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney U, ties counted half)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(is_watermarked, dtype=bool)
    pos, neg = s[y], s[~y]
    if not len(pos) or not len(neg):
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    allv = np.concatenate([pos, neg])[order]
    # average ranks for ties
    i = 0
    while i < len(allv):
        j = i
        while j + 1 < len(allv) and allv[j + 1] == allv[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def detection_metrics(scores: np.ndarray, is_watermarked: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    s = np.asarray(scores)
    y = np.asarray(is_watermarked, dtype=bool)
    pred = s >= threshold
    tp, fp, fn = int((pred & y).sum()), int((pred & ~y).sum()), int((~pred & y).sum())
    return {
        "accuracy": float((pred == y).mean()),
        "precision": tp / (tp + fp) if tp + fp else 1.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "roc_auc": roc_auc(s, y),
        "threshold": float(threshold),
        "n": int(len(s)),
    }


def best_accuracy_threshold(scores: np.ndarray, is_watermarked: np.ndarray) -> float:
    s = np.asarray(scores)
    y = np.asarray(is_watermarked, dtype=bool)
    cands = np.unique(s)
    accs = [((s >= t) == y).mean() for t in cands]
    return float(cands[int(np.argmax(accs))]) if len(cands) else 0.5
