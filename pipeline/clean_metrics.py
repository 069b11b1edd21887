"""What the clean step writes for each image: the encoded output and mask, and the metrics of
a cleaning (fidelity to the input with no ground truth, and, for real pairs, against the clean
copy)."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
from PIL import Image as PILImage
from scipy.ndimage import binary_dilation

from model.metrics import psnr, ssim, ssim_map

PSNR_CAP = 100.0
SSIM_WINDOW = 7


def encode_output(rgb: np.ndarray, alpha: np.ndarray | None, output_format: str) -> bytes:
    """PNG (lossless) or JPEG quality 95; an image with alpha is always PNG (JPEG has no alpha)."""
    fmt = output_format.lower()
    if fmt not in ("png", "jpeg", "jpg"):
        raise ValueError(f"output_format must be png or jpeg, not {output_format!r}")
    buf = io.BytesIO()
    if alpha is not None:
        PILImage.fromarray(np.dstack([rgb, alpha]), "RGBA").save(buf, "PNG")
    elif fmt == "png":
        PILImage.fromarray(rgb, "RGB").save(buf, "PNG")
    else:
        PILImage.fromarray(rgb, "RGB").save(buf, "JPEG", quality=95)
    return buf.getvalue()


def encode_mask(mask: np.ndarray) -> bytes:
    """The predicted mark probability (HxW in [0, 1]) as an 8-bit greyscale PNG (255: a mark)."""
    buf = io.BytesIO()
    PILImage.fromarray(np.clip(np.rint(mask * 255.0), 0, 255).astype(np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()


def _finite(x: float | None, cap: float = PSNR_CAP) -> float | None:
    if x is None or math.isnan(x):
        return None
    return min(float(x), cap)


def _ssim_where(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float | None:
    """Mean SSIM (uint8 images) over the pixels in ``where`` (None if empty or the image is tiny)."""
    if min(a.shape[:2]) < SSIM_WINDOW or not where.any():
        return None
    return float(ssim_map(a, b, data_range=255, win_size=SSIM_WINDOW)[where].mean())


def cleaning_metrics(inp: np.ndarray, out: np.ndarray, mask: np.ndarray | None, threshold: int) -> dict[str, Any]:
    """Fidelity of a cleaning with no ground truth: how much changed, and how faithfully the rest
    was kept (``psnr_vs_input``/``ssim_vs_input`` outside the changed region)."""
    diff = np.abs(out.astype(np.int16) - inp.astype(np.int16)).max(axis=2)
    changed = diff > threshold
    keep = ~changed
    keep_ssim = ~binary_dilation(changed, iterations=SSIM_WINDOW // 2) if changed.any() else keep
    m: dict[str, Any] = {
        "changed_fraction": float(changed.mean()),
        "psnr_vs_input": _finite(psnr(inp, out, mask=keep, data_range=255)) if keep.any() else None,
        "ssim_vs_input": _ssim_where(inp, out, keep_ssim),
        "mean_residual": float(np.abs(out.astype(np.float32) - inp.astype(np.float32)).mean() / 255.0),
        "max_residual": int(diff.max()),
    }
    if mask is not None:
        m["mask_area"] = float((mask > 0.5).mean())
        m["mask_mean"] = float(mask.mean())
    return m


def versus_clean(inp: np.ndarray, out: np.ndarray, clean: np.ndarray) -> dict[str, float | None]:
    """Real ground truth: output and input (the baseline) against the clean copy."""
    ok = min(inp.shape[:2]) >= SSIM_WINDOW
    return {
        "psnr": _finite(psnr(out, clean, data_range=255)),
        "ssim": float(ssim(out, clean, data_range=255)) if ok else None,
        "input_psnr": _finite(psnr(inp, clean, data_range=255)),
        "input_ssim": float(ssim(inp, clean, data_range=255)) if ok else None,
    }
