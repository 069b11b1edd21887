"""The removal loss: each term, the VGG weight choices (ImageNet file from the torch cache,
seeded random, off), and the fast perceptual path against the naive one."""

from __future__ import annotations

import logging

import pytest
import torch
from torchvision.models.vgg import cfgs, make_layers

from model.remover.losses import (
    VGG16_FILE,
    PerceptualLoss,
    RemovalLoss,
    VGGWeightsMissing,
    dice_loss,
    load_vgg16_features,
    masked_l1,
    vgg16_relu3_3,
)


def _images(b=2, size=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    target = torch.rand(b, 3, size, size, generator=gen)
    mask = torch.zeros(b, 1, size, size)
    mask[:, :, size // 4 : size // 2, size // 4 :] = 1
    pred = (target + 0.3 * mask * torch.rand(b, 3, size, size, generator=gen)).clamp(0, 1)
    return pred, target, mask


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def _write_fake_torchvision_vgg16(torch_home, seed=0):
    """A file with torchvision VGG16's exact keys and shapes: the conv stack really built by
    torchvision (`make_layers(cfgs["D"])`, random weights), the 120 M-parameter classifier as
    zero-stride views of one number each (same keys and shapes, a few bytes on disk)."""
    torch.manual_seed(seed)
    features = make_layers(cfgs["D"])
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    for name, shape in [("0", (4096, 25088)), ("3", (4096, 4096)), ("6", (1000, 4096))]:
        state[f"classifier.{name}.weight"] = torch.zeros(1).expand(*shape)
        state[f"classifier.{name}.bias"] = torch.zeros(1).expand(shape[0])
    path = torch_home / "hub" / "checkpoints" / VGG16_FILE
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return path, features


def test_truncated_vgg_matches_torchvision_layout():
    ours = vgg16_relu3_3().state_dict()
    theirs = make_layers(cfgs["D"])[:16].state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    assert sum(v.numel() for v in ours.values()) == 1_735_488


def test_imagenet_weights_load_from_the_torch_cache(torch_home, caplog):
    path, features = _write_fake_torchvision_vgg16(torch_home)
    with caplog.at_level(logging.WARNING, logger="model.remover.losses"):
        loss = RemovalLoss(vgg="imagenet")
    assert str(path) in loss.vgg_source and loss.config["vgg"] == "imagenet"
    assert "imagenet" in caplog.text and str(path) in caplog.text
    net = loss.perceptual.features
    assert all(not p.requires_grad for p in net.parameters())
    # exactly torchvision's features[:16] with the file's weights, layer for layer
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x), features[:16].eval()(x), atol=1e-5)


def test_imagenet_weights_missing_stops_with_a_way_out(torch_home):
    with pytest.raises(VGGWeightsMissing) as err:
        RemovalLoss(vgg="imagenet")
    msg = str(err.value)
    assert str(torch_home / "hub" / "checkpoints" / VGG16_FILE) in msg
    assert "TORCH_HOME" in msg and "'random'" in msg and "'off'" in msg
    assert not (torch_home / "hub" / "checkpoints" / VGG16_FILE).exists()  # nothing was fetched


def test_a_file_that_is_not_vgg16_is_refused(torch_home):
    path = torch_home / "hub" / "checkpoints" / VGG16_FILE
    path.parent.mkdir(parents=True)
    torch.save({"features.0.weight": torch.zeros(8, 3, 3, 3)}, path)
    with pytest.raises(ValueError, match="not torchvision's VGG16"):
        load_vgg16_features("imagenet")


def test_random_vgg_is_seeded_and_recorded(caplog):
    with caplog.at_level(logging.WARNING, logger="model.remover.losses"):
        a = RemovalLoss(vgg="random", vgg_seed=7)
    assert "random (seed 7)" in caplog.text and a.config["vgg_source"] == "random (seed 7)"
    b = RemovalLoss(vgg="random", vgg_seed=7)
    c = RemovalLoss(vgg="random", vgg_seed=8)
    wa, wb, wc = (m.perceptual.features[0].weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_off_drops_the_term():
    loss = RemovalLoss(vgg="off")
    pred, target, mask = _images()
    _, terms = loss(pred, target, mask)
    assert "perceptual" not in terms and loss.perceptual is None and loss.vgg_source == "off"
    with pytest.raises(ValueError):
        RemovalLoss(vgg="resnet")


def test_total_is_the_weighted_sum_and_every_term_has_gradients():
    loss = RemovalLoss(l1=1.0, perceptual=0.3, lab=0.3, ssim=0.4, edge=0.1, mask_bce=0.5, mask_dice=0.25,
                       vgg="random")
    pred, target, mask = _images()
    pred.requires_grad_(True)
    logits = torch.randn(2, 1, 32, 32, requires_grad=True)
    total, terms = loss(pred, target, mask, logits)
    assert set(terms) == {"l1", "perceptual", "lab", "ssim", "edge", "mask_bce", "mask_dice", "total"}
    expect = sum(loss.weights[k] * v for k, v in terms.items() if k != "total")
    assert terms["total"] == pytest.approx(expect, rel=1e-6) and total.item() == pytest.approx(expect, rel=1e-6)
    for name in ("l1", "perceptual", "lab", "ssim", "edge"):
        only = RemovalLoss(**{k: float(k == name) for k in loss.weights}, vgg="random")
        p = pred.detach().clone().requires_grad_(True)
        t, parts = only(p, target, mask)
        t.backward()
        assert set(parts) == {name, "total"} and p.grad.abs().sum() > 0, name
    total.backward()
    assert logits.grad.abs().sum() > 0
    assert loss(pred, target, mask)[1].keys().isdisjoint({"mask_bce", "mask_dice"})  # no logits, no mask terms


def test_perfect_prediction_costs_nothing():
    loss = RemovalLoss(vgg="random")
    _, target, mask = _images()
    logits = (mask * 2 - 1) * 50
    _, terms = loss(target.clone(), target, mask, logits)
    for k, v in terms.items():
        assert v == pytest.approx(0.0, abs=1e-4), k


def test_loss_is_float32_under_bf16_autocast():
    loss = RemovalLoss(vgg="random")
    pred, target, mask = _images()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, _ = loss(pred.bfloat16(), target, mask)
    assert total.dtype == torch.float32


def test_masked_l1_weights_marked_pixels():
    target = torch.zeros(1, 3, 4, 4)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 0, 0] = 1
    inside = target.clone()
    inside[..., 0, 0] = 1
    outside = target.clone()
    outside[..., 3, 3] = 1
    a, b = masked_l1(inside, target, mask, 4.0), masked_l1(outside, target, mask, 4.0)
    assert a.item() == pytest.approx(5 * b.item())
    assert b.item() == pytest.approx(3 / (3 * (16 + 4)))  # weighted mean: weights sum to 16 + 4 per channel
    assert masked_l1(inside, target, None).item() == pytest.approx(masked_l1(outside, target, None).item())


def test_dice_of_a_perfect_mask_is_zero_and_of_an_inverted_one_is_high():
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, :4] = 1
    assert dice_loss((mask * 2 - 1) * 50, mask).item() == pytest.approx(0, abs=1e-3)
    assert dice_loss((1 - 2 * mask) * 50, mask).item() > 0.9


def test_fast_perceptual_equals_the_naive_one():
    torch.manual_seed(0)
    pl = PerceptualLoss("random", seed=0, bf16=False)
    pred, target, _ = _images(b=2, size=48)
    p1 = pred.clone().requires_grad_(True)
    p2 = pred.clone().requires_grad_(True)
    fast, naive = pl(p1, target), pl.naive(p2, target)
    fast.backward()
    naive.backward()
    assert fast.item() == pytest.approx(naive.item(), rel=1e-5)
    assert torch.allclose(p1.grad, p2.grad, rtol=1e-4, atol=1e-9)
    # bf16 (used where the CPU has native bf16, and on CUDA): same value to bf16 rounding
    pl.bf16 = True
    p3 = pred.clone().requires_grad_(True)
    fast16 = pl(p3, target)
    fast16.backward()
    assert fast16.dtype == torch.float32
    assert fast16.item() == pytest.approx(naive.item(), rel=2e-2)
    cos = torch.nn.functional.cosine_similarity(p3.grad.flatten(), p2.grad.flatten(), dim=0)
    assert cos > 0.98
