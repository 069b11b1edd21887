"""The remover's localiser as the triage detector: one network finds marks for both steps.

``LocaliserDetector`` holds a copy of a ``model.remover.locate.Localiser`` (the first half of the shipped
locate-then-restore remover) and scores a whole image from its mark probabilities over the reduced
view (``model.remover.locate.mark_scores``: the mean of the top ``top_fraction`` of them). The view's long
side is ``view`` pixels whatever the photo's size, so a score means the same on a 4000 px photo and
on a 400 px one: the network is trained and scored at that one resolution.

``train_localiser_detector`` fine-tunes it on a pool's own photos (half of them unmarked, the rest
marked by the renderer) with the localiser's mask terms, for ``unmark triage --retrain-detector``.
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


def train_localiser_detector(detector: LocaliserDetector, paths: Sequence[str], renderer,  # noqa: ANN001
                             steps: int = 300, minutes: float | None = None, batch_size: int = 8, size: int = 256,
                             lr: float = 2e-4, clean_share: float = 0.5, seed: int = 0,
                             progress: Callable[[int, int, float], None] | None = None) -> dict:
    """Fine-tune ``detector`` in place on ``paths`` (whole ``size`` px crops, ``clean_share`` of
    them unmarked, the rest marked by ``renderer``) for ``steps`` steps or ``minutes``, whichever
    ends first (at least one step), at ``lr`` decayed on a cosine over the run. Returns what it did."""
    from torch.utils.data import DataLoader

    from model.synth.pairs import WatermarkPairs

    if not paths:
        raise ValueError("train_localiser_detector needs at least one image path")
    torch.manual_seed(seed)
    # one pass over the photos per epoch; the loop below starts another until the budget is spent
    ds = WatermarkPairs(paths, size=size, train=True, seed=seed, renderer=renderer, clean_share=clean_share)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=0, drop_last=len(ds) > batch_size)
    opt = torch.optim.AdamW(detector.parameters(), lr=lr, weight_decay=1e-5)
    detector.train()
    t0, step, losses = time.perf_counter(), 0, []
    views = [v for v in (96, 128, 160, detector.config["view"]) if v <= detector.config["view"]]
    budget = minutes * 60 if minutes else math.inf

    def spent() -> float:  # the share of the run done: steps or wall time, whichever is further
        return max(step / steps, (time.perf_counter() - t0) / budget)

    while step < steps and (step == 0 or spent() < 1):  # at least one step
        for batch in loader:
            if step >= steps or (step and spent() >= 1):
                break
            for g in opt.param_groups:
                g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(1.0, spent())))
            view = views[step % len(views)]
            x = F.interpolate(batch["input"], size=(view, view), mode="area")
            loss = _loc_terms(detector(x), batch["mask"], batch["alpha"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
            if progress:
                progress(step, steps, losses[-1])
    detector.eval()
    return {"steps": step, "seconds": round(time.perf_counter() - t0, 1), "clean_share": clean_share,
            "final_loss": float(np.mean(losses[-20:])) if losses else None, "lr": lr, "images": len(paths)}
