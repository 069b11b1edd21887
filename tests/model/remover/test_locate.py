"""Locate, then restore (model.remover.locate): the inversion, the whole-image contract, checkpoints,
tiled restore at inference, and that the localiser's loss teaches it where the mark is."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.remover import locate
from model.remover.evaluate import evaluate_pairs, mask_scores
from model.remover.infer import Cleaner
from model.remover.locate import ALPHA_CAP, LocateRestore, invert, locate_loss, pick_crops, view_size
from model.remover.network import build_model, load_checkpoint, save_checkpoint

torch.set_num_threads(1)


def _perturbed(seed: int = 0) -> LocateRestore:
    """A small LocateRestore whose zero-initialised output convolutions are given random weights,
    so that its outputs depend on its inputs (an untrained one returns its input)."""
    torch.manual_seed(seed)
    m = LocateRestore(base=8, depth=2, loc_base=8, loc_depth=2, view=32)
    with torch.no_grad():
        for conv in (m.localiser.out, m.restorer.out):
            conv.weight.normal_(0, 0.3)
    return m.eval()


def test_invert_undoes_the_composite_below_the_cap():
    g = torch.Generator().manual_seed(1)
    clean = torch.rand(1, 3, 8, 8, generator=g)
    colour = torch.rand(1, 3, 8, 8, generator=g)
    alpha = torch.rand(1, 1, 8, 8, generator=g) * ALPHA_CAP
    composite = clean * (1 - alpha) + alpha * colour
    assert torch.allclose(invert(composite, alpha, colour), clean, atol=1e-5)
    # above the cap the division stops at 1/(1 − cap) and stays finite
    opaque = invert(colour, torch.ones(1, 1, 8, 8), colour)
    assert torch.isfinite(opaque).all() and opaque.min() >= 0 and opaque.max() <= 1


def test_view_size_keeps_the_long_side_and_never_upscales():
    assert view_size(768, 1024, 192) == (144, 192)
    assert view_size(375, 500, 192) == (144, 192)
    assert view_size(64, 48, 192) == (64, 48)
    assert view_size(20, 500, 192) == (16, 192)  # at least one multiple


def test_untrained_model_returns_its_input_and_has_the_remover_contract():
    m = LocateRestore(base=8, depth=2, loc_base=8, loc_depth=2, view=32).eval()
    x = torch.rand(2, 3, 48, 64)
    with torch.no_grad():
        out = m(x)
    assert out["image"].shape == x.shape and out["raw_image"].shape == x.shape
    assert out["mask_logits"].shape == (2, 1, 48, 64)
    assert out["coarse_logits"].shape == (2, 1, *view_size(48, 64, 32))  # the reduced view
    assert (torch.sigmoid(out["mask_logits"]) < 0.5).all()  # starts at "no mark"
    assert float((out["image"] - x).abs().max()) < 0.05
    with pytest.raises(ValueError, match="multiple"):
        m(torch.rand(1, 3, 50, 64))


def test_checkpoint_round_trip_rebuilds_the_same_network(tmp_path):
    m = _perturbed()
    path = save_checkpoint(m, tmp_path / "lr.pt")
    loaded, _ = load_checkpoint(path)
    assert isinstance(loaded, LocateRestore) and loaded.config == m.config
    assert isinstance(build_model(m.config), LocateRestore)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x)["image"], m(x)["image"])


def test_cleaner_hands_it_the_whole_image_and_keeps_unmasked_pixels(monkeypatch):
    m = _perturbed()
    seen = []
    m.localiser.register_forward_pre_hook(lambda _mod, args: seen.append(tuple(args[0].shape)))
    img = np.random.default_rng(0).integers(0, 256, (70, 100, 3), dtype=np.uint8)
    cleaner = Cleaner(m, device="cpu", tile=32, overlap=8, harden_mask=True, precision="fp32", backend="eager")
    res = cleaner.clean([img])[0]
    assert len(seen) == 1, "the localiser ran on tiles instead of the whole image"
    assert seen[0][2:] == view_size(80, 112, 32)  # the padded image's view
    assert res.image.shape == img.shape
    hard = torch.nn.functional.max_pool2d(torch.from_numpy(res.mask > 0.5).float()[None, None], 3, 1, 1)[0, 0]
    outside = ~hard.bool().numpy()
    assert outside.any() and np.array_equal(res.image[outside], img[outside])


def test_tiled_restore_matches_the_whole_image_pass(monkeypatch):
    m = _perturbed()
    x = torch.rand(1, 3, 96, 160, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        whole = m(x)
        monkeypatch.setattr(locate, "RESTORE_MAX_PIXELS", 64 * 64)
        monkeypatch.setattr(locate, "RESTORE_TILE", 64)
        monkeypatch.setattr(locate, "RESTORE_OVERLAP", 32)
        tiled = m(x)
    assert tiled["image"].shape == whole["image"].shape
    diff = (tiled["image"] - whole["image"]).abs()
    assert float(diff.mean()) < 0.01 and float(diff.max()) < 0.2


def test_pick_crops_lands_on_the_mark_and_stays_inside():
    mask = torch.zeros(4, 1, 64, 64)
    mask[:, :, 50:60, 4:12] = 1
    g = torch.Generator().manual_seed(0)
    corners = pick_crops(mask, 32, g, on_mark=1.0)
    for y, x in corners:
        assert 0 <= y <= 32 and 0 <= x <= 32
        assert mask[0, 0, y : y + 32, x : x + 32].sum() > 0


def test_locate_loss_teaches_the_localiser_where_the_mark_is():
    torch.manual_seed(0)
    m = LocateRestore(base=8, depth=2, loc_base=8, loc_depth=2, view=32)
    x = torch.rand(2, 3, 32, 32) * 0.5
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 8:20, 10:26] = 1
    alpha = mask * 0.6
    colour = mask.expand(2, 3, 32, 32) * 1.0
    marked = x * (1 - alpha) + alpha * colour
    weights = {"loc_bce": 1.0, "loc_dice": 1.0, "loc_alpha": 1.0, "loc_colour": 0.5, "loc_invert": 0.5}
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        out = m(marked, crop=(32, [(0, 0), (0, 0)]))
        total, terms = locate_loss(out, mask, alpha, colour, x, mask, alpha, weights)
        first = first if first is not None else {k: float(v.detach()) for k, v in terms.items()}
        opt.zero_grad()
        total.backward()
        opt.step()
    last = {k: float(v.detach()) for k, v in terms.items()}
    assert set(last) == set(weights)
    assert last["loc_bce"] < 0.5 * first["loc_bce"]
    assert last["loc_alpha"] < first["loc_alpha"] and last["loc_invert"] < first["loc_invert"]
    with torch.no_grad():
        prob = torch.sigmoid(m.eval()(marked)["coarse_logits"])
    assert mask_scores((prob > 0.5)[:, 0].numpy(), mask[:, 0].numpy() > 0.5)["iou"] > 0.5


def test_mask_scores():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert mask_scores(a, b) == {"iou": 1.0, "f1": 1.0}
    a[0, :2] = True
    b[0, 1:3] = True
    assert mask_scores(a, b) == pytest.approx({"iou": 1 / 3, "f1": 0.5})


def test_evaluate_pairs_reports_mask_scores_and_both_oracles():
    g = torch.Generator().manual_seed(0)
    items = []
    for _ in range(3):
        clean = torch.rand(3, 32, 32, generator=g)
        mask = torch.zeros(1, 32, 32)
        mask[:, 4:20, 6:22] = 1
        alpha, colour = mask * 0.5, torch.ones(3, 32, 32) * mask
        items.append({"input": clean * (1 - alpha) + alpha * colour, "clean": clean, "mask": mask,
                      "alpha": alpha, "colour": colour})
    r = evaluate_pairs(_perturbed(), items, baselines=("input", "inpaint", "oracle_restore", "mask_telea"))
    assert set(r) >= {"model", "input", "inpaint", "oracle_restore", "mask_telea", "mask"}
    assert 0.0 <= r["mask"]["iou"] <= r["mask"]["f1"] <= 1.0
    with pytest.raises(ValueError, match="unknown baselines"):
        evaluate_pairs(_perturbed(), items, baselines=("median",))


def test_mark_score_does_not_drift_with_image_size():
    """The localiser scores a fixed-size view, so one scene at 4× the pixels scores the same."""
    from PIL import Image

    from model.remover.locate import mark_scores

    m = _perturbed()
    rng = np.random.default_rng(0)
    small = np.kron(rng.integers(0, 256, (12, 16, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # 96×128, blocky
    big = np.asarray(Image.fromarray(small).resize((512, 384), Image.Resampling.NEAREST))
    other = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    s = mark_scores(m, [small, big, Image.fromarray(other)])
    assert s.shape == (3,) and ((0 <= s) & (s <= 1)).all()
    assert abs(s[0] - s[1]) < 0.01
    assert abs(s[0] - s[2]) > abs(s[0] - s[1])  # it does look at the picture
    with pytest.raises(ValueError, match="HxWx3"):
        mark_scores(m, [np.zeros((8, 8), np.uint8)])


def test_warm_start_from_a_unet_carries_its_mask_and_residual():
    """Warm-started from a mask-head U-Net of its width, the localiser's mark logit on an image no
    larger than the view is the U-Net's mask logit, and the restorer's residual head is the
    U-Net's; a U-Net of another width is refused."""
    from model.remover.network import UNet

    torch.manual_seed(0)
    unet = UNet(base=8, depth=2, mask_head=True, mask_guided=True)
    with torch.no_grad():
        unet.head.weight.normal_(0, 0.1)
        unet.mask_out.weight.normal_(0, 0.3)
    unet.eval()
    m = LocateRestore(base=8, depth=2, loc_base=8, loc_depth=2, view=32).eval()
    m.warm_start_from_unet(dict(unet.config), unet.state_dict())
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(m.locate(x)["logits"], unet(x)["mask_logits"], atol=1e-5)
        assert torch.equal(m.restorer.out.weight[:3], unet.head.weight)
    with pytest.raises(ValueError, match="cannot warm-start"):
        m.warm_start_from_unet(dict(UNet(base=16, depth=2, mask_head=True).config), {})


def test_telea_fill_starts_opaque_marks_from_opencv_and_is_recorded_in_the_config():
    from model.remover.evaluate import inpaint_telea
    from model.remover.locate import telea_fill

    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 32, 32, generator=g)
    where = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
    where[..., 8:20, 10:24] = True
    logits = torch.where(where, 12.0, -12.0).float()
    alpha = where.float()
    colour = torch.ones(1, 3, 32, 32)
    filled = LocateRestore(base=8, depth=2, loc_base=8, loc_depth=2, view=32, fill="telea").eval()
    assert filled.config["fill"] == "telea" and "fill" not in LocateRestore().config
    with torch.no_grad():
        raw = filled.restore(x, logits, alpha, colour)["raw_image"]
        plain = LocateRestore(base=8, depth=2, loc_base=8, loc_depth=2, view=32).eval().restore(x, logits, alpha, colour)
    u8 = (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    expect = torch.from_numpy(inpaint_telea(u8, where[0, 0].numpy())).permute(2, 0, 1).float() / 255
    inside = where[0, 0]
    assert torch.allclose(raw[0][:, inside], expect[:, inside], atol=1e-3)
    assert torch.allclose(telea_fill(x, where)[0], expect, atol=1e-6)
    assert not torch.allclose(plain["raw_image"][0][:, inside], expect[:, inside], atol=0.05)
    with pytest.raises(ValueError, match="fill must be"):
        LocateRestore(fill="median")


def test_inference_restores_only_the_box_around_the_mark():
    """A clean image never reaches the restorer and comes back unchanged; a mark in one corner
    costs a restore of that corner's box only, and outside it the output is the input."""
    m = LocateRestore(base=8, depth=2, loc_base=8, loc_depth=2, view=32).eval()
    with torch.no_grad():
        m.restorer.out.weight.normal_(0, 0.3)
    shapes = []
    m.restorer.register_forward_pre_hook(lambda _mod, args: shapes.append(tuple(args[0].shape[2:])))
    x = torch.rand(1, 3, 128, 160)
    with torch.no_grad():
        clean = m(x)
    assert shapes == [] and torch.equal(clean["image"], x)
    with torch.no_grad():  # now the localiser marks the top-left corner of the view
        m.localiser.out.bias[0] = -6.0
        bump = torch.zeros(1, 1, *view_size(128, 160, 32))
        bump[..., :4, :4] = 12.0
        orig = m.localiser.forward
        m.localiser.forward = lambda v: {**orig(v), "logits": orig(v)["logits"] + bump}
        out = m(x)
    assert len(shapes) == 1 and shapes[0][0] < 128 and shapes[0][1] < 160 and shapes[0][0] % 16 == 0
    h, w = shapes[0]
    assert torch.equal(out["image"][..., h:, :], x[..., h:, :]) and torch.equal(out["image"][..., :, w:], x[..., :, w:])
    assert not torch.equal(out["raw_image"][..., :h, :w], x[..., :h, :w])


def test_the_folded_localiser_gives_the_localisers_maps():
    """``FusedLocaliser`` (BatchNorm folded, channels-last) is the localiser up to float rounding,
    and scoring (which uses it on a CPU) matches the plain localiser's scores."""
    from model.remover.locate import FusedLocaliser, mark_scores

    torch.manual_seed(0)
    m = _perturbed().eval()
    for mod in m.localiser.modules():  # BatchNorm statistics that are not the identity
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
    x = torch.rand(2, 3, 48, 64)
    with torch.no_grad():
        plain, fused = m.localiser(x), FusedLocaliser(m.localiser)(x)
    for k in ("logits", "alpha", "colour"):
        assert fused[k].shape == plain[k].shape and torch.allclose(fused[k], plain[k], atol=1e-4), k
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (60, 90, 3), dtype=np.uint8) for _ in range(3)]
    with torch.no_grad():
        by_hand = [float(torch.sigmoid(m.localiser(locate._view_tensor(im, m.config["view"])[None])["logits"]).max())
                   for im in images]  # the plain localiser's hottest cell
    s = mark_scores(m, images, top_fraction=1e-9)  # the single hottest cell
    assert np.allclose(s, by_hand, atol=1e-4)


def test_the_fused_backend_cleans_as_the_eager_one():
    """On a CPU in fp32 the cleaner runs ``LocateRestore.fused_copy`` (both trunks folded): the
    same cleaned pixels and mask as the plain network, up to rounding; the network itself is left
    as it was."""
    m = _perturbed(2)
    with torch.no_grad():
        m.localiser.out.bias[0] = 0.5  # marks found: the restorer runs
    for mod in m.modules():  # BatchNorm statistics that are not the identity
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_var.uniform_(0.5, 2.0)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    img = np.random.default_rng(4).integers(0, 256, (70, 100, 3), dtype=np.uint8)
    eager = Cleaner(m, device="cpu", harden_mask=True, precision="fp32", backend="eager").clean([img])[0]
    cleaner = Cleaner(m, device="cpu", harden_mask=True, precision="fp32", backend="auto")
    assert cleaner.backend == "fused"
    fused = cleaner.clean([img])[0]
    assert (eager.mask > 0.5).any() and np.abs(fused.mask - eager.mask).max() < 1e-3
    assert np.abs(fused.image.astype(int) - eager.image.astype(int)).max() <= 1
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    with pytest.raises(locate.NotFusable):
        m.train().fused_copy()
