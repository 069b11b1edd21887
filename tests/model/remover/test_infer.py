"""The tiled inference engine, checked against networks whose exact answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from model.remover.infer import Cleaner
from model.remover.tiles import axis_tiles, axis_window, edge_ramp


class Identity(nn.Module):
    size_multiple = 16

    def forward(self, x):
        return {"image": x}


class FixedConv(nn.Module):
    """Three 3×3 convolutions with fixed weights: receptive radius 3 px, so with an overlap whose
    dead quarter is ≥ 3 px the tiled result must equal the whole-image result."""

    size_multiple = 1

    def __init__(self, mask_head: bool = False):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.convs = nn.ModuleList([nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)])
        for c in self.convs:
            nn.init.normal_(c.weight, std=0.3, generator=g)
            nn.init.normal_(c.bias, std=0.1, generator=g)
        self.mask_head = mask_head

    def forward(self, x):
        h = torch.tanh(self.convs[0](x))
        h = torch.tanh(self.convs[1](h))
        h = self.convs[2](h)
        out = {"image": torch.sigmoid(h[:, :3] + (x - 0.5) * 3)}
        if self.mask_head:
            out["mask_logits"] = h[:, 3:4]
        return out


class Downsampling(nn.Module):
    """Pool by 8 and upsample back: needs H, W divisible by 8 (callers must pad)."""

    size_multiple = 8

    def forward(self, x):
        assert x.shape[-1] % 8 == 0 and x.shape[-2] % 8 == 0, x.shape
        low = nn.functional.avg_pool2d(x, 8)
        return nn.functional.interpolate(low, scale_factor=8, mode="nearest") * 0 + x


def _gradient(h, w):
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx / (w - 1), yy / (h - 1), (xx + yy) / (h + w - 2)], -1)
    return (img * 255).round().astype(np.uint8)


def _whole(model, img, precision="fp32"):
    """The untiled answer: one tile covering the whole image."""
    big = max(img.shape[:2]) + 64
    return Cleaner(model, device="cpu", tile=big, overlap=0, precision=precision).clean([img])[0]


def test_ramps_sum_to_one_and_have_a_dead_margin():
    r = edge_ramp(64)
    assert r.shape == (64,)
    np.testing.assert_allclose(r + r[::-1], 1.0, atol=1e-6)
    assert (r[:16] == 0).all() and (r[-16:] == 1).all()
    # a window ramps only where the tile has a neighbour
    w = axis_window(100, 0, 100, 32)
    assert (w == 1).all()
    w = axis_window(100, 50, 300, 32)
    assert w[0] == 0 and w[-1] == 0 and w[50] == 1


@pytest.mark.parametrize("even", [True, False])
@pytest.mark.parametrize("length", [1, 15, 64, 65, 100, 511, 1024, 4000])
def test_tiles_cover_the_axis_with_the_overlap(length, even):
    tile, starts = axis_tiles(length, 256, 64, 16, even)
    assert tile % 16 == 0 and tile <= max(256, -(-length // 16) * 16)
    if length <= 256:
        assert starts == [0] and tile >= length
        return
    assert starts[0] == 0 and starts[-1] + tile == length
    for a, b in zip(starts, starts[1:], strict=False):
        assert a + tile - b >= 64  # at least `overlap` of overlap between neighbours
    covered = np.zeros(length)
    for s in starts:
        covered[s : s + tile] += axis_window(tile, s, length, 64)
    assert covered.min() > 0.99  # complementary ramps: every pixel fully weighted


@pytest.mark.parametrize("shape", [(1, 1), (7, 300), (64, 64), (100, 130), (257, 129)])
def test_identity_returns_the_input_exactly_at_its_size(shape):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    res = Cleaner(Identity(), device="cpu", tile=48, overlap=16, precision="fp32").clean([img])[0]
    assert res.image.shape == img.shape and res.image.dtype == np.uint8
    np.testing.assert_array_equal(res.image, img)
    assert res.mask is None


def test_padding_to_the_size_multiple():
    img = _gradient(37, 53)
    res = Cleaner(Downsampling(), device="cpu", tile=32, overlap=8, precision="fp32").clean([img])[0]
    np.testing.assert_array_equal(res.image, img)


@pytest.mark.parametrize("even", [True, False])
def test_no_seams_constant_and_gradient(even):
    model = FixedConv()
    tiler = Cleaner(model, device="cpu", tile=40, overlap=16, precision="fp32", even_tiles=even)
    assert len(tiler.plan(90, 150)[2]) > 4  # really tiled

    const = np.full((90, 150, 3), 120, dtype=np.uint8)
    out = tiler.clean([const])[0].image.astype(int)
    # away from the image border (where the network sees its own zero padding) a constant input
    # gives one constant output: any seam would show as a step
    inner = out[4:-4, 4:-4]
    assert (inner == inner[0, 0]).all()
    np.testing.assert_array_equal(out, _whole(model, const).image)

    grad = _gradient(90, 150)
    tiled = tiler.clean([grad])[0].image.astype(int)
    whole = _whole(model, grad).image.astype(int)
    diff = np.abs(tiled - whole)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # float rounding only


def test_mask_head_is_blended_like_the_image():
    model = FixedConv(mask_head=True)
    img = _gradient(70, 90)
    tiled = Cleaner(model, device="cpu", tile=32, overlap=16, precision="fp32").clean([img])[0]
    whole = _whole(model, img)
    assert tiled.mask.shape == (70, 90) and tiled.mask.dtype == np.float32
    assert 0 <= tiled.mask.min() and tiled.mask.max() <= 1
    np.testing.assert_allclose(tiled.mask, whole.mask, atol=1e-5)


def test_tiles_of_several_images_batch_together_with_the_same_answer():
    model = FixedConv()
    rng = np.random.default_rng(2)
    imgs = [rng.integers(0, 256, s, dtype=np.uint8) for s in [(60, 80, 3), (60, 80, 3), (33, 120, 3), (16, 16, 3)]]
    batched = Cleaner(model, device="cpu", tile=32, overlap=8, batch_size=7, precision="fp32").clean(imgs)
    single = [Cleaner(model, device="cpu", tile=32, overlap=8, batch_size=1, precision="fp32").clean([im])[0] for im in imgs]
    assert [r.image.shape for r in batched] == [im.shape for im in imgs]
    for a, b in zip(batched, single, strict=True):
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1
    assert all(r.seconds > 0 for r in batched)


def test_bf16_is_close_to_fp32():
    model = FixedConv()
    img = _gradient(64, 96)
    a = Cleaner(model, device="cpu", tile=64, overlap=16, precision="fp32").clean([img])[0].image.astype(int)
    b = Cleaner(model, device="cpu", tile=64, overlap=16, precision="bf16").clean([img])[0].image.astype(int)
    assert np.abs(a - b).mean() < 2.0


def test_rejects_wrong_inputs():
    c = Cleaner(Identity(), device="cpu", tile=32, overlap=8)
    with pytest.raises(ValueError):
        c.clean([np.zeros((10, 10), dtype=np.uint8)])
    with pytest.raises(ValueError):
        c.clean([np.zeros((10, 10, 3), dtype=np.float32)])
    with pytest.raises(ValueError):
        Cleaner(Identity(), device="cpu", tile=8)  # below the size multiple
    assert c.clean([]) == []


class RawAndMask(nn.Module):
    """Raw prediction = the inverted input; mask = a fixed rectangle (logits ±10)."""

    size_multiple = 1

    def forward(self, x):
        logits = torch.full_like(x[:, :1], -10.0)
        logits[..., 10:20, 15:40] = 10.0
        return {"image": x * 0.5, "raw_image": 1 - x, "mask_logits": logits}


def test_read_only_input_is_cleaned_without_warnings_and_left_as_it_was():
    """``np.asarray(PIL image)`` is read-only; the engine shares writable arrays with torch on the
    CPU, so it must copy this one (torch warns when it is given a read-only array)."""
    import warnings

    img = _gradient(48, 64)
    frozen = img.copy()
    frozen.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = Cleaner(RawAndMask(), device="cpu", tile=32, overlap=8, precision="fp32", harden_mask=True).clean([frozen])
    ref = Cleaner(RawAndMask(), device="cpu", tile=32, overlap=8, precision="fp32", harden_mask=True).clean([img])
    np.testing.assert_array_equal(res[0].image, ref[0].image)
    np.testing.assert_array_equal(frozen, img)  # the caller's image is untouched


def test_hardened_mask_copies_clean_pixels_exactly():
    img = _gradient(48, 64)
    res = Cleaner(RawAndMask(), device="cpu", tile=64, overlap=0, precision="fp32", harden_mask=True).clean([img])[0]
    hard = np.zeros((48, 64), bool)
    hard[9:21, 14:41] = True  # the rectangle dilated by one pixel
    np.testing.assert_array_equal(res.image[~hard], img[~hard])
    np.testing.assert_array_equal(res.image[hard], 255 - img[hard])
    soft = Cleaner(RawAndMask(), device="cpu", tile=64, overlap=0, precision="fp32").clean([img])[0]
    assert np.abs(soft.image.astype(int) - (img // 2)).max() <= 1  # without hardening: the model's image


def test_hardened_unet_matches_the_evaluation_predict():
    from model.remover.evaluate import predict
    from model.remover.network import UNet

    torch.manual_seed(0)
    net = UNet(base=4, depth=2, mask_guided=True).eval()
    with torch.no_grad():
        net.head.weight.normal_(std=0.5)
        net.mask_out.weight.normal_(std=0.5)
    img = _gradient(32, 48)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():  # centre the mask logits so that about half the pixels are "marked"
        net.mask_out.bias -= net(x)["mask_logits"].median()
    ref = (predict(net, x, harden_mask=True)["image"][0].permute(1, 2, 0).numpy() * 255).round().astype(int)
    got = Cleaner(net, device="cpu", tile=64, overlap=0, precision="fp32", harden_mask=True).clean([img])[0]
    assert 0 < (got.mask > 0.5).mean() < 1  # the mask really splits the image
    assert np.abs(got.image.astype(int) - ref).max() <= 1


def test_compiled_engine_keeps_one_shape_and_the_answer():
    """torch.compile path: fixed tiles, small images padded up to a tile, short batches padded;
    the result equals the eager engine's."""
    import torch._dynamo

    torch._dynamo.reset()
    model = FixedConv()
    shapes = []
    hook = model.convs[0].register_forward_pre_hook(lambda _m, a: shapes.append(tuple(a[0].shape)))
    imgs = [_gradient(70, 90), _gradient(20, 30), np.full((33, 47, 3), 77, np.uint8)]
    compiled = Cleaner(model, device="cpu", tile=32, overlap=8, batch_size=3, precision="fp32", compile=True)
    got = compiled.clean(imgs)
    hook.remove()
    eager = Cleaner(model, device="cpu", tile=32, overlap=8, batch_size=3, precision="fp32", even_tiles=False).clean(imgs)
    assert [g.image.shape for g in got] == [im.shape for im in imgs]
    for a, b in zip(got, eager, strict=True):
        # small images are padded to a whole tile (reflection), so the last 3 px (the receptive
        # radius) see other context than the eager engine's; everything else is the same answer
        assert np.abs(a.image[:-3, :-3].astype(int) - b.image[:-3, :-3].astype(int)).max() <= 1
    assert np.abs(got[0].image.astype(int) - eager[0].image.astype(int)).max() <= 1  # larger than a tile
    # the hook runs once per traced shape at most; every shape it saw is the one compiled shape
    assert set(shapes) <= {(3, 3, 32, 32)}
    with pytest.raises(ValueError):
        Cleaner(model, device="cpu", tile=32, compile=True, even_tiles=True)


def test_bf16_error_is_small_on_a_trained_remover(trained_tiny):
    """The precision ``auto`` picks on CUDA and on bf16 CPUs, checked on a network that has been
    trained (the tiny profile on real photos), not only on random weights."""
    net, img = trained_tiny
    a = Cleaner(net, device="cpu", tile=64, overlap=16, precision="fp32").clean([img])[0]
    b = Cleaner(net, device="cpu", tile=64, overlap=16, precision="bf16").clean([img])[0]
    diff = np.abs(a.image.astype(int) - b.image.astype(int))
    assert np.abs(a.image.astype(int) - img.astype(int)).mean() > 0.5  # the trained net changes the image
    assert diff.mean() < 1.0 and diff.max() <= 16, (diff.mean(), diff.max())
    assert np.abs(a.mask - b.mask).max() < 0.05
