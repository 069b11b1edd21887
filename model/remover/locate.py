"""Locate, then restore: the remover that sees the whole image before it touches a pixel.

A watermarked pixel is ``I = J·(1 − α) + α·W`` (clean pixel J, the mark's opacity α and colour W:
exactly how ``model.synth.renderer`` composites). So the remover is two networks in one module:

1. **Localiser** (``Localiser``): the whole image, scaled so its long side is ``view`` pixels,
   through a U-Net trunk (self-attention at the bottleneck: every pixel sees the whole picture).
   Its heads give, per pixel of that reduced view, the mark's logit, α and W. Marks cover 3–60 % of
   the short side, in corners and across the middle; 128 px crops alone cannot tell a big logo
   from the scene, a whole-image view can.
2. **Inversion**: the maps are upsampled to full resolution and the composite is undone where the
   mark is translucent: ``J = (I − α·W)/(1 − α)`` with α capped at ``ALPHA_CAP`` (beyond it the
   division amplifies noise more than it recovers).
3. **Restorer** (full resolution, in tiles when the image is large): a second U-Net trunk reads the
   input, the inverted estimate, the coarse mark probability and α (8 channels) and predicts a
   residual on the estimate (it refines the inversion and, where the mark is opaque, fills it:
   the learned inpainting branch) and a refined mask logit (the coarse logit plus a correction).
   At inference the restorer runs only on the box around what the localiser marked: a clean
   image never reaches it, and a corner logo costs a corner's worth of restoring.
4. ``image = I·(1 − m) + raw·m`` with ``m = sigmoid(mask logit)``; ``raw_image`` is the raw
   prediction, which ``model.remover.evaluate.predict`` and ``model.remover.infer.Cleaner`` re-blend with a hard,
   dilated mask so that pixels outside it stay the input's, bit for bit.

``forward`` follows the removers' contract (B,3,H,W) in [0, 1] → dict with ``image``,
``mask_logits`` and ``raw_image``; for training it also takes ``crop`` (restore only windows of
the full image, so the localiser sees whole images at the cost of small restorer crops) and
``view``, and returns the localiser's maps for ``locate_loss``.
"""

from __future__ import annotations

import contextlib

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from model.device import same_shape_batches
from model.remover.fused import NotFusable, fuse_unet
from model.remover.network import UNet

ALPHA_CAP = 0.9  # inversion uses min(α, ALPHA_CAP): 1/(1 − α) amplifies the input's noise 10× there
RESTORE_TILE = 512  # restorer tile (pixels) for images over RESTORE_MAX_PIXELS at inference
RESTORE_OVERLAP = 64
RESTORE_MAX_PIXELS = 1024 * 1024
BOX_LOGIT = -0.85  # inference restores the box around pixels whose coarse mark probability is above 0.3
BOX_MARGIN = 32  # pixels of context around that box
FILLS = ("none", "telea")  # where the mark is opaque, the restorer starts from the input or from Telea's fill
LOCATE_TERMS = ("loc_bce", "loc_dice", "loc_alpha", "loc_colour", "loc_invert")


class Localiser(nn.Module):
    """Whole-image view (B,3,h,w) → mark logit (B,1,h,w), α (B,1,h,w), W (B,3,h,w)."""

    def __init__(self, base: int = 16, depth: int = 4):
        super().__init__()
        self.trunk = UNet(in_ch=3, out_ch=3, base=base, depth=depth)
        self.trunk.head = nn.Identity()  # only its features are read
        self.out = nn.Conv2d(base, 5, 1)
        nn.init.zeros_(self.out.weight)
        with torch.no_grad():  # start at "no mark", α small, W mid-grey
            self.out.bias.copy_(torch.tensor([-3.0, -2.0, 0.0, 0.0, 0.0]))

    def forward(self, view: torch.Tensor) -> dict[str, torch.Tensor]:
        o = self.out(self.trunk.features(view))
        return {"logits": o[:, :1], "alpha": torch.sigmoid(o[:, 1:2]), "colour": torch.sigmoid(o[:, 2:5])}


class FusedTrunk(nn.Module):
    """An inference-only copy of a ``Restorer`` (or any module of a head-less ``trunk`` U-Net and a
    1×1 ``out`` convolution) in eval mode: the trunk folded by ``model.remover.fused`` (BatchNorm
    into the convolutions, activations inside them, channels-last), the same output up to float
    rounding. On this CPU the localiser's trunk ran 1.7× faster so."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.trunk = fuse_unet(module.trunk)
        self.register_buffer("w", module.out.weight.detach().flatten(1).clone())
        self.register_buffer("b", module.out.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk.features(x.contiguous(memory_format=torch.channels_last))
        return F.linear(h.permute(0, 2, 3, 1), self.w, self.b).permute(0, 3, 1, 2)


class FusedLocaliser(FusedTrunk):
    """A folded ``Localiser`` (see ``FusedTrunk``): the same maps."""

    def forward(self, view: torch.Tensor) -> dict[str, torch.Tensor]:
        o = super().forward(view)
        return {"logits": o[:, :1], "alpha": torch.sigmoid(o[:, 1:2]), "colour": torch.sigmoid(o[:, 2:5])}


class Restorer(nn.Module):
    """[I, inverted, p, α] (B,8,H,W) → residual (B,3,H,W) on the inverted estimate, mask
    correction (B,1,H,W) added to the coarse logit."""

    def __init__(self, base: int = 16, depth: int = 4):
        super().__init__()
        self.trunk = UNet(in_ch=8, out_ch=8, base=base, depth=depth)
        self.trunk.head = nn.Identity()
        self.out = nn.Conv2d(base, 4, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.trunk.features(x))


@torch.no_grad()
def telea_fill(x: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """OpenCV Telea inpainting (radius 3) of the pixels ``where`` (B,1,H,W) in ``x`` (B,3,H,W)
    in [0, 1], on the CPU, per image; no gradient flows through it."""
    out = x.detach().float().clone()
    for i in range(x.shape[0]):
        m = where[i, 0].to("cpu", torch.uint8).numpy()
        if not m.any():
            continue
        img = (out[i].permute(1, 2, 0).cpu().numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
        filled = cv2.inpaint(np.ascontiguousarray(img), m * 255, 3, cv2.INPAINT_TELEA)
        out[i] = torch.from_numpy(filled).to(x.device).permute(2, 0, 1).float() / 255.0
    return out.to(x.dtype)


def view_size(h: int, w: int, view: int, multiple: int = 16) -> tuple[int, int]:
    """The localiser's input size for an h×w image: long side ``view`` (never upscaled), both
    sides multiples of ``multiple``."""
    s = min(1.0, view / max(h, w))
    return (max(multiple, round(h * s / multiple) * multiple), max(multiple, round(w * s / multiple) * multiple))


def windows(t: torch.Tensor, size: int, corners: list[tuple[int, int]]) -> torch.Tensor:
    """One ``size``×``size`` window of each image of ``t`` (B,C,H,W), at its (y, x) corner."""
    return torch.stack([t[i, :, y : y + size, x : x + size] for i, (y, x) in enumerate(corners)])


def invert(image: torch.Tensor, alpha: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """Undo ``I = J(1 − α) + αW`` for J, with α capped at ``ALPHA_CAP``, clamped to [0, 1]."""
    a = alpha.clamp(0.0, ALPHA_CAP)
    return ((image - a * colour) / (1.0 - a)).clamp(0.0, 1.0)


class LocateRestore(nn.Module):
    """The locate-then-restore remover (see the module docstring). ``config`` holds what
    ``model.remover.network.build_model`` needs to rebuild it from a checkpoint."""

    size_multiple = 16

    def __init__(self, base: int = 16, depth: int = 4, loc_base: int = 16, loc_depth: int = 4, view: int = 192,
                 arch: str = "locate-restore", fill: str = "none"):
        super().__init__()
        if arch != "locate-restore":
            raise ValueError(f"LocateRestore builds arch 'locate-restore', not {arch!r}")
        if view < 32 or view % 16:
            raise ValueError(f"view must be a multiple of 16 and at least 32, got {view}")
        if fill not in FILLS:
            raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
        self.config = dict(arch=arch, base=base, depth=depth, loc_base=loc_base, loc_depth=loc_depth, view=view)
        if fill != "none":  # (absent from the configs of networks that never had it)
            self.config["fill"] = fill
        self.size_multiple = max(2**depth, 16)
        self.localiser = Localiser(loc_base, loc_depth)
        self.restorer = Restorer(base, depth)

    mask_head = True
    mask_guided = True
    whole_image = True  # model.remover.infer.Cleaner hands it whole images, never its own tiles
    restore_everywhere = False  # inference restores the whole image, not only the marked box (plots)

    @torch.no_grad()
    def warm_start_from_unet(self, unet_config: dict, state: dict[str, torch.Tensor]) -> None:
        """Start both trunks from a trained mask-head U-Net remover of the same width and depth
        (the remover that shipped before this design): the localiser takes its features and its
        mask head; the restorer its features on the input's three channels (the other five start
        at zero) and its residual head."""
        want = {"base": self.config["base"], "depth": self.config["depth"]}
        if {k: unet_config.get(k) for k in want} != want or self.config["loc_base"] != want["base"] \
                or self.config["loc_depth"] != want["depth"] or not unet_config.get("mask_head"):
            raise ValueError(f"cannot warm-start {self.config} from the U-Net {unet_config}")
        trunk = {k: v for k, v in state.items() if not k.startswith(("head.", "mask_out."))}
        self.localiser.trunk.load_state_dict(trunk)
        first = "encoders.0.block.0.weight"
        widened = dict(trunk)
        w = torch.zeros_like(self.restorer.trunk.state_dict()[first])
        w[:, :3] = trunk[first]
        widened[first] = w
        self.restorer.trunk.load_state_dict(widened)
        self.localiser.out.weight[:1] = state["mask_out.weight"]
        self.localiser.out.bias[:1] = state["mask_out.bias"]
        self.restorer.out.weight[:3] = state["head.weight"]
        self.restorer.out.bias[:3] = state["head.bias"]

    def fused_copy(self) -> LocateRestore:
        """An inference-only copy with both trunks folded (``FusedLocaliser``, ``FusedTrunk``): what
        ``model.remover.infer.Cleaner``'s fused backend runs. ``NotFusable`` in training mode."""
        if self.training:
            raise NotFusable("model is in training mode (BatchNorm would use batch statistics)")
        new = LocateRestore(**self.config)
        new.load_state_dict(self.state_dict())
        new.restore_everywhere = self.restore_everywhere
        new.localiser, new.restorer = FusedLocaliser(self.localiser), FusedTrunk(self.restorer)
        return new.eval().to(next(self.parameters()).device)

    def locate(self, x: torch.Tensor, view: int | None = None) -> dict[str, torch.Tensor]:
        """The localiser's maps at the reduced view of ``x`` (B,3,H,W)."""
        vh, vw = view_size(x.shape[2], x.shape[3], view or self.config["view"])
        small = x if (vh, vw) == tuple(x.shape[2:]) else F.interpolate(x, size=(vh, vw), mode="area")
        return self.localiser(small)

    def locate_windows(self, x: torch.Tensor, view: int | None, size: int, corners: list[tuple[int, int]]
                       ) -> dict[str, torch.Tensor]:
        """What ``locate_loss`` reads, without the restorer: the maps at the view and the inversion
        on one ``size`` window per image (training the localiser alone)."""
        maps = self.locate(x, view)
        up = {k: F.interpolate(maps[k], size=x.shape[2:], mode="bilinear", align_corners=False)
              for k in ("alpha", "colour")}
        return {"coarse_logits": maps["logits"], "alpha_view": maps["alpha"], "colour_view": maps["colour"],
                "inverted": invert(*(windows(t, size, corners) for t in (x, up["alpha"], up["colour"])))}

    def restore(self, x: torch.Tensor, logits: torch.Tensor, alpha: torch.Tensor, colour: torch.Tensor
                ) -> dict[str, torch.Tensor]:
        """Full-resolution restore of ``x`` given the upsampled maps (same H×W as ``x``)."""
        prob = torch.sigmoid(logits)
        inverted = invert(x, alpha, colour)
        start = inverted
        if self.config.get("fill") == "telea":  # opaque marks start from OpenCV's fill, not the input
            opaque = (prob > 0.5) & (alpha >= ALPHA_CAP)
            start = torch.where(opaque, telea_fill(x, opaque), inverted)
        estimate = x + prob * (start - x)
        o = self.restorer(torch.cat([x, estimate, prob, alpha], dim=1))
        raw = estimate + o[:, :3]
        mask_logits = logits + o[:, 3:4]
        m = torch.sigmoid(mask_logits)
        return {"image": x * (1 - m) + raw * m, "raw_image": raw, "mask_logits": mask_logits, "inverted": inverted}

    def forward(self, x: torch.Tensor, view: int | None = None, crop: tuple[int, list[tuple[int, int]]] | None = None
                ) -> dict[str, torch.Tensor]:
        B, _, H, W = x.shape
        m = self.size_multiple
        if H % m or W % m:
            raise ValueError(f"LocateRestore input {H}x{W} is not a multiple of {m}; pad it first")
        maps = self.locate(x, view)
        up = {k: F.interpolate(v, size=(H, W), mode="bilinear", align_corners=False) for k, v in maps.items()}
        if crop is not None:  # training: restore one window per image
            def window(t: torch.Tensor) -> torch.Tensor:
                return windows(t, *crop)
            out = self.restore(window(x), window(up["logits"]), window(up["alpha"]), window(up["colour"]))
            out["alpha"], out["colour"] = window(up["alpha"]), window(up["colour"])
        elif self.training or self.restore_everywhere:
            out = self.restore(x, up["logits"], up["alpha"], up["colour"])
            out["alpha"], out["colour"] = up["alpha"], up["colour"]
        else:
            out = self._restore_where_marked(x, up)
        out.update(coarse_logits=maps["logits"], alpha_view=maps["alpha"], colour_view=maps["colour"])
        return out

    @torch.no_grad()
    def _restore_where_marked(self, x: torch.Tensor, up: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Inference: the restorer runs only on the box around what the localiser marked (its
        probability above ``BOX_PROB``, padded by ``BOX_MARGIN`` pixels of context, on the grid of
        ``size_multiple``); outside it the output is the input and the mask the coarse one. An
        image with no mark never reaches the restorer."""
        B, _, H, W = x.shape
        m = self.size_multiple
        marked = (up["logits"] > BOX_LOGIT).any(0)[0]  # (H, W) over the batch
        rows, cols = torch.nonzero(marked.any(1)), torch.nonzero(marked.any(0))
        out = {"image": x, "raw_image": x, "mask_logits": up["logits"], "inverted": x,
               "alpha": up["alpha"], "colour": up["colour"]}
        if len(rows) == 0:
            return out
        y0 = max(0, (int(rows[0]) - BOX_MARGIN) // m * m)
        y1 = min(H, -(-(int(rows[-1]) + 1 + BOX_MARGIN) // m) * m)
        x0 = max(0, (int(cols[0]) - BOX_MARGIN) // m * m)
        x1 = min(W, -(-(int(cols[-1]) + 1 + BOX_MARGIN) // m) * m)
        box = (..., slice(y0, y1), slice(x0, x1))
        sub_x, sub = x[box], {k: v[box] for k, v in up.items()}
        if (y1 - y0) * (x1 - x0) <= RESTORE_MAX_PIXELS:
            inner = self.restore(sub_x, sub["logits"], sub["alpha"], sub["colour"])
        else:
            inner = self._restore_tiled(sub_x, sub)
        for k in ("image", "raw_image", "mask_logits", "inverted"):
            full = out[k].clone()
            full[box] = inner[k].to(full.dtype)
            out[k] = full
        return out

    @torch.no_grad()
    def _restore_tiled(self, x: torch.Tensor, up: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The restorer over overlapping tiles, blended with the same normalised raised-cosine
        windows as ``model.remover.infer`` (flat memory on large images)."""
        from model.remover.tiles import axis_tiles, axis_window

        B, _, H, W = x.shape
        th, ys = axis_tiles(H, RESTORE_TILE, RESTORE_OVERLAP, self.size_multiple, even=True)
        tw, xs = axis_tiles(W, RESTORE_TILE, RESTORE_OVERLAP, self.size_multiple, even=True)
        acc = {k: torch.zeros(B, c, H, W, device=x.device) for k, c in
               (("image", 3), ("raw_image", 3), ("mask_logits", 1), ("inverted", 3))}
        weight = torch.zeros(1, 1, H, W, device=x.device)
        for y in ys:
            wy = torch.from_numpy(axis_window(th, y, H, RESTORE_OVERLAP)).to(x.device)
            for x0 in xs:
                wx = torch.from_numpy(axis_window(tw, x0, W, RESTORE_OVERLAP)).to(x.device)
                win = (wy[:, None] * wx[None, :])[None, None]
                box = (..., slice(y, y + th), slice(x0, x0 + tw))
                o = self.restore(x[box], up["logits"][box], up["alpha"][box], up["colour"][box])
                for k in acc:
                    acc[k][box] += o[k].float() * win
                weight[box] += win
        out = {k: v / weight.clamp_min(1e-8) for k, v in acc.items()}
        out["alpha"], out["colour"] = up["alpha"], up["colour"]
        return out


# --- the localiser as a detector (triage) ---------------------------------------------------

SCORE_TOP_FRACTION = 0.002  # an image's mark score: the mean of its top 0.2 % view probabilities


def _view_tensor(image: Image.Image | np.ndarray, view: int) -> torch.Tensor:
    arr = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {arr.shape}")
    vh, vw = view_size(arr.shape[0], arr.shape[1], view)
    im = Image.fromarray(arr.astype(np.uint8)).resize((vw, vh), Image.Resampling.BOX)
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float().div_(255.0)


@torch.no_grad()
def mark_scores(model: nn.Module, images: list[Image.Image | np.ndarray],
                top_fraction: float = SCORE_TOP_FRACTION, batch_size: int = 8) -> np.ndarray:
    """Watermark score in [0, 1] per image from the localiser alone: the mean of the top
    ``top_fraction`` of its mark probabilities over the reduced view. The view has the same size
    whatever the photo's (long side ``view``), so a score means the same on a 4000 px photo and a
    400 px one; the restorer never runs. ``model``: a ``LocateRestore`` or any module with a
    ``localiser`` and ``config["view"]`` (``model.detector.LocaliserDetector``)."""
    model.eval()
    dev = next(model.parameters()).device
    view = model.config["view"]
    out = np.zeros(len(images), np.float64)
    jobs = [(i, _view_tensor(im, view)) for i, im in enumerate(images)]
    localiser = model.localiser
    if dev.type == "cpu" and images:  # folded afresh each call: a detector being fine-tuned is never stale
        with contextlib.suppress(NotFusable):
            localiser = FusedLocaliser(model.localiser)
    for idx, x in same_shape_batches(jobs, batch_size, dev):
        prob = torch.sigmoid(localiser(x)["logits"].float()).flatten(1)  # (B, h·w)
        n = max(1, round(top_fraction * prob.shape[1]))
        out[idx] = prob.topk(n, dim=1).values.mean(1).cpu().numpy()
    return out


# --- training --------------------------------------------------------------------------------


def pick_crops(mask: torch.Tensor, size: int, rng: torch.Generator, on_mark: float = 0.85) -> list[tuple[int, int]]:
    """One size×size window corner per image of ``mask`` (B,1,H,W): with probability ``on_mark``
    around a random marked pixel (when the image has one), else anywhere."""
    B, _, H, W = mask.shape
    corners = []
    for i in range(B):
        ys, xs = torch.nonzero(mask[i, 0] > 0.5, as_tuple=True)
        if len(ys) and float(torch.rand(1, generator=rng)) < on_mark:
            j = int(torch.randint(len(ys), (1,), generator=rng))
            cy, cx = int(ys[j]), int(xs[j])
            jitter = int(torch.randint(-size // 3, size // 3 + 1, (2,), generator=rng)[0])
            y = min(max(cy - size // 2 + jitter, 0), H - size)
            x = min(max(cx - size // 2 - jitter, 0), W - size)
        else:
            y = int(torch.randint(H - size + 1, (1,), generator=rng))
            x = int(torch.randint(W - size + 1, (1,), generator=rng))
        corners.append((y, x))
    return corners


def _dice(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    p = torch.sigmoid(logits)
    inter = (p * target).sum(dim=(1, 2, 3))
    return (1 - (2 * inter + eps) / (p.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3)) + eps)).mean()


def locate_loss(out: dict[str, torch.Tensor], mask: torch.Tensor, alpha: torch.Tensor, colour: torch.Tensor,
                clean_crop: torch.Tensor, mask_crop: torch.Tensor, alpha_crop: torch.Tensor,
                weights: dict[str, float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The localiser's terms. ``mask``/``alpha``/``colour`` are full-image targets (B,·,H,W),
    reduced here to the view by area averaging (W weighted by α); the ``*_crop`` targets are the
    restorer's windows, where the inversion term compares J with the clean pixels under
    translucent marks (α below ``ALPHA_CAP``)."""
    vh, vw = out["coarse_logits"].shape[2:]
    with torch.autocast(mask.device.type, enabled=False):
        t_mask = F.interpolate(mask.float(), size=(vh, vw), mode="area")
        t_alpha = F.interpolate(alpha.float(), size=(vh, vw), mode="area")
        t_colour = F.interpolate(colour.float() * alpha.float(), size=(vh, vw), mode="area") / t_alpha.clamp_min(1e-4)
        logits = out["coarse_logits"].float()
        terms: dict[str, torch.Tensor] = {}
        if weights.get("loc_bce"):
            terms["loc_bce"] = F.binary_cross_entropy_with_logits(logits, t_mask)
        if weights.get("loc_dice"):
            terms["loc_dice"] = _dice(logits, t_mask)
        inside = (t_mask > 0.5).float()
        if weights.get("loc_alpha"):
            err = (out["alpha_view"].float() - t_alpha).abs()
            terms["loc_alpha"] = err.mean() + (err * inside).sum() / inside.sum().clamp_min(1.0)
        if weights.get("loc_colour"):
            err = (out["colour_view"].float() - t_colour).abs() * inside
            terms["loc_colour"] = err.sum() / (3 * inside.sum()).clamp_min(1.0)
        if weights.get("loc_invert"):
            where = ((mask_crop > 0.5) & (alpha_crop < ALPHA_CAP)).float()
            err = (out["inverted"].float() - clean_crop.float()).abs() * where
            terms["loc_invert"] = err.sum() / (3 * where.sum()).clamp_min(1.0)
        total = sum(weights[k] * v for k, v in terms.items())
    return total, terms


__all__ = ["ALPHA_CAP", "LOCATE_TERMS", "LocateRestore", "invert", "locate_loss",
           "mark_scores", "pick_crops", "view_size", "windows"]
