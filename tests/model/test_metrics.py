"""PSNR, masked PSNR and SSIM against known values and against scikit-image."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from model.metrics import local_psnr_map, psnr, ssim, ssim_map


@pytest.fixture(scope="module")
def photo():
    return data.astronaut()[100:228, 150:278]  # 128×128×3 uint8, a real photo


def test_psnr_known_values():
    a = np.zeros((8, 8, 3))
    assert psnr(a, a + 0.1) == pytest.approx(20.0)  # MSE 0.01
    assert psnr(a, a + 0.01) == pytest.approx(40.0)
    u = np.zeros((8, 8, 3), np.uint8)
    assert psnr(u, u + 255, data_range=255) == pytest.approx(0.0)
    assert psnr(u, u + 1, data_range=255) == pytest.approx(20 * math.log10(255))
    assert psnr(a, a) == math.inf


def test_masked_psnr_counts_only_the_mask():
    a = np.zeros((10, 10, 3))
    b = a.copy()
    b[:2, :5] = 0.1  # the whole error sits in a 2×5 patch
    mask = np.zeros((10, 10), bool)
    mask[:2, :5] = True
    assert psnr(a, b, mask=mask) == pytest.approx(20.0)
    assert psnr(a, b) == pytest.approx(20.0 + 10 * math.log10(10))  # error spread over 10× the pixels
    assert psnr(a, b, mask=mask[..., None]) == pytest.approx(20.0)
    assert psnr(a, b, mask=~mask) == math.inf
    assert math.isnan(psnr(a, b, mask=np.zeros((10, 10), bool)))
    with pytest.raises(ValueError):
        psnr(a, b, mask=np.ones((5, 5), bool))


def test_psnr_matches_skimage(photo):
    rng = np.random.default_rng(0)
    noisy = np.clip(photo + rng.normal(0, 8, photo.shape), 0, 255).astype(np.uint8)
    assert psnr(photo, noisy, data_range=255) == pytest.approx(
        peak_signal_noise_ratio(photo, noisy, data_range=255), abs=1e-9)
    a, b = photo / 255.0, noisy / 255.0
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1), abs=1e-9)


@pytest.mark.parametrize("sigma", [0.02, 0.1, 0.3])
def test_ssim_matches_skimage_float(photo, sigma):
    rng = np.random.default_rng(1)
    a = photo / 255.0
    b = np.clip(a + rng.normal(0, sigma, a.shape), 0, 1)
    ref = structural_similarity(a, b, data_range=1, channel_axis=-1)
    assert ssim(a, b) == pytest.approx(ref, abs=1e-10)


def test_ssim_matches_skimage_uint8_grey_and_crop(photo):
    rng = np.random.default_rng(2)
    noisy = np.clip(photo + rng.normal(0, 20, photo.shape), 0, 255).astype(np.uint8)
    ref = structural_similarity(photo, noisy, data_range=255, channel_axis=-1)
    assert ssim(photo, noisy, data_range=255) == pytest.approx(ref, abs=1e-10)
    g1, g2 = photo[..., 0] / 255.0, noisy[..., 0] / 255.0
    assert ssim(g1, g2) == pytest.approx(structural_similarity(g1, g2, data_range=1), abs=1e-10)
    assert ssim(g1, g2, crop_border=4) == pytest.approx(
        structural_similarity(g1[4:-4, 4:-4], g2[4:-4, 4:-4], data_range=1), abs=1e-10)


def test_ssim_of_identical_and_of_unrelated_images(photo):
    a = photo / 255.0
    assert ssim(a, a) == pytest.approx(1.0)
    other = data.coffee()[:128, :128] / 255.0
    assert ssim(a, other) < 0.3
    m = ssim_map(a, a)
    assert m.shape == (128, 128) and np.allclose(m, 1.0)


def test_local_psnr_map_of_uniform_error_is_the_global_psnr():
    a = np.zeros((32, 32, 3))
    m = local_psnr_map(a, a + 0.1, window=8)
    assert m.shape == (32, 32) and np.allclose(m, 20.0)
    b = a.copy()
    b[:8, :8] = 0.5
    m = local_psnr_map(a, b, window=8)
    assert m[2, 2] < 10 and m[-1, -1] == 100.0  # identical neighbourhoods are capped, not inf
