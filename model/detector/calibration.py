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
    prevalence: float | None = None  # the watermarked share the precisions are at (None: the samples' own)

    def label(self, score: float) -> str:
        if score < self.low:
            return "clean"
        return "watermarked" if score >= self.high else "uncertain"


def calibrate(scores: np.ndarray, is_watermarked: np.ndarray, target_precision: float = 0.98,
              prevalence: float | None = None) -> Calibration:
    """Choose ``low`` as the largest threshold whose clean pool (score < low) reaches
    ``target_precision``, and ``high`` as the smallest whose watermarked pool (score ≥ high) does;
    ``low ≤ high`` always (the band between is uncertain).

    ``prevalence``: the share of watermarked images in the data triage will meet. The precisions
    (and the uncertain share) are then those of that mix, from the samples' true- and
    false-positive rates, whatever the samples' own balance: a calibration set half marked would
    otherwise ask a clean pool to be pure at 50 % prevalence, where at 10 % the same threshold
    leaves it purer. None: the samples' own share (precision counted directly)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(is_watermarked, dtype=bool)
    if prevalence is not None and not 0 < prevalence < 1:
        raise ValueError(f"prevalence is a share in (0, 1), not {prevalence}")
    pi = float(y.mean()) if prevalence is None else prevalence
    pos, neg = np.sort(s[y]), np.sort(s[~y])
    t = np.unique(np.concatenate([s, [0.0, 1.0 + 1e-9]]))  # candidate thresholds, ascending
    # rates of the call "score ≥ t" at every candidate (searchsorted: the share below t)
    tpr = 1 - np.searchsorted(pos, t, "left") / len(pos) if len(pos) else np.zeros_like(t)
    fpr = 1 - np.searchsorted(neg, t, "left") / len(neg) if len(neg) else np.zeros_like(t)
    below = np.searchsorted(np.sort(s), t, "left")  # samples called clean at each t
    with np.errstate(divide="ignore", invalid="ignore"):
        clean_p = (1 - pi) * (1 - fpr) / ((1 - pi) * (1 - fpr) + pi * (1 - tpr))
        wm_p = pi * tpr / (pi * tpr + (1 - pi) * fpr)
    ok_low = (below > 0) & (np.nan_to_num(clean_p) >= target_precision)
    ok_high = (below < len(s)) & (np.nan_to_num(wm_p) >= target_precision)
    low = float(t[ok_low].max()) if ok_low.any() else 0.0  # the largest that still meets the target
    high = float(t[ok_high].min()) if ok_high.any() else 1.0 + 1e-9  # the smallest
    if high < low:
        low = high = (low + high) / 2
    clean, wm = s < low, s >= high
    unc = ~clean & ~wm
    clean_r, wm_r = float(clean[~y].mean()) if (~y).any() else 0.0, float(wm[y].mean()) if y.any() else 0.0
    fnr_low, fpr_high = float(clean[y].mean()) if y.any() else 0.0, float(wm[~y].mean()) if (~y).any() else 0.0
    return Calibration(
        low=low,
        high=high,
        target_precision=target_precision,
        clean_precision=(1 - pi) * clean_r / ((1 - pi) * clean_r + pi * fnr_low) if clean.any() else 1.0,
        clean_recall=clean_r,
        watermarked_precision=pi * wm_r / (pi * wm_r + (1 - pi) * fpr_high) if wm.any() else 1.0,
        watermarked_recall=wm_r,
        uncertain_fraction=(1 - pi) * (float(unc[~y].mean()) if (~y).any() else 0.0)
        + pi * (float(unc[y].mean()) if y.any() else 0.0),
        prevalence=prevalence,
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
