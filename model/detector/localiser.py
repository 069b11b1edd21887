"""The remover's localiser as the triage detector: one network finds marks for both steps.

``LocaliserDetector`` holds a copy of a ``model.remover.locate.Localiser`` (the first half of the shipped
locate-then-restore remover) and scores a whole image from its mark probabilities over the reduced
view (``model.remover.locate.mark_scores``: the mean of the top ``top_fraction`` of them). The view's long
side is ``view`` pixels whatever the photo's size, so a score means the same on a 4000 px photo and
on a 400 px one: the network is trained and scored at that one resolution.

``train_localiser_detector`` fine-tunes it on photos (half of them unmarked, the rest marked by the
renderer), each seen whole at the view it is scored at, with the localiser's mask terms and a loss on
the image score itself: for ``unmark pretrain detector`` and ``unmark triage --retrain-detector``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from model.detector.cells import top_mean
from model.detector.training import _ImageCache
from model.remover.locate import SCORE_TOP_FRACTION, Localiser, mark_scores


class LocaliserDetector(nn.Module):
    """Whole image → probability that it carries a mark, from a localiser's view (see the module
    docstring). ``config`` rebuilds it from a checkpoint (``model.detector.checkpoint``)."""

    scores_whole_images = True  # model.detector.score_images hands it whole images, not scales

    def __init__(self, base: int = 16, depth: int = 4, view: int = 192, top_fraction: float = SCORE_TOP_FRACTION,
                 kind: str = "localiser"):
        super().__init__()
        if kind != "localiser":
            raise ValueError(f"LocaliserDetector builds kind 'localiser', not {kind!r}")
        if view < 32 or view % 16:
            raise ValueError(f"view must be a multiple of 16 and at least 32, got {view}")
        if not 0 < top_fraction <= 1:
            raise ValueError(f"top_fraction is a share of the view in (0, 1], not {top_fraction}")
        self.config = {"kind": kind, "base": base, "depth": depth, "view": view, "top_fraction": top_fraction}
        self.localiser = Localiser(base, depth)

    @classmethod
    def from_remover(cls, remover: nn.Module, top_fraction: float = SCORE_TOP_FRACTION) -> LocaliserDetector:
        """A detector holding a copy of ``remover``'s localiser (a ``model.remover.locate.LocateRestore``)."""
        if not hasattr(remover, "localiser"):
            raise ValueError(f"{type(remover).__name__} has no localiser: only a locate-then-restore remover "
                             "(arch locate-restore) gives a detector")
        cfg = remover.config
        det = cls(base=cfg["loc_base"], depth=cfg["loc_depth"], view=cfg["view"], top_fraction=top_fraction)
        det.localiser.load_state_dict({k: v.float() for k, v in remover.localiser.state_dict().items()})
        return det

    def forward(self, view: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.localiser(view)

    def score(self, images: Sequence[Image.Image | np.ndarray], batch_size: int = 8) -> np.ndarray:
        """Mark probability in [0, 1] per image."""
        return mark_scores(self, list(images), top_fraction=self.config["top_fraction"], batch_size=batch_size)


def clean_and_marked(images: Sequence[np.ndarray], seed: int = 0, icon_logos: int = 64, icon_split: str = "val"
                     ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Each image (uint8 HxWx3) once as it is (through the renderer's re-encoding odds) and once
    marked by a renderer whose logos come from the ``icon_split`` icon identities (``"val"``: the
    ones no shipped model trained on). Returns (images, is_marked, mark area share)."""
    from model.synth.renderer import WatermarkRenderer

    renderer = WatermarkRenderer(seed=1000 + seed, icon_logos=icon_logos, icon_split=icon_split)
    rng = np.random.default_rng(seed)
    out, labels, area = [], [], []
    for clean in images:
        w = renderer.render(clean, rng)
        out += [renderer.postprocess(clean, rng)[0], w.composite]
        labels += [False, True]
        area += [0.0, float(w.mask.mean())]
    return out, np.asarray(labels), np.asarray(area)


def _loc_terms(out: dict[str, torch.Tensor], mask: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Mask BCE + Dice and the α term at the view, as in ``model.remover.locate.locate_loss``."""
    from model.remover.locate import _dice

    vh, vw = out["logits"].shape[2:]
    t_mask = F.interpolate(mask, size=(vh, vw), mode="area")
    t_alpha = F.interpolate(alpha, size=(vh, vw), mode="area")
    logits = out["logits"].float()
    return (F.binary_cross_entropy_with_logits(logits, t_mask) + _dice(logits, t_mask)
            + 0.5 * (out["alpha"].float() - t_alpha).abs().mean())


VIEW_SHAPES = ((3, 4), (4, 3), (1, 1), (2, 3), (3, 2))  # height:width of the training views


def whole_view_batch(photos: Callable[[], np.ndarray], renderer, view: int, batch_size: int,
                     rng: np.random.Generator, clean_share: float = 0.5) -> dict[str, torch.Tensor]:
    """A batch as scoring sees photos: each is a large crop (60–100 % of the photo, one aspect
    ratio of ``VIEW_SHAPES`` per batch), marked at its own resolution by ``renderer`` (or, with
    probability ``clean_share``, only re-encoded), then area-reduced to the view (long side
    ``view``). Returns ``input`` (B,3,h,w), ``mask`` and ``alpha`` (B,1,h,w), ``label`` (B,)."""
    from model.remover.locate import view_size

    ah, aw = VIEW_SHAPES[int(rng.integers(len(VIEW_SHAPES)))]
    vh, vw = view_size(ah * 1000, aw * 1000, view)
    xs, ms, als, ys = [], [], [], []

    def reduce(arr: np.ndarray, scale: float) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).reshape(arr.shape[0], arr.shape[1], -1)
        return F.interpolate(t.permute(2, 0, 1)[None] / scale, size=(vh, vw), mode="area")

    for _ in range(batch_size):
        img = photos()
        h, w = img.shape[:2]
        ch, cw = (h, round(h * vw / vh)) if h * vw <= w * vh else (round(w * vh / vw), w)
        f = rng.uniform(0.6, 1.0)
        ch, cw = max(32, min(h, round(ch * f))), max(32, min(w, round(cw * f)))
        y0, x0 = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
        crop = np.ascontiguousarray(img[y0 : y0 + ch, x0 : x0 + cw])
        if rng.random() < clean_share:
            out, mask, alpha, label = renderer.postprocess(crop, rng)[0], np.zeros(crop.shape[:2]), None, 0.0
        else:
            wm = renderer.render(crop, rng)
            out, mask, alpha, label = wm.composite, wm.mask, wm.alpha, 1.0
        xs.append(reduce(out, 255.0))
        ms.append(reduce(mask, 1.0))
        als.append(reduce(alpha if alpha is not None else mask, 1.0))
        ys.append(label)
    return {"input": torch.cat(xs), "mask": torch.cat(ms), "alpha": torch.cat(als), "label": torch.tensor(ys)}


def image_score_loss(logits: torch.Tensor, label: torch.Tensor, top_fraction: float) -> torch.Tensor:
    """BCE of the image score triage uses (the mean of the top ``top_fraction`` of the view's mark
    probabilities) against marked / unmarked: it pushes down exactly the pixels that would make a
    clean photo a false alarm, and up the ones that carry a mark."""
    score = top_mean(torch.sigmoid(logits.float()), top_fraction).clamp(1e-5, 1 - 1e-5)
    return F.binary_cross_entropy(score, label.float())


def train_localiser_detector(detector: LocaliserDetector, paths: Sequence[str], renderer,
                             steps: int = 300, minutes: float | None = None, batch_size: int = 8,
                             lr: float = 2e-4, clean_share: float = 0.5, seed: int = 0, image_weight: float = 1.0,
                             max_side: int = 640, progress: Callable[[int, int, float], None] | None = None) -> dict:
    """Fine-tune ``detector`` in place on ``paths`` for ``steps`` steps or ``minutes``, whichever
    ends first (at least one step), at ``lr`` decayed on a cosine over the run. Each batch is made
    of whole views (``whole_view_batch``: the resolution triage scores at), ``clean_share`` of them
    unmarked; the loss is the localiser's mask terms plus ``image_weight`` × ``image_score_loss``
    (at equal wall time this beat the mask terms alone on 256 px crops). Photos are read once,
    reduced to ``max_side``, and kept; unreadable ones are skipped and counted. Returns what it did."""
    if not paths:
        raise ValueError("train_localiser_detector needs at least one image path")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cache = _ImageCache(paths, max_side)

    opt = torch.optim.AdamW(detector.parameters(), lr=lr, weight_decay=1e-5)
    detector.train()
    t0, step, losses = time.perf_counter(), 0, []
    budget = minutes * 60 if minutes else math.inf
    frac = detector.config["top_fraction"]

    def spent() -> float:  # the share of the run done: steps or wall time, whichever is further
        return max(step / steps, (time.perf_counter() - t0) / budget)

    while step < steps and (step == 0 or spent() < 1):  # at least one step
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(1.0, spent())))
        batch = whole_view_batch(lambda: cache.pick(rng), renderer, detector.config["view"], batch_size, rng, clean_share)
        out = detector(batch["input"])
        loss = _loc_terms(out, batch["mask"], batch["alpha"])
        if image_weight:
            loss = loss + image_weight * image_score_loss(out["logits"], batch["label"], frac)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
        if progress:
            progress(step, steps, losses[-1])
    detector.eval()
    return {"steps": step, "seconds": round(time.perf_counter() - t0, 1), "clean_share": clean_share,
            "image_weight": image_weight, "final_loss": float(np.mean(losses[-20:])) if losses else None, "lr": lr,
            "images": len(paths), "unreadable": len(cache.unreadable)}
