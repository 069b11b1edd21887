"""Self-supervised training of the cell-grid detector (``model.detector.cells``): negatives are
pool images as they are, positives the same crops with a synthetic watermark; the renderer's mask
gives each cell its own target. Hard negatives are mined from clean photos scored whole."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from model.detector.calibration import best_accuracy_threshold, detection_metrics
from model.detector.cells import CELL, SCORE_SCALES, WatermarkDetector, prepare, score_images
from model.device import native_bf16
from model.schedule import one_cycle_factor
from model.synth.renderer import mark_window

log = logging.getLogger(__name__)


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

    def __init__(self, paths: Sequence[str], max_side: int = 1024):
        self.paths = list(paths)
        self.total = len(self.paths)
        self.max_side = max_side
        self.images: dict[str, np.ndarray] = {}
        self.unreadable: list[str] = []

    def get(self, p: str) -> np.ndarray | None:
        """The decoded image at ``p``, or None (and dropped from the pool) when it cannot be read."""
        if p in self.images:
            return self.images[p]
        try:
            self.images[p] = _load_rgb(p, self.max_side)
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
        raise ValueError(f"none of the {self.total} training photos could be read")


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
    img: np.ndarray, renderer, rng: np.random.Generator, crop: int,
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
    img: np.ndarray, renderer, rng: np.random.Generator, positive: bool,
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
    paths: Sequence[str], renderer, families: Sequence[str] | None, n: int, seed: int,
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


def _train_autocast(config: DetectorTrainConfig):
    """bf16 autocast for training steps on a CPU that does bf16 natively (AVX512-BF16 or AMX);
    float32 elsewhere, where emulated bf16 is slower. The losses are computed in float32."""
    if config.cpu_bf16 and native_bf16("cpu"):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _hard_windows_per_batch(config: DetectorTrainConfig) -> int:
    """How many of a batch's windows are mined hard negatives; checks the mining knobs."""
    if not 0 <= config.hard_negatives < 1:
        raise ValueError(f"hard_negatives is a share of the batch in [0, 1), not {config.hard_negatives}")
    # at least one window a batch when asked for any (a small batch would round a share to none),
    # and always room for one pair
    n_hard = max(1, round(config.hard_negatives * config.batch_size)) if config.hard_negatives > 0 else 0
    n_hard = max(0, min(n_hard, config.batch_size - 2))
    if n_hard and config.mine_every < 1:
        raise ValueError(f"mine_every must be at least 1 step, not {config.mine_every}")
    return n_hard


def _mine_round(
    model: WatermarkDetector, cache: _ImageCache, config: DetectorTrainConfig, rng: np.random.Generator, step: int,
) -> tuple[list[HardCell], dict]:
    """One round of hard-negative mining on up to ``mine_images`` of the training photos: the
    cells found and the round's record for the report."""
    sample = list(cache.paths)
    if len(sample) > config.mine_images:
        sample = [sample[int(i)] for i in rng.choice(len(sample), config.mine_images, replace=False)]
    imgs = {p: im for p in sample if (im := cache.get(p)) is not None}
    tm = time.perf_counter()
    hard = mine_hard_cells(model, imgs, config.crop)
    logits = np.array([c.logit for c in hard]) if hard else np.zeros(1)
    record = {"step": step, "cells": len(hard), "seconds": round(time.perf_counter() - tm, 2),
              "max_logit": round(float(logits.max()), 3),
              "median_logit": round(float(np.median(logits)), 3)}
    log.info("detector: mined %d hard cells at step %d (hottest logit %.2f, median %.2f)",
             len(hard), step, logits.max(), np.median(logits))
    return hard, record


def _training_batch(
    cache: _ImageCache, renderer, config: DetectorTrainConfig, rng: np.random.Generator,
    hard: list[HardCell], n_hard: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """One batch: clean/marked pairs of the same window, plus ``n_hard`` clean windows around
    the mined ``hard`` cells (none while nothing is mined). Returns images (B,3,H,W) in [0,1],
    masks (B,1,H,W), labels (B,) and the number of hard windows in it."""
    n_hard = n_hard if hard else 0
    xs, ms, ys = [], [], []
    for _ in range(max(1, (config.batch_size - n_hard) // 2)):  # pairs: the same window clean and marked
        clean, marked, m, y = make_pair(cache.pick(rng), renderer, rng, config.crop, config.train_families,
                                        photometric=config.photometric)
        for v, mk, lab in ((clean, np.zeros_like(m), 0.0), (marked, m, y)):
            xs.append(torch.from_numpy(np.array(v, copy=True)).permute(2, 0, 1))
            ms.append(torch.from_numpy(mk)[None])
            ys.append(lab)
    for _ in range(n_hard):  # clean windows around the cells that fire most
        cell = hard[int(rng.integers(len(hard)))]
        v = hard_window(cache.images[cell.path], cell, config.crop, rng)  # mined photos are all decoded
        if rng.random() < 0.5:
            v = v[:, ::-1]
        v, _ = renderer.postprocess(np.ascontiguousarray(v), rng)
        xs.append(torch.from_numpy(np.array(v, copy=True)).permute(2, 0, 1))
        ms.append(torch.zeros(1, config.crop, config.crop, dtype=torch.bool))
        ys.append(0.0)
    x = torch.stack(xs).float() / 255.0
    if config.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.stack(ms).float(), torch.tensor(ys), n_hard


def _detector_loss(
    model: WatermarkDetector, x: torch.Tensor, m: torch.Tensor, y: torch.Tensor, config: DetectorTrainConfig,
    autocast,  # a context manager
) -> torch.Tensor:
    """Image-level BCE plus ``cell_weight`` × the per-cell BCE, both in float32."""
    with autocast:
        out = model(x)
    loss = F.binary_cross_entropy_with_logits(out["logit"].float(), y)
    # watermark cells are rare: weight them up so "no mark anywhere" is not a cheap optimum
    cell_t = _cell_targets(m)
    return loss + config.cell_weight * F.binary_cross_entropy_with_logits(
        out["cells"].float(), cell_t, pos_weight=torch.tensor(config.cell_pos_weight))


def _validation_report(
    model: WatermarkDetector, paths: Sequence[str], renderer, config: DetectorTrainConfig,
) -> dict:
    """Scores of the held-out validation set and the metrics at 0.5 and at the best threshold."""
    vimgs, vlabels = build_validation_set(list(paths), renderer, config.val_families,
                                          config.val_samples, config.seed)
    t1 = time.perf_counter()
    scores = score_images(model, vimgs)
    score_s = time.perf_counter() - t1
    thr = best_accuracy_threshold(scores, vlabels)
    return {
        "val": detection_metrics(scores, vlabels, 0.5),
        "val_best_threshold": detection_metrics(scores, vlabels, thr),
        "val_images_per_s": round(len(vimgs) / max(score_s, 1e-9), 2),
        "_val_scores": scores.tolist(),
        "_val_labels": vlabels.astype(int).tolist(),
    }


def train_detector(
    paths: Sequence[str],
    renderer,  # model.synth.renderer.WatermarkRenderer
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
    n_hard = _hard_windows_per_batch(config)
    hard: list[HardCell] = []
    mining: list[dict] = []
    last_mined = -config.mine_every
    hard_windows = 0
    for step in range(1, config.steps + 1):
        if n_hard and done >= config.mine_after and step - last_mined >= config.mine_every:
            hard, record = _mine_round(model, cache, config, rng, step)
            last_mined = step
            mining.append(record)
        x, m, y, n_hard_now = _training_batch(cache, renderer, config, rng, hard, n_hard)
        hard_windows += n_hard_now
        loss = _detector_loss(model, x, m, y, config, autocast)
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
    val = _validation_report(model, val_paths or paths, renderer, config)
    report = {
        "steps": step,
        "train_seconds": round(train_s, 2),
        "final_loss": float(np.mean(losses[-25:])),
        "val": val.pop("val"),
        "val_best_threshold": val.pop("val_best_threshold"),
        "val_images_per_s": val.pop("val_images_per_s"),
        "unreadable_training_images": len(cache.unreadable),
        "hard_negative_mining": mining,
        "hard_negative_windows": hard_windows,
        "config": asdict(config),
    }
    report.update(val)  # the raw validation scores and labels, last
    return model, report
