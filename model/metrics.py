"""Image-quality metrics as plain functions over numpy arrays (BasicSR style: every choice is an
explicit argument).

Images are HxWxC (or HxW) arrays: floats in [0, 1] with data_range=1.0, or uint8 with
data_range=255. Arithmetic is float64. `ssim` reproduces scikit-image's
`structural_similarity(a, b, data_range=…, channel_axis=-1)` (7×7 uniform window, sample
covariance, K1=0.01, K2=0.03, the window's half-width cropped before averaging, the mean over
channels).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import uniform_filter


def _pair(a, b, crop_border: int = 0) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if crop_border:
        a = a[crop_border:-crop_border, crop_border:-crop_border]
        b = b[crop_border:-crop_border, crop_border:-crop_border]
    return a, b


def psnr(a, b, mask=None, data_range: float = 1.0, crop_border: int = 0) -> float:
    """Peak signal-to-noise ratio in dB: 10·log10(data_range² / MSE).

    With `mask` (HxW or HxWx1, true where it counts) the MSE is taken over the masked pixels only
    (masked PSNR); an empty mask gives nan. Identical images give inf.
    """
    a, b = _pair(a, b, crop_border)
    sq = (a - b) ** 2
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if crop_border:
            m = m[crop_border:-crop_border, crop_border:-crop_border]
        if m.ndim == 3:
            m = m[..., 0]
        if m.shape != a.shape[:2]:
            raise ValueError(f"mask shape {m.shape} does not match image {a.shape[:2]}")
        if not m.any():
            return float("nan")
        sq = sq[m]  # (n_masked,) or (n_masked, C)
    mse = float(sq.mean())
    if mse == 0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def ssim_map(a, b, data_range: float = 1.0, win_size: int = 7) -> np.ndarray:
    """Per-pixel SSIM (HxW, averaged over channels), uncropped: what `ssim` averages."""
    a, b = _pair(a, b)
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    if min(a.shape[:2]) < win_size or win_size % 2 == 0:
        raise ValueError(f"win_size must be odd and at most the image's shorter side, got {win_size} for {a.shape}")
    np_ = win_size**2
    cov_norm = np_ / (np_ - 1)  # sample covariance, as skimage's default
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    maps = []
    for c in range(a.shape[2]):
        x, y = a[..., c], b[..., c]
        ux, uy = uniform_filter(x, win_size), uniform_filter(y, win_size)
        vx = cov_norm * (uniform_filter(x * x, win_size) - ux * ux)
        vy = cov_norm * (uniform_filter(y * y, win_size) - uy * uy)
        vxy = cov_norm * (uniform_filter(x * y, win_size) - ux * uy)
        maps.append(((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2)))
    return np.mean(maps, axis=0)


def ssim(a, b, data_range: float = 1.0, win_size: int = 7, crop_border: int = 0) -> float:
    """Mean structural similarity; equals skimage's `structural_similarity(a, b,
    data_range=data_range, channel_axis=-1)` for HxWxC input (no channel_axis for HxW)."""
    a, b = _pair(a, b, crop_border)
    pad = (win_size - 1) // 2
    s = ssim_map(a, b, data_range, win_size)
    return float(s[pad:s.shape[0] - pad, pad:s.shape[1] - pad].mean())


def local_psnr_map(a, b, window: int = 16, data_range: float = 1.0) -> np.ndarray:
    """PSNR of each pixel's window×window neighbourhood (HxW, dB; capped at 100 where identical)."""
    a, b = _pair(a, b)
    sq = (a - b) ** 2
    if sq.ndim == 3:
        sq = sq.mean(axis=2)
    mse = uniform_filter(sq, window, mode="reflect")
    return np.minimum(10.0 * np.log10(data_range**2 / np.maximum(mse, 1e-10)), 100.0)
