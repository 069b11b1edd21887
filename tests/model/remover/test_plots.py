"""Every diagnostic figure renders from a (briefly trained) tiny model to a real, non-blank PNG."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from model.remover import plots
from model.remover.losses import RemovalLoss
from model.remover.network import UNet


@pytest.fixture(scope="module")
def scene():
    """A real photo (64×64), a watermarked copy (a semi-transparent white bar) and its mask."""
    clean = np.asarray(Image.fromarray(data.astronaut()).resize((64, 64), Image.BILINEAR))
    mask = np.zeros((64, 64), bool)
    mask[24:36, 8:56] = True
    marked = clean.copy()
    marked[mask] = (0.5 * marked[mask] + 0.5 * 255).astype(np.uint8)
    return clean, marked, mask


def _trained(scene, mask_head: bool) -> UNet:
    """A tiny U-Net after a few real training steps (so every layer, the heads included, is live)."""
    torch.manual_seed(0)
    clean, marked, mask = scene
    net = UNet(base=8, depth=3, mask_head=mask_head)
    loss_fn = RemovalLoss(vgg="off")
    x = torch.tensor(marked / 255.0, dtype=torch.float32).permute(2, 0, 1)[None]
    y = torch.tensor(clean / 255.0, dtype=torch.float32).permute(2, 0, 1)[None]
    m = torch.tensor(mask, dtype=torch.float32)[None, None]
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(3):
        out = net(x)
        total, _ = loss_fn(out["image"], y, m, out.get("mask_logits"))
        opt.zero_grad()
        total.backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def model(scene):
    return _trained(scene, mask_head=True)


def _assert_real_png(path, min_w=150, min_h=100):
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
        px = np.asarray(im.convert("RGB"), dtype=np.float64)
    assert w >= min_w and h >= min_h, (w, h)
    assert px.std() > 10, f"{path.name} is nearly blank"
    assert len(np.unique(px.reshape(-1, 3), axis=0)) > 64, f"{path.name} has almost no content"


def test_image_figures(tmp_path, scene):
    clean, marked, mask = scene
    cleaned = ((marked.astype(float) + clean) / 2).astype(np.uint8)
    history = [{"epoch": e, "l1": 0.1 / e, "perceptual": 0.2 / e, "ssim": 0.3 / e, "total": 0.7 / e,
                "lr": 1e-3 * e / 3, "val_psnr": 20 + e, "val_masked_psnr": 15 + e, "val_ssim": 0.8 + e / 100}
               for e in (1, 2, 3)]
    made = [
        plots.residual_histogram(cleaned, clean, tmp_path / "residual_histogram.png"),
        plots.quality_maps(cleaned / 255.0, clean / 255.0, tmp_path / "quality_maps.png"),
        plots.side_by_side({"watermarked": marked, "cleaned": cleaned, "clean": clean}, tmp_path / "side.png"),
        plots.watermark_residual(marked, cleaned, tmp_path / "wm_residual.png", mask=mask),
        plots.training_curves(history, tmp_path / "curves.png"),
        plots.lr_schedule([1e-4 + 1e-3 * np.sin(i / 30) ** 2 for i in range(100)], tmp_path / "lr_steps.png"),
        plots.lr_schedule(history, tmp_path / "lr_epochs.png"),
    ]
    for path in made:
        _assert_real_png(path)


@pytest.mark.parametrize("figure", ["attention_gate_maps", "activations", "decoder_feature_maps",
                                    "gradient_saliency"])
def test_network_figures(tmp_path, scene, model, figure):
    _, marked, _ = scene
    odd = marked[:60, :52]  # not a multiple of the network's size: padded inside
    path = getattr(plots, figure)(model, odd, tmp_path / f"{figure}.png")
    _assert_real_png(path)
    assert model.training is False and all(not m._forward_hooks for m in model.modules())  # hooks removed


def test_first_layer_kernels(tmp_path, model):
    _assert_real_png(plots.first_layer_kernels(model, tmp_path / "kernels.png"))


def test_saliency_without_a_mask_head(tmp_path, scene):
    _, marked, _ = scene
    _assert_real_png(plots.gradient_saliency(_trained(scene, mask_head=False), marked, tmp_path / "sal.png"))


def test_a_part_the_network_lacks_is_not_applicable(tmp_path, scene):
    """A locate-then-restore remover has no gates of its own: the figure names the trunk to read."""
    from model.remover.locate import LocateRestore

    _, marked, _ = scene
    net = LocateRestore(base=8, depth=2, loc_base=8, loc_depth=2, view=32).eval()
    with pytest.raises(plots.NotApplicable, match="LocateRestore has no gates"):
        plots.attention_gate_maps(net, marked, tmp_path / "gates.png")
    with pytest.raises(plots.NotApplicable, match="no localiser"):
        plots.localiser_maps(UNet(base=8, depth=2), marked, tmp_path / "loc.png")
    assert not (tmp_path / "gates.png").exists()
    _assert_real_png(plots.attention_gate_maps(net, marked, tmp_path / "gates.png", trunk=net.restorer.trunk))
    assert all(not m._forward_hooks for m in net.modules())


def test_saliency_of_a_locate_restore_remover_that_marks_something(tmp_path, scene):
    """At inference the restorer runs on the marked box without a graph; the saliency figure must
    still reach the input's gradient when the localiser marks pixels (a trained remover does)."""
    from model.remover.locate import LocateRestore

    _, marked, _ = scene
    net = LocateRestore(base=8, depth=2, loc_base=8, loc_depth=2, view=32).eval()
    with torch.no_grad():
        net.localiser.out.bias[0] = 4.0  # every pixel marked: the box is the whole image
    _assert_real_png(plots.gradient_saliency(net, marked, tmp_path / "sal.png"))
    assert net.restore_everywhere is False and not net.training
