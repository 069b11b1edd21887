"""The cell-grid detector: a small fully-convolutional CNN that scores a whole image of any size.


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

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from model.device import native_bf16, same_shape_batches

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
    is always applied to scores made the same way.

    A detector that scores whole images itself (``scores_whole_images``: the
    ``LocaliserDetector``, at its one view) ignores ``scales``."""
    if getattr(model, "scores_whole_images", False):
        return model.to(device).score(images, batch_size=batch_size)
    model.eval()
    device = torch.device(device)
    if bf16 is None:
        bf16 = native_bf16(device)
    if bf16:
        model = model.to(memory_format=torch.channels_last)
    best = np.full(len(images), -np.inf, dtype=np.float64)
    jobs: list[tuple[int, torch.Tensor]] = []
    for i, im in enumerate(images):
        size = max(im.size) if isinstance(im, Image.Image) else max(np.asarray(im).shape[:2])
        for eff in sorted({min(s, size) for s in scales}):  # a scale clamped onto another is scored once
            jobs.append((i, prepare(im, eff)))
    for idx, x in same_shape_batches(jobs, batch_size, device):
        if bf16:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        frac = model.score_top_fraction
        pooled = out["logit"] if frac is None else top_mean(out["cells"], frac)
        for i, z in zip(idx, pooled.float().cpu().numpy(), strict=True):
            best[i] = max(best[i], float(z))
    return 1.0 / (1.0 + np.exp(-best))
