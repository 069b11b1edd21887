"""Batched, tiled inference: any image size at flat memory, no visible seams.

An image is cut into overlapping tiles; every tile goes through the network on its own (tiles of
several images share a batch when their shapes match); the outputs are blended back with a
separable raised-cosine window whose weights are normalised, so the result has exactly the input's
size and no seams. A network never sees more than one batch of tiles, so its feature maps are the
same size for a 1024×768 photo and a 4000×3000 one; only the output accumulator grows with the
image.

The tiles and their windows (and why a window has a dead margin) are ``model.remover.tiles``.

Precision: on CUDA, autocast (bf16 where supported, else fp16) and channels-last; on the CPU,
bf16 autocast + channels-last where the CPU has native bf16 (AVX-512 BF16 / AMX), which measured
about 3× faster than fp32 for the seed network; fp32 otherwise. ``precision=`` overrides.

Backend: in fp32 on the CPU a U-Net runs as ``model.remover.fused.FusedUNet`` (an inference-only copy with
BatchNorm folded, activations fused into the oneDNN convolutions, gate and head projections
merged; channels-last), which measured ~1.3× faster per pixel than the plain channels-last model
and as fast as ``torch.jit.trace`` + ``freeze`` without a trace per tile shape (bench/results/infer.json).
``backend="auto"`` picks it after checking it against the plain model on a small probe
input, and falls back to the plain model for networks it does not know. ``backend=`` overrides.

On a CPU with VNNI (8-bit dot products) ``auto`` then tries the int8 copy (``model.remover.quant``: FX
post-training static quantization, oneDNN int8 kernels, calibrated once per process on fixed
watermarked photos): it is used only when it agrees with the fused copy to ≥ 40 dB PSNR on a
held-out probe photo and runs measurably faster on a probe tile on this machine; otherwise, or
where it cannot be built, the fused copy runs and a log line says why. It measured 2.7× (seed
size) and 1.75× (quick-cpu size) cheaper than fused per 512² tile, 56–66 dB from fp32.

This module imports nothing outside ``model``: it takes an ``nn.Module`` and numpy arrays.
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from model.device import autocast, resolve_device, resolve_precision
from model.remover.fused import NotFusable, fuse_unet
from model.remover.masks import MaskRule
from model.remover.quant import NotQuantizable, int8_unavailable, quantized_unet, weights_key
from model.remover.tiles import Tile, axis_cover, axis_tiles, axis_window, pad_to

log = logging.getLogger(__name__)

BACKENDS = ("auto", "eager", "fused", "int8")
PROBE_TOLERANCE = 1e-4  # max |fused − plain| on a [0, 1] probe image; float rounding is ~1e-6
INT8_MIN_PSNR = 40.0  # dB, int8 vs fused output on the probe photo (measured 56–66 dB)
INT8_MIN_SPEEDUP = 1.2  # auto takes int8 only when a probe tile is at least this much cheaper
INT8_MIN_BASE = 16  # narrower U-Nets are not worth a calibration (test-sized networks)


@dataclass
class CleanResult:
    """One cleaned image: ``image`` uint8 HxWx3 (the input's size), ``mask`` the predicted
    watermark probability HxW float32 (None when the network has no mask head), ``seconds`` this
    image's share of the compute time (by tile area), ``weights`` the blend weights of a hardened
    output (``model.remover.masks.MaskRule``; None when the output was not hardened)."""

    image: np.ndarray
    mask: np.ndarray | None
    seconds: float
    weights: np.ndarray | None = None


_int8_decisions: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model → (key, int8 copy | None, why)


def _probe_psnr(ref: nn.Module, cand: nn.Module, multiple: int) -> float:
    """PSNR (dB, uint8 levels) of ``cand``'s image output against ``ref``'s on the probe photo."""
    from model.remover.quant import probe_image

    img = probe_image(max(128, 2 * multiple) // multiple * multiple)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float().div(255).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        a, b = (net(x)["image"].clamp(0, 1).mul(255).round() for net in (ref, cand))
    mse = float((a - b).pow(2).mean())
    return 99.0 if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _cpu_seconds(a: nn.Module, b: nn.Module, x: torch.Tensor, repeats: int = 3) -> tuple[float, float]:
    """Least CPU seconds of one forward of ``a`` and of ``b`` on ``x`` (interleaved, after a warm-up)."""
    best = [math.inf, math.inf]
    with torch.inference_mode():
        a(x), b(x)
        for _ in range(repeats):
            for i, net in enumerate((a, b)):
                t = time.process_time()
                net(x)
                best[i] = min(best[i], time.process_time() - t)
    return best[0], best[1]


def _to_device(arr: np.ndarray, dev: torch.device) -> torch.Tensor:
    """HxWx3 uint8 as a tensor on ``dev``: on CUDA copied once into pinned memory and sent
    without blocking; on the CPU shared, not copied (copied only when read-only, as an array
    from ``np.asarray(PIL image)`` is: torch warns about sharing those)."""
    arr = np.ascontiguousarray(arr)
    if dev.type == "cuda":
        pinned = torch.empty(arr.shape, dtype=torch.uint8, pin_memory=True)
        pinned.numpy()[...] = arr
        return pinned.to(dev, non_blocking=True)
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())


class Cleaner:
    """Runs a removal network over images of any size.

    ``model``: an ``nn.Module`` taking (B,3,H,W) in [0,1] and returning either a tensor of the same
    shape or a dict with ``image`` and optionally ``mask_logits`` (B,1,H,W). H and W are padded to
    ``model.size_multiple`` (1 when the model has none). ``tile``/``overlap`` in pixels;
    ``batch_size`` tiles per forward (default 16 on CUDA, 2 on CPU); ``even_tiles`` (default: on the
    CPU) shrinks tiles to spread them evenly instead of keeping every tile ``tile`` wide.

    ``harden_mask`` (mask-head networks; as ``model.remover.evaluate.predict`` does at evaluation): the
    output becomes ``x·(1−w) + y·w`` with the weights ``w = mask_rule.weights(p)`` of the blended
    probabilities (by default the hard, one-pixel-dilated mask ``dilate(p > 0.5)``; ``mask_rule``
    may be changed between calls), so pixels the mask calls clean are copied exactly; ``y`` is the
    raw prediction (the network's ``raw_image`` output, or for a mask-guided U-Net input + head,
    read by a forward hook on ``model.head`` that ``close()`` removes).

    ``backend``: ``eager`` runs ``model`` itself; ``fused`` an inference-only copy
    (``model.remover.fused.fuse_unet``; CPU and fp32 only); ``int8`` a calibrated int8 copy
    (``model.remover.quant``; CPU with VNNI, fp32 precision); ``auto`` (default) the fused copy where it
    applies (CPU, fp32, a U-Net it knows, no ``compile``) and agrees with the model on a probe
    input, else eager; and then the int8 copy instead where it can be built, agrees with the
    fused copy on a probe photo and is measured faster on a probe tile (``_int8_if_better``; the
    decision is made once per model and process). ``self.backend`` says which runs.

    ``compile``: run the network through ``torch.compile``. Every forward then has one shape
    (``batch_size``×3×``tile``×``tile``: tiles are not shrunk, small images are padded up to a
    tile, a short last batch is padded), since each new shape costs a compilation of minutes.
    On a CPU without native bf16 it made a 320² tile of the seed network ~1.3× cheaper, which the
    extra pixels of fixed tiles ate up at 1024×768 (bench/results/infer.json); compilation takes minutes.
    Off by default; try it for large pools on the machine that will run them."""

    def __init__(
        self,
        model: nn.Module,
        device: str | torch.device = "auto",
        tile: int = 512,
        overlap: int = 64,
        batch_size: int | None = None,
        precision: str = "auto",
        channels_last: bool = True,
        even_tiles: bool | None = None,
        harden_mask: bool = False,
        compile: bool = False,
        backend: str = "auto",
        mask_rule: MaskRule | None = None,
    ):
        self.device = resolve_device(device)
        self.mask_rule = mask_rule or MaskRule()
        self.precision = resolve_precision(precision, self.device)
        self.multiple = int(getattr(model, "size_multiple", 1) or 1)
        if tile < self.multiple:
            raise ValueError(f"tile {tile} is smaller than the network's size multiple {self.multiple}")
        if overlap < 0 or overlap >= tile:
            raise ValueError(f"overlap must be in [0, tile), got {overlap}")
        self.tile = tile
        self.overlap = overlap
        self.batch_size = batch_size or (16 if self.device.type == "cuda" else 2)
        self.even_tiles = (self.device.type != "cuda" and not compile) if even_tiles is None else even_tiles
        if compile and self.even_tiles:
            raise ValueError("compile needs fixed tiles (even_tiles=False)")
        self.channels_last = channels_last
        self.harden_mask = harden_mask
        self.model = model.eval().to(self.device)
        self._raw: dict[str, torch.Tensor] = {}
        self._hook = None
        self.compiled = compile
        self.tile = max(self.multiple, tile // self.multiple * self.multiple)
        self.backend, fused = self._pick_backend(backend)
        if fused is not None:  # a fused/int8 mask-guided U-Net returns ``raw_image`` itself: no hook
            self.channels_last = True
            self._net = fused
            return
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if harden_mask and getattr(self.model, "mask_guided", False) and hasattr(self.model, "head"):
            # a mask-guided U-Net returns the soft blend; its raw prediction is input + head output
            self._hook = self.model.head.register_forward_hook(self._keep_residual)
        self._net = torch.compile(self.model, dynamic=False) if compile else self.model

    def _pick_backend(self, backend: str) -> tuple[str, nn.Module | None]:
        """The backend that runs, and its inference copy (``fused`` or ``int8``; None for eager)."""
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
        if backend == "eager":
            return "eager", None
        usable = self.device.type == "cpu" and self.precision == "fp32" and not self.compiled
        if backend in ("fused", "int8") and not usable:
            raise ValueError(f"the {backend} backend runs on the CPU in fp32 without compile")
        if not usable:
            return "eager", None
        if backend == "int8":
            return "int8", quantized_unet(self.model)  # raises NotQuantizable with the reason
        try:
            copy = getattr(self.model, "fused_copy", None)  # a network that folds its own parts
            fused = copy() if copy is not None else fuse_unet(self.model)
            err = self._probe_error(fused)
        except NotFusable as exc:
            if backend == "fused":
                raise
            log.info("fused backend not used: %s", exc)
            return "eager", None
        if err > PROBE_TOLERANCE:
            if backend == "fused":
                raise NotFusable(f"fused copy differs from the model by {err:.2e} on the probe input")
            log.warning("fused copy differs from the model by %.2e on a probe input; running eager", err)
            return "eager", None
        if backend == "auto":
            q = self._int8_if_better(fused)
            if q is not None:
                return "int8", q
        return "fused", fused

    def _int8_if_better(self, fused: nn.Module) -> nn.Module | None:
        """The int8 copy when it is usable here, close to ``fused`` and faster; else None (with a
        log line saying why). Decided once per model object and weights in this process."""
        why = int8_unavailable()
        base = int(getattr(self.model, "config", {}).get("base", 0) or 0)
        if why is None and base < INT8_MIN_BASE:
            why = f"network width {base} < {INT8_MIN_BASE}"
        if why is not None:
            log.info("int8 backend not used: %s", why)
            return None
        side = max(2 * self.multiple, min(self.tile, 256) // self.multiple * self.multiple)
        key = (weights_key(self.model), side)
        hit = _int8_decisions.get(self.model)
        if hit is None or hit[0] != key:
            hit = (key, *self._judge_int8(fused, side))
            _int8_decisions[self.model] = hit
        _, q, reason = hit
        if q is None:
            log.info("int8 backend not used: %s", reason)
        else:
            log.info("int8 backend: %s", reason)
        return q

    def _judge_int8(self, fused: nn.Module, side: int) -> tuple[nn.Module | None, str]:
        try:
            q = quantized_unet(self.model)
        except NotQuantizable as exc:
            return None, str(exc)
        psnr = _probe_psnr(fused, q, self.multiple)
        if psnr < INT8_MIN_PSNR:
            log.warning("int8 copy is %.1f dB from the fused copy on the probe photo (< %.0f)", psnr, INT8_MIN_PSNR)
            return None, f"{psnr:.1f} dB from fp32 on the probe photo (< {INT8_MIN_PSNR:.0f} dB)"
        x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))
        t_fused, t_int8 = _cpu_seconds(fused, q, x.contiguous(memory_format=torch.channels_last))
        speedup = t_fused / max(t_int8, 1e-9)
        verdict = f"{speedup:.2f}x cheaper than fused on a {side}² probe tile, {psnr:.1f} dB from fp32"
        return (q if speedup >= INT8_MIN_SPEEDUP else None), verdict

    def _probe_error(self, fused: nn.Module) -> float:
        """Max |fused − model| over every output on a small seeded [0, 1] image."""
        side = 2 * self.multiple
        x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0)).to(self.device)
        with torch.inference_mode():
            a, b = self.model(x), fused(x.contiguous(memory_format=torch.channels_last))
        a = a if isinstance(a, dict) else {"image": a}
        return max(float((a[k].float() - b[k].float()).abs().max()) for k in a if k in b)

    def _keep_residual(self, _module, _inputs, output) -> None:
        self._raw["residual"] = output

    def close(self) -> None:
        """Remove the hook this cleaner put on the model (``harden_mask``)."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    # --- planning ------------------------------------------------------------------------
    def plan(self, height: int, width: int) -> tuple[int, int, list[tuple[int, int]]]:
        """Tile height, tile width and the (y, x) starts covering a ``height``×``width`` image."""
        th, tw, ys, xs = self._plan_axes(height, width)
        return th, tw, [(y, x) for y in ys for x in xs]

    def _plan_axes(self, height: int, width: int) -> tuple[int, int, list[int], list[int]]:
        if getattr(self.model, "whole_image", False):  # it must see the whole image (it tiles itself)
            return (math.ceil(height / self.multiple) * self.multiple, math.ceil(width / self.multiple) * self.multiple,
                    [0], [0])
        th, ys = axis_tiles(height, self.tile, self.overlap, self.multiple, self.even_tiles)
        tw, xs = axis_tiles(width, self.tile, self.overlap, self.multiple, self.even_tiles)
        if self.compiled:  # one shape for every forward: small sides are padded up to the tile
            th, tw = max(th, self.tile), max(tw, self.tile)
        return th, tw, ys, xs

    # --- running -------------------------------------------------------------------------
    def clean(self, images: Sequence[np.ndarray]) -> list[CleanResult]:
        """Clean a list of HxWx3 uint8 images (tiles of all of them are batched together)."""
        for i, im in enumerate(images):
            if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
                raise ValueError(f"image {i}: expected HxWx3 uint8, got {im.shape} {im.dtype}")
        if not images:
            return []
        t0 = time.perf_counter()
        dev = self.device
        # Each padded image goes to the device once, as uint8; tiles are cut from it there (on
        # CUDA, cutting them on the host and copying each batch kept the GPU waiting).
        padded: list[torch.Tensor] = []
        acc: list[torch.Tensor | None] = []
        macc: list[torch.Tensor | None] = []
        norms: list[tuple[np.ndarray, np.ndarray]] = []
        buckets: dict[tuple[int, int], list[Tile]] = {}
        area = np.zeros(len(images))
        for i, im in enumerate(images):
            h, w = im.shape[:2]
            th, tw, ys, xs = self._plan_axes(h, w)
            padded.append(_to_device(pad_to(im, max(h, th), max(w, tw)), dev))
            ph, pw = padded[-1].shape[:2]
            acc.append(torch.zeros(3, ph, pw, device=dev))
            macc.append(None)
            # The tiles are the grid ys × xs and the window is separable, so the sum of the
            # windows is the outer product of two 1-D sums: no full-size weight map is needed.
            norms.append((sum(axis_cover(th, y, ph, self.overlap) for y in ys),
                          sum(axis_cover(tw, x, pw, self.overlap) for x in xs)))
            area[i] = len(ys) * len(xs) * th * tw
            buckets.setdefault((th, tw), []).extend(Tile(i, y, x, th, tw) for y in ys for x in xs)

        windows: dict[tuple, torch.Tensor] = {}
        with torch.inference_mode():
            for tiles in buckets.values():
                for b in range(0, len(tiles), self.batch_size):
                    self._run_batch(tiles[b : b + self.batch_size], padded, acc, macc, windows)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            elapsed = time.perf_counter() - t0
            results = []
            for i, im in enumerate(images):
                h, w = im.shape[:2]
                ny, nx = norms[i]
                inv = torch.outer(torch.from_numpy(ny[:h]).to(dev), torch.from_numpy(nx[:w]).to(dev))
                inv = inv.clamp_(min=1e-8).reciprocal_().float()
                out = (acc[i][:, :h, :w] * inv).clamp_(0, 1)
                mask = weights = None
                if macc[i] is not None:
                    mask = (macc[i][0, :h, :w] * inv).float().cpu().numpy()
                    if self.harden_mask:
                        weights = self.mask_rule.weights(mask)
                        wt = torch.from_numpy(weights).to(dev)[None]
                        x = padded[i][:h, :w].permute(2, 0, 1).float().div_(255)
                        out = x * (1 - wt) + out * wt
                out = out.mul_(255).round_().to(torch.uint8)
                results.append(CleanResult(out.permute(1, 2, 0).cpu().numpy(), mask, elapsed * area[i] / area.sum(),
                                           weights))
                acc[i] = macc[i] = padded[i] = None  # free as we go
        return results

    def clean_stream(self, batches: Iterable[Sequence[np.ndarray]]) -> Iterator[list[CleanResult]]:
        """``clean`` over an iterable of image lists (e.g. a DataLoader), one result list each."""
        for images in batches:
            yield self.clean(images)

    def _window(self, t: Tile, ph: int, pw: int, cache: dict) -> torch.Tensor:
        key = (t.h, t.w, t.y > 0, t.y + t.h < ph, t.x > 0, t.x + t.w < pw)
        if key not in cache:
            wy = axis_window(t.h, t.y, ph, self.overlap)
            wx = axis_window(t.w, t.x, pw, self.overlap)
            cache[key] = torch.from_numpy(np.outer(wy, wx)).to(self.device)[None]
        return cache[key]

    def _run_batch(self, tiles, padded, acc, macc, windows) -> None:
        dev = self.device
        crops = torch.stack([padded[t.image][t.y : t.y + t.h, t.x : t.x + t.w] for t in tiles])
        if self.compiled and len(tiles) < self.batch_size:  # keep the compiled shape
            crops = torch.cat([crops, crops.new_zeros((self.batch_size - len(tiles), *crops.shape[1:]))])
        x = crops.permute(0, 3, 1, 2).float().div_(255)  # (B,3,h,w)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self._raw.clear()
        with autocast(dev, self.precision):
            out = self._net(x)
        residual = self._raw.pop("residual", None)
        image, mask_logits = (out["image"], out.get("mask_logits")) if isinstance(out, dict) else (out, None)
        if self.harden_mask and mask_logits is not None:
            if isinstance(out, dict) and "raw_image" in out:
                image = out["raw_image"]
            elif residual is not None:
                image = x + residual.float()
        image = image.float()
        probs = torch.sigmoid(mask_logits.float()) if mask_logits is not None else None
        for k, t in enumerate(tiles):
            ph, pw = padded[t.image].shape[:2]
            win = self._window(t, ph, pw, windows)
            ys, xs = slice(t.y, t.y + t.h), slice(t.x, t.x + t.w)
            acc[t.image][:, ys, xs] += image[k] * win
            if probs is not None:
                if macc[t.image] is None:
                    macc[t.image] = torch.zeros(1, ph, pw, device=dev)
                macc[t.image][:, ys, xs] += probs[k] * win
