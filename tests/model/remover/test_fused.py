"""The fused CPU inference copy of the U-Net (model/remover/fused.py) and the engine's backend choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from model.remover.fused import FusedUNet, NotFusable, fold_batchnorm, fuse_unet
from model.remover.infer import Cleaner
from model.remover.network import UNet


def _unet(seed: int = 0, **config) -> UNet:
    """A U-Net whose every part matters: non-trivial BatchNorm statistics, a non-zero residual
    head and attention gain (a fresh UNet returns its input)."""
    torch.manual_seed(seed)
    net = UNet(**config)
    with torch.no_grad():
        net.head.weight.normal_(std=0.5)
        net.attention.gamma.fill_(0.7)
        if net.mask_out is not None:
            net.mask_out.weight.normal_(std=0.5)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.3, 3.0)
                m.weight.normal_(1, 0.2)
                m.bias.normal_(0, 0.2)
    return net.eval()


def _gradient(h, w):
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx / (w - 1), yy / (h - 1), (xx + yy) / (h + w - 2)], -1)
    return (img * 255).round().astype(np.uint8)


def test_fold_batchnorm_equals_conv_then_bn():
    conv, bn = nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6).eval()
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
        bn.weight.normal_()
        bn.bias.normal_()
    w, b = fold_batchnorm(conv, bn)
    x = torch.randn(2, 4, 9, 7)
    torch.testing.assert_close(nn.functional.conv2d(x, w, b, padding=1), bn(conv(x)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("config", [dict(base=8, depth=3), dict(base=8, depth=2, mask_head=True),
                                    dict(base=8, depth=3, mask_guided=True)])
@pytest.mark.parametrize("use_mkldnn", [True, False])
def test_fused_equals_the_plain_model_and_leaves_it_untouched(config, use_mkldnn):
    net = _unet(**config)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fused = fuse_unet(net, use_mkldnn=use_mkldnn)
    x = torch.rand(2, 3, 48, 80)
    with torch.inference_mode():
        a, b = net(x), fused(x.contiguous(memory_format=torch.channels_last))
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=2e-5, rtol=0)
    assert (a["image"] - x).abs().mean() > 0.01  # the network really changes the image
    if config.get("mask_guided"):  # the raw prediction is input + residual, before the blend
        assert not torch.allclose(b["raw_image"], b["image"])
    # the source model is a different object with the same weights, layout and mode as before
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not any(p is q for p in net.parameters() for q in fused.buffers())
    assert next(net.parameters()).is_contiguous()  # not converted to channels-last


def test_fuse_refuses_what_it_does_not_know():
    net = _unet(base=8, depth=2)
    with pytest.raises(NotFusable):
        FusedUNet(net.train())
    with pytest.raises(NotFusable):
        fuse_unet(nn.Sequential(nn.Conv2d(3, 3, 1)).eval())


class NotAUNet(nn.Module):
    size_multiple = 1

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return {"image": torch.sigmoid(self.conv(x))}


class ChangedUNet(UNet):
    """Same modules as a UNet, different forward: the fused copy (built from the modules) would
    not compute what this model computes, and the probe must notice."""

    def forward(self, x):
        out = super().forward(x)
        return {"image": out["image"] * 0.5}


def test_auto_picks_fused_only_where_it_is_real_and_verified():
    net = _unet(base=8, depth=2)
    assert Cleaner(net, device="cpu", tile=64, overlap=16, precision="fp32").backend == "fused"
    assert Cleaner(net, device="cpu", tile=64, overlap=16, precision="fp32", backend="eager").backend == "eager"
    assert Cleaner(net, device="cpu", tile=64, overlap=16, precision="bf16").backend == "eager"
    assert Cleaner(NotAUNet(), device="cpu", tile=64, overlap=16, precision="fp32").backend == "eager"
    changed = ChangedUNet(base=8, depth=2)
    changed.load_state_dict(net.state_dict())
    assert Cleaner(changed.eval(), device="cpu", tile=64, overlap=16, precision="fp32").backend == "eager"
    with pytest.raises(NotFusable):
        Cleaner(changed, device="cpu", tile=64, overlap=16, precision="fp32", backend="fused")
    with pytest.raises(NotFusable):
        Cleaner(NotAUNet(), device="cpu", tile=64, overlap=16, precision="fp32", backend="fused")
    with pytest.raises(ValueError):
        Cleaner(net, device="cpu", tile=64, overlap=16, precision="bf16", backend="fused")
    with pytest.raises(ValueError):
        Cleaner(net, device="cpu", tile=64, overlap=16, backend="onnx")


def test_fused_engine_matches_eager_on_tiles_with_hardened_mask():
    net = _unet(base=8, depth=3, mask_guided=True)
    imgs = [_gradient(70, 90), np.full((40, 33, 3), 200, np.uint8)]
    opts = dict(device="cpu", tile=48, overlap=16, precision="fp32", harden_mask=True)
    fused, eager = Cleaner(net, backend="fused", **opts), Cleaner(net, backend="eager", **opts)
    assert fused._hook is None  # the fused copy returns raw_image itself
    for a, b in zip(fused.clean(imgs), eager.clean(imgs), strict=True):
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1
        np.testing.assert_allclose(a.mask, b.mask, atol=1e-5)
    eager.close()


def test_fused_matches_eager_on_a_trained_remover(trained_tiny):
    """Equivalence on a network that has been trained (the tiny profile on real photos), so the
    BatchNorm statistics and weights are the ones training produces, not random ones."""
    net, img = trained_tiny
    eager = Cleaner(net, device="cpu", tile=64, overlap=16, precision="fp32", backend="eager").clean([img])[0]
    auto = Cleaner(net, device="cpu", tile=64, overlap=16, precision="fp32")
    assert auto.backend == "fused"
    fused = auto.clean([img])[0]
    diff = np.abs(eager.image.astype(int) - fused.image.astype(int))
    assert np.abs(eager.image.astype(int) - img.astype(int)).mean() > 0.5  # the trained net changes the image
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())
    np.testing.assert_allclose(fused.mask, eager.mask, atol=1e-4)
