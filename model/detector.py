"""Watermark detector: a small fully-convolutional CNN that scores a whole image of any size.

Watermarks sit in corners and at small sizes, so one centre crop would miss them. The network maps
an image to a grid of cell logits (one per 16×16 input pixels: a tile score for every tile), and
the image score is a smooth maximum (log-sum-exp) over the cells: one confident tile is enough.
Training is self-supervised (no labels needed): negatives are pool images as they are, positives
the same crops with a synthetic watermark; the renderer's mask gives each cell its own target, so
the tile scores are supervised directly as well as the image score.

    stem     3 → 24 @ H/2    (conv 3×3 stride 2)
    stages   24 → 48 @ H/4 → 96 @ H/8 → 128 @ H/16   (each: conv stride 2, conv)
    head     128 → 1 cell logit @ H/16, image logit = LSE-pool over cells

Calibration picks two thresholds on held-out data: images scoring below ``low`` are labelled clean
with the requested clean-pool precision, images at or above ``high`` watermarked with the same
precision for the watermarked pool, and the band between is ``uncertain``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from model.device import native_bf16
from model.schedule import one_cycle_factor
from model.synth.renderer import mark_window

CELL = 16  # input pixels per output cell
# Long sides a whole image is scored at (never upsampled), the score being the maximum over them.
# One view up to 768 px: on four saved detectors it ranked held-out marks better than the maximum
# over 384 and 768 px (ROC-AUC +0.011 to +0.021, fewer uncertain images) at 1.6-1.9x the images/s; a
# second scale is a second chance for a clean photo to light up a cell (bench/results/triage.json).
SCORE_SCALES = (768,)
log = logging.getLogger(__name__)


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class _Context(nn.Module):
    """Residual dilated 3×3 conv at the cell grid: widens what each cell sees by 2·dilation cells."""

    def __init__(self, ch: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn(self.conv(x)))


class WatermarkDetector(nn.Module):
    """Image (B,3,H,W) in [0,1] → ``{"cells": (B,1,H/16,W/16) logits, "logit": (B,) image logit}``.

    ``context``: dilations of residual context blocks after the last stage. Without them a cell sees
    91 input pixels, too little to tell the inside of a large badge from a flat wall;
    ``(2, 4)`` widens that to 283.

    ``score_top_fraction``: how :func:`score_images` pools a whole image's cells. None: the image
    logit (the LSE pool training uses on its crops); a fraction f: the mean of the top f of the
    cell logits (at least one cell). Training always uses the LSE pool."""

    def __init__(self, widths: Sequence[int] = (24, 48, 96, 128), pool_sharpness: float = 4.0,
                 context: Sequence[int] = (), score_top_fraction: float | None = None):
        super().__init__()
        w = list(widths)
        self.config = {"widths": w, "pool_sharpness": pool_sharpness, "context": list(context)}
        self.set_score_top_fraction(score_top_fraction)
        layers: list[nn.Module] = [_block(3, w[0], 2), _block(w[0], w[0], 1)]
        for cin, cout in zip(w[:-1], w[1:]):
            layers += [_block(cin, cout, 2), _block(cout, cout, 1)]
        layers += [_Context(w[-1], d) for d in context]
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(w[-1], 1, 1)
        self.pool_sharpness = pool_sharpness
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        cells = self.head(self.features((x - self.mean) * 2.0))  # (B,1,h,w)
        flat = cells.flatten(1).float()
        k = self.pool_sharpness
        # smooth max: log-mean-exp(k·z)/k lies between the mean and the max of the cell logits
        logit = (torch.logsumexp(k * flat, dim=1) - math.log(flat.shape[1])) / k
        return {"cells": cells, "logit": logit}

    def set_score_top_fraction(self, fraction: float | None) -> None:
        if fraction is not None and not 0.0 < fraction <= 1.0:
            raise ValueError(f"score_top_fraction must be in (0, 1] or None, not {fraction}")
        self.score_top_fraction = self.config["score_top_fraction"] = fraction


def top_mean(cells: torch.Tensor, fraction: float) -> torch.Tensor:
    """(B,1,h,w) cell logits → (B,) mean of each image's top ``fraction`` of cells (at least one)."""
    flat = cells.flatten(1).float()
    k = max(1, round(fraction * flat.shape[1]))
    return flat.topk(k, dim=1).values.mean(dim=1)


# --- scoring images of any size -------------------------------------------------------------


def prepare(image: np.ndarray | Image.Image, long_side: int) -> torch.Tensor:
    """RGB uint8 image → (3,H,W) float tensor resized so its longer side is at most ``long_side``
    and padded (edge-replicated) to a multiple of the cell size."""
    im = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    im = im.convert("RGB")
    w, h = im.size
    scale = min(1.0, long_side / max(w, h))
    if scale < 1.0:
        im = im.resize((max(CELL, round(w * scale)), max(CELL, round(h * scale))), Image.BILINEAR)
    arr = np.asarray(im, dtype=np.float32) / 255.0
    t = torch.from_numpy(arr).permute(2, 0, 1)
    ph, pw = (-t.shape[1]) % CELL, (-t.shape[2]) % CELL
    if ph or pw:
        t = F.pad(t[None], (0, pw, 0, ph), mode="replicate")[0]
    return t


@torch.inference_mode()
def score_images(
    model: WatermarkDetector,
    images: Sequence[np.ndarray | Image.Image],
    scales: Sequence[int] = SCORE_SCALES,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    bf16: bool | None = None,
) -> np.ndarray:
    """Watermark probability per image: the max over scales of the sigmoid of the image logit
    (or, when the model's ``score_top_fraction`` is set, of the mean of its top cell logits).

    Each image is scored at each long-side size in ``scales`` (never upsampled; a scale equal to a
    smaller one after clamping is skipped; default :data:`SCORE_SCALES`). Same-shape inputs are
    batched together.

    ``bf16`` (default: where the device does bf16 natively) runs the network channels-last under
    bf16 autocast: 1.55× the images/s on an AVX512-BF16 CPU, image logits within 0.07 of float32
    (bench/results/triage.json). Calibration and triage both score with the default, so a threshold
    is always applied to scores made the same way."""
    model.eval()
    device = torch.device(device)
    if bf16 is None:
        bf16 = native_bf16(device)
    if bf16:
        model = model.to(memory_format=torch.channels_last)
    best = np.full(len(images), -np.inf, dtype=np.float64)
    jobs: dict[tuple[int, int], list[tuple[int, torch.Tensor]]] = {}
    for i, im in enumerate(images):
        size = max(im.size) if isinstance(im, Image.Image) else max(np.asarray(im).shape[:2])
        seen: set[int] = set()
        for s in scales:
            eff = min(s, size)
            if eff in seen:
                continue
            seen.add(eff)
            t = prepare(im, eff)
            jobs.setdefault(tuple(t.shape[1:]), []).append((i, t))
    for items in jobs.values():
        for k in range(0, len(items), batch_size):
            chunk = items[k : k + batch_size]
            x = torch.stack([t for _, t in chunk]).to(device)
            if bf16:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out = model(x)
            frac = model.score_top_fraction
            pooled = out["logit"] if frac is None else top_mean(out["cells"], frac)
            logits = pooled.float().cpu().numpy()
            for (i, _), z in zip(chunk, logits):
                best[i] = max(best[i], float(z))
    return 1.0 / (1.0 + np.exp(-best))


# --- calibration and metrics ------------------------------------------------------------------


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


# --- self-supervised training -------------------------------------------------------------------


@dataclass
class DetectorTrainConfig:
    steps: int = 1500
    crop: int = 192
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    cell_weight: float = 1.0
    cell_pos_weight: float = 4.0
    train_families: tuple[str, ...] | None = None  # None: every family the renderer has
    val_families: tuple[str, ...] | None = None  # held out for validation
    val_samples: int = 200
    seed: int = 0
    max_minutes: float | None = None
    widths: tuple[int, ...] = (24, 48, 96, 128)
    context: tuple[int, ...] = ()  # dilations of the context blocks (see WatermarkDetector)
    photometric: float = 0.0  # chance a training view gets a random colour change (see recolour)
    score_top_fraction: float | None = None  # how whole images are scored (see WatermarkDetector)
    # hard negatives (see mine_hard_cells): this fraction of each batch is clean windows around the
    # cells that fire most on the clean training photos scored whole, re-mined every mine_every steps
    # once mine_after of the budget is spent
    hard_negatives: float = 0.0
    mine_every: int = 1000
    mine_after: float = 0.2
    mine_images: int = 256  # at most this many training photos per mining pass (a random sample)
    cpu_bf16: bool = True  # bf16 autocast where the CPU does bf16 natively (see _train_autocast)
    channels_last: bool = True
    extra: dict = field(default_factory=dict)


def _load_rgb(path: str | os.PathLike, max_side: int = 1024) -> np.ndarray:
    im = Image.open(path)
    im.draft("RGB", (max_side, max_side))
    im = im.convert("RGB")
    if max(im.size) > max_side:
        s = max_side / max(im.size)
        im = im.resize((round(im.width * s), round(im.height * s)), Image.BILINEAR)
    return np.asarray(im)


class _ImageCache:
    """Decoded training images by path; unreadable files are dropped (and counted), not fatal."""

    def __init__(self, paths: Sequence[str]):
        self.paths = list(paths)
        self.images: dict[str, np.ndarray] = {}
        self.unreadable: list[str] = []

    def get(self, p: str) -> np.ndarray | None:
        """The decoded image at ``p``, or None (and dropped from the pool) when it cannot be read."""
        if p in self.images:
            return self.images[p]
        try:
            self.images[p] = _load_rgb(p)
            return self.images[p]
        except (OSError, ValueError, SyntaxError) as exc:  # PIL raises all three on bad files
            log.warning("detector: skipping unreadable training image %s (%s)", p, exc)
            self.paths.remove(p)
            self.unreadable.append(p)
            return None

    def pick(self, rng: np.random.Generator) -> np.ndarray:
        while self.paths:
            img = self.get(self.paths[int(rng.integers(len(self.paths)))])
            if img is not None:
                return img
        raise ValueError("none of the detector's training images could be read")


def _rescale(img: np.ndarray, long_side: int, min_side: int) -> np.ndarray:
    """``img`` resized so its longer side is ``long_side`` (shorter side at least ``min_side``)."""
    h, w = img.shape[:2]
    s = max(long_side / max(h, w), min_side / min(h, w))
    if abs(s - 1.0) < 1e-3:
        return img
    return np.asarray(Image.fromarray(img).resize((max(min_side, round(w * s)), max(min_side, round(h * s))),
                                                  Image.BILINEAR))


def random_view(img: np.ndarray, crop: int, rng: np.random.Generator, max_long: int = 768) -> np.ndarray:
    """The image at a random scoring scale (long side between ``crop`` and ``max_long``), so a
    view sees what :func:`score_images` sees."""
    h, w = img.shape[:2]
    long_side = int(rng.integers(crop, max(crop, min(max(h, w), max_long)) + 1))
    return _rescale(img, long_side, crop)


def recolour(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``img`` with a random photometric change: channels swapped one time in three (a cheap turn
    of hue), saturation ×0.4–1.6 (one time in eight grey), then one lookup table per channel for
    a colour cast (gain 0.8–1.2), contrast ×0.6–1.4 about mid-grey, brightness ±30 levels and
    gamma 0.7–1.4. New colours and tones for the same scenes, so that the clean photos a detector
    trains on cover more of the walls, skies and fences it will meet. uint8 operations only
    (~3 ms for a 768×512 view; an HSV round trip in float took ~36 ms, a third of a training step)."""
    out = np.ascontiguousarray(img)
    if rng.random() < 1 / 3:
        out = np.ascontiguousarray(out[..., rng.permutation(3)])
    grey = cv2.cvtColor(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    sat = 0.0 if rng.random() < 0.125 else rng.uniform(0.4, 1.6)
    out = cv2.addWeighted(out, sat, grey, 1.0 - sat, 0.0)  # saturates to 0..255
    levels = np.arange(256, dtype=np.float64)
    contrast, bright, gamma = rng.uniform(0.6, 1.4), rng.uniform(-30, 30), rng.uniform(0.7, 1.4)
    tone = np.clip((levels - 128.0) * contrast + 128.0 + bright, 0, 255)
    lut = np.stack([np.clip(tone * rng.uniform(0.8, 1.2), 0, 255) for _ in range(3)], axis=1)
    lut = np.round(255.0 * (lut / 255.0) ** gamma).astype(np.uint8)[:, None, :]  # (256, 1, 3)
    return cv2.LUT(out, lut)


def make_pair(
    img: np.ndarray, renderer, rng: np.random.Generator, crop: int,  # noqa: ANN001
    families: Sequence[str] | None, max_long: int = 768, photometric: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(clean window, marked window, mask, label): one ``crop``×``crop`` window of the image at a
    random scoring scale, as it is and with a mark rendered on the whole rescaled image first
    (marks are sized relative to the picture, as on real images, not to the window). The two
    differ only by the mark, so a batch of pairs teaches the mark, not the picture.

    Each then gets the renderer's re-encoding artefacts with the same odds, independently:
    applying them to marked images only would teach the detector to find JPEG blocks and blur
    instead of watermarks. ``label`` is 0 when the window shows no more than a sliver of the mark.
    With chance ``photometric`` the view is :func:`recolour`-ed before the mark goes on (the mark
    keeps its own colours)."""
    view = random_view(img, crop, rng, max_long)
    if photometric and rng.random() < photometric:
        view = recolour(view, rng)
    family = None if not families else str(rng.choice(list(families)))
    wm = renderer.render(view, rng, family=family, postprocess=False)
    marked, mask = np.asarray(wm.composite), np.asarray(wm.mask, dtype=bool)
    y0, x0 = mark_window(view.shape[:2], crop, rng, mask if rng.random() < 0.85 else None)
    box = (slice(y0, y0 + crop), slice(x0, x0 + crop))
    clean, marked, mask = view[box], marked[box], mask[box]
    if rng.random() < 0.5:
        clean, marked, mask = clean[:, ::-1], marked[:, ::-1], mask[:, ::-1]
    clean, _ = renderer.postprocess(np.ascontiguousarray(clean), rng)
    marked, _ = renderer.postprocess(np.ascontiguousarray(marked), rng)
    mask = np.ascontiguousarray(mask)
    label = 1.0 if mask.sum() >= 24 else 0.0  # a sliver at the edge is not a visible mark
    if not label:
        mask[:] = False
    return np.asarray(clean), np.asarray(marked), mask, label


def make_image(
    img: np.ndarray, renderer, rng: np.random.Generator, positive: bool,  # noqa: ANN001
    families: Sequence[str] | None,
) -> tuple[np.ndarray, float]:
    """(image uint8, label): the whole image at its own size, as triage scores it, clean or with a
    mark, with re-encoding artefacts at the same odds either way (validation and calibration; a
    threshold picked on rescaled views ran low on full-size photos)."""
    view = np.asarray(img)
    if max(view.shape[:2]) > 768:  # the largest scale score_images looks at: nothing is lost
        view = _rescale(view, 768, 1)
    label = 0.0
    if positive:
        family = None if not families else str(rng.choice(list(families)))
        view = np.asarray(renderer.render(view, rng, family=family, postprocess=False).composite)
        label = 1.0
    view, _ = renderer.postprocess(np.ascontiguousarray(view), rng)
    return np.asarray(view), label


@dataclass(frozen=True)
class HardCell:
    """A cell that fires on a clean training photo: the photo, the long side it was scored at,
    and the cell's row, column and logit there."""

    path: str
    long_side: int
    row: int
    col: int
    logit: float


@torch.inference_mode()
def mine_hard_cells(
    model: WatermarkDetector, images: dict[str, np.ndarray], crop: int, scales: Sequence[int] = SCORE_SCALES,
    per_image: int = 2, bf16: bool | None = None,
) -> list[HardCell]:
    """Each clean photo in ``images`` scored whole at each of ``scales`` (as :func:`score_images`
    does), and its ``per_image`` highest cell logits at each scale, hottest first.

    A whole photo has ~1,500 cells at 768 px against a training window's ~100, and its score
    follows its hottest cells, so the clean photos' false alarms live in the few cells that random
    windows rarely show the detector. Training on windows around them (hard-negative mining, as in
    sliding-window detectors) is aimed at exactly those."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    if bf16 is None:
        bf16 = native_bf16(dev)
    found: list[HardCell] = []
    try:
        for path, img in images.items():
            seen: set[int] = set()
            for s in scales:
                view = _rescale(img, min(s, max(img.shape[:2])), crop)
                if max(view.shape[:2]) in seen:
                    continue
                seen.add(max(view.shape[:2]))
                x = prepare(view, max(view.shape[:2]))[None].to(dev)
                x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                    cells = model(x)["cells"][0, 0].float()
                # only cells whose centre lies inside the photo (not in its replicated padding)
                h, w = (view.shape[0] + CELL // 2 - 1) // CELL, (view.shape[1] + CELL // 2 - 1) // CELL
                flat = cells[:h, :w].flatten()
                top = flat.topk(min(per_image, flat.numel()))
                for z, k in zip(top.values.tolist(), top.indices.tolist()):
                    found.append(HardCell(path, max(view.shape[:2]), k // w, k % w, float(z)))
    finally:
        model.train(was_training)
    return sorted(found, key=lambda c: -c.logit)


def hard_window(img: np.ndarray, cell: HardCell, crop: int, rng: np.random.Generator) -> np.ndarray:
    """A ``crop``×``crop`` window of ``img`` at the cell's scale that contains the cell."""
    view = _rescale(img, cell.long_side, crop)
    H, W = view.shape[:2]
    py = min(cell.row * CELL + CELL // 2, H - 1)
    px = min(cell.col * CELL + CELL // 2, W - 1)
    y0 = int(rng.integers(max(0, py - crop + 1), min(py, H - crop) + 1))
    x0 = int(rng.integers(max(0, px - crop + 1), min(px, W - crop) + 1))
    return view[y0 : y0 + crop, x0 : x0 + crop]


def _cell_targets(masks: torch.Tensor) -> torch.Tensor:
    """(B,1,H,W) {0,1} → (B,1,H/16,W/16): a cell is positive when ≥ 2% of it is watermark."""
    return (F.avg_pool2d(masks, CELL) >= 0.02).float()


def build_validation_set(
    paths: Sequence[str], renderer, families: Sequence[str] | None, n: int, seed: int,  # noqa: ANN001
) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed + 7919)
    imgs, labels = [], []
    cache = _ImageCache(paths)
    for i in range(n):
        positive = i % 2 == 1
        view, y = make_image(cache.pick(rng), renderer, rng, positive, families)
        imgs.append(view)
        labels.append(y)
    return imgs, np.asarray(labels, dtype=bool)


def _train_autocast(config: DetectorTrainConfig):  # noqa: ANN202
    """bf16 autocast for training steps on a CPU that does bf16 natively (AVX512-BF16 or AMX);
    float32 elsewhere, where emulated bf16 is slower. The losses are computed in float32."""
    if config.cpu_bf16 and native_bf16("cpu"):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_detector(
    paths: Sequence[str],
    renderer,  # noqa: ANN001 - model.watermarks.WatermarkRenderer
    config: DetectorTrainConfig,
    val_paths: Sequence[str] | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> tuple[WatermarkDetector, dict]:
    """Train a detector on crops of ``paths`` (negatives as they are, positives with rendered
    marks from ``train_families``); validate on ``val_paths`` (default: ``paths``) with marks
    from the held-out ``val_families``. Returns the model and a report dict."""
    if not paths:
        raise ValueError("no images to train the detector on")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = WatermarkDetector(config.widths, context=config.context, score_top_fraction=config.score_top_fraction)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    autocast = _train_autocast(config)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    # One cycle over whichever runs out first, the steps or the wall-time budget, so a run cut by
    # ``max_minutes`` still ends annealed instead of stopping at a high learning rate.
    done = 0.0  # fraction of the budget used
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _s: one_cycle_factor(done, 0.15, 25.0, 1e4))
    cache = _ImageCache(paths)
    t0 = time.perf_counter()
    losses: list[float] = []
    step = 0
    model.train()
    if not 0 <= config.hard_negatives < 1:
        raise ValueError(f"hard_negatives is a share of the batch in [0, 1), not {config.hard_negatives}")
    # at least one window a batch when asked for any (a small batch would round a share to none),
    # and always room for one pair
    n_hard = max(1, round(config.hard_negatives * config.batch_size)) if config.hard_negatives > 0 else 0
    n_hard = max(0, min(n_hard, config.batch_size - 2))
    if n_hard and config.mine_every < 1:
        raise ValueError(f"mine_every must be at least 1 step, not {config.mine_every}")
    hard: list[HardCell] = []
    mining: list[dict] = []
    last_mined = -config.mine_every
    hard_windows = 0
    for step in range(1, config.steps + 1):
        if n_hard and done >= config.mine_after and step - last_mined >= config.mine_every:
            sample = list(cache.paths)
            if len(sample) > config.mine_images:
                sample = [sample[int(i)] for i in rng.choice(len(sample), config.mine_images, replace=False)]
            imgs = {p: im for p in sample if (im := cache.get(p)) is not None}
            tm = time.perf_counter()
            hard = mine_hard_cells(model, imgs, config.crop)
            last_mined = step
            logits = np.array([c.logit for c in hard]) if hard else np.zeros(1)
            mining.append({"step": step, "cells": len(hard), "seconds": round(time.perf_counter() - tm, 2),
                           "max_logit": round(float(logits.max()), 3),
                           "median_logit": round(float(np.median(logits)), 3)})
            log.info("detector: mined %d hard cells at step %d (hottest logit %.2f, median %.2f)",
                     len(hard), step, logits.max(), np.median(logits))
        xs, ms, ys = [], [], []
        n_pairs = max(1, (config.batch_size - (n_hard if hard else 0)) // 2)
        for _ in range(n_pairs):  # pairs: the same window clean and marked
            clean, marked, m, y = make_pair(cache.pick(rng), renderer, rng, config.crop, config.train_families,
                                            photometric=config.photometric)
            for v, mk, lab in ((clean, np.zeros_like(m), 0.0), (marked, m, y)):
                xs.append(torch.from_numpy(np.array(v, copy=True)).permute(2, 0, 1))
                ms.append(torch.from_numpy(mk)[None])
                ys.append(lab)
        for _ in range(n_hard if hard else 0):  # clean windows around the cells that fire most
            cell = hard[int(rng.integers(len(hard)))]
            v = hard_window(cache.images[cell.path], cell, config.crop, rng)  # mined photos are all decoded
            if rng.random() < 0.5:
                v = v[:, ::-1]
            v, _ = renderer.postprocess(np.ascontiguousarray(v), rng)
            xs.append(torch.from_numpy(np.array(v, copy=True)).permute(2, 0, 1))
            ms.append(torch.zeros(1, config.crop, config.crop, dtype=torch.bool))
            ys.append(0.0)
            hard_windows += 1
        x = torch.stack(xs).float() / 255.0
        if config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        m = torch.stack(ms).float()
        y = torch.tensor(ys)
        with autocast:
            out = model(x)
        loss = F.binary_cross_entropy_with_logits(out["logit"].float(), y)
        # watermark cells are rare: weight them up so "no mark anywhere" is not a cheap optimum
        cell_t = _cell_targets(m)
        loss = loss + config.cell_weight * F.binary_cross_entropy_with_logits(
            out["cells"].float(), cell_t, pos_weight=torch.tensor(config.cell_pos_weight))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        elapsed = time.perf_counter() - t0
        done = max(step / config.steps, elapsed / (config.max_minutes * 60) if config.max_minutes else 0.0)
        sched.step()
        losses.append(float(loss.detach()))
        if progress and (step % 25 == 0 or step == config.steps):
            progress(step, config.steps, float(np.mean(losses[-25:])))
        if done >= 1.0:
            break
    train_s = time.perf_counter() - t0
    vimgs, vlabels = build_validation_set(list(val_paths or paths), renderer, config.val_families,
                                          config.val_samples, config.seed)
    t1 = time.perf_counter()
    scores = score_images(model, vimgs)
    score_s = time.perf_counter() - t1
    thr = best_accuracy_threshold(scores, vlabels)
    report = {
        "steps": step,
        "train_seconds": round(train_s, 2),
        "final_loss": float(np.mean(losses[-25:])),
        "val": detection_metrics(scores, vlabels, 0.5),
        "val_best_threshold": detection_metrics(scores, vlabels, thr),
        "val_images_per_s": round(len(vimgs) / max(score_s, 1e-9), 2),
        "unreadable_training_images": len(cache.unreadable),
        "hard_negative_mining": mining,
        "hard_negative_windows": hard_windows,
        "config": asdict(config),
    }
    report["_val_scores"] = scores.tolist()
    report["_val_labels"] = vlabels.astype(int).tolist()
    return model, report


# --- checkpoints -----------------------------------------------------------------------------------


def detector_to_bytes(model: WatermarkDetector, **extra) -> bytes:
    buf = io.BytesIO()
    torch.save({"config": model.config, "state_dict": model.state_dict(), "extra": extra}, buf)
    return buf.getvalue()


def detector_from_bytes(data: bytes) -> tuple[WatermarkDetector, dict]:
    ck = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    model = WatermarkDetector(**ck["config"])
    model.load_state_dict(ck["state_dict"])
    model.eval()
    return model, ck.get("extra", {})


def save_detector(model: WatermarkDetector, path: str | os.PathLike, **extra) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
    with os.fdopen(fd, "wb") as fh:
        fh.write(detector_to_bytes(model, **extra))
    os.replace(tmp, path)
    return path
