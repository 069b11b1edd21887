"""The int8 inference copy of the U-Net (model/remover/quant.py) and how the engine chooses it."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

import model.remover.infer
import model.remover.quant
from model.remover.infer import Cleaner
from model.remover.quant import NotQuantizable, int8_unavailable, quantized_unet
from tests.model.remover.test_fused import _unet

needs_int8 = pytest.mark.skipif(int8_unavailable() is not None, reason=f"int8 backend unavailable: {int8_unavailable()}")


def _photo(h: int, w: int) -> np.ndarray:
    """A real photo (the probe photo's neighbour, so not the calibration set), resized."""
    import skimage.data as sd
    from PIL import Image

    return np.array(Image.fromarray(sd.chelsea()).resize((w, h), Image.BILINEAR))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * math.log10(255**2 / mse)


@needs_int8
@pytest.mark.parametrize("config", [dict(base=8, depth=3), dict(base=8, depth=3, mask_guided=True)])
def test_int8_engine_is_close_to_fp32_and_leaves_the_model_untouched(config):
    net = _unet(**config)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    img = _photo(90, 120)
    opts = dict(device="cpu", tile=64, overlap=16, precision="fp32", harden_mask=bool(config.get("mask_guided")))
    int8, fused = Cleaner(net, backend="int8", **opts), Cleaner(net, backend="fused", **opts)
    assert int8.backend == "int8" and int8._hook is None  # the int8 copy returns raw_image itself
    a, b = int8.clean([img])[0], fused.clean([img])[0]
    assert a.image.shape == img.shape
    assert np.abs(b.image.astype(int) - img.astype(int)).mean() > 2  # the network changes the image
    assert _psnr(a.image, b.image) >= 40, _psnr(a.image, b.image)
    if b.mask is not None:
        assert np.abs(a.mask - b.mask).mean() < 0.01
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


@needs_int8
def test_int8_tiles_leave_no_seams():
    """Tiled int8 output vs the int8 copy over the whole image in one tile: the blend hides the
    tile edges as it does in fp32 (quantization is per tensor with fixed scales, so a tile is
    quantized the same wherever it sits)."""
    net = _unet(base=8, depth=3)
    img = _photo(96, 128)
    whole = Cleaner(net, device="cpu", tile=128, overlap=0, precision="fp32", backend="int8").clean([img])[0]
    tiled = Cleaner(net, device="cpu", tile=48, overlap=16, precision="fp32", backend="int8").clean([img])[0]
    diff = np.abs(whole.image.astype(int) - tiled.image.astype(int))
    assert diff.max() <= 3 and diff.mean() < 0.3, (diff.max(), diff.mean())


@needs_int8
def test_int8_copy_is_cached_per_model_and_weights():
    net = _unet(base=8, depth=2)
    q = quantized_unet(net)
    assert quantized_unet(net) is q
    with torch.no_grad():
        net.head.weight.mul_(0.5)  # new weights: a new calibration
    assert quantized_unet(net) is not q


def test_auto_falls_back_to_fused_with_a_log_line(monkeypatch, caplog):
    opts = dict(device="cpu", tile=64, overlap=16, precision="fp32")
    monkeypatch.setattr(model.remover.infer, "int8_unavailable", lambda: None)  # as on a VNNI CPU, whatever this one is
    with caplog.at_level(logging.INFO, logger="model.remover.infer"):
        assert Cleaner(_unet(base=8, depth=2), **opts).backend == "fused"  # too narrow to be worth it
    assert "int8 backend not used: network width 8 < 16" in caplog.text
    caplog.clear()
    monkeypatch.setattr(model.remover.quant, "int8_unavailable", lambda: "no VNNI here (test)")
    monkeypatch.setattr(model.remover.infer, "int8_unavailable", lambda: "no VNNI here (test)")
    wide = _unet(base=16, depth=2)
    with caplog.at_level(logging.INFO, logger="model.remover.infer"):
        auto = Cleaner(wide, **opts)
    assert auto.backend == "fused" and "int8 backend not used: no VNNI here (test)" in caplog.text
    with pytest.raises(NotQuantizable, match="no VNNI"):
        Cleaner(wide, backend="int8", **opts)
    with pytest.raises(ValueError, match="int8 backend runs on the CPU in fp32"):
        Cleaner(wide, device="cpu", tile=64, overlap=16, precision="bf16", backend="int8")


@needs_int8
def test_auto_judges_int8_once_per_model(caplog):
    """A network wide enough gets the real decision (machine-dependent: int8 when faster here);
    a second Cleaner for the same network reuses it without recalibrating."""
    net = _unet(base=16, depth=2)
    opts = dict(device="cpu", tile=64, overlap=16, precision="fp32")
    with caplog.at_level(logging.INFO, logger="model.remover.infer"):
        first = Cleaner(net, **opts)
    assert first.backend in ("int8", "fused")
    assert "cheaper than fused on a 64² probe tile" in caplog.text
    second = Cleaner(net, **opts)
    assert second.backend == first.backend and second._net is first._net or first.backend == "fused"
    img = _photo(70, 90)
    eager = Cleaner(net, backend="eager", **opts).clean([img])[0]
    assert _psnr(first.clean([img])[0].image, eager.image) >= 40
