"""model/remover/visuals.py: the end-of-run figures for a U-Net, a locate-then-restore remover and a
network with no gates (skipped, logged), on fixed samples shrunk to a small size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from model.remover import visuals
from model.remover.locate import LocateRestore
from model.remover.network import UNet

from .test_plots import _assert_real_png

torch.set_num_threads(1)

PER_SAMPLE = ["side_by_side", "residual_histogram", "quality_maps", "watermark_residual", "gradient_saliency"]
INSIDES = ["attention_gate_maps", "activations", "decoder_feature_maps"]


def _sample(seed: int, h: int = 120, w: int = 200) -> dict[str, torch.Tensor]:
    """A WatermarkPairs-like item: a real photo with a translucent white bar, its mask, α and colour."""
    clean = np.asarray(Image.fromarray(data.astronaut()).resize((w, h), Image.BILINEAR)) / 255.0
    mask = np.zeros((h, w), np.float32)
    mask[h // 3 + seed : h // 2 + seed, w // 8 : w - w // 8] = 1
    alpha = 0.5 * mask
    marked = clean * (1 - alpha[..., None]) + alpha[..., None]

    def t(a):
        return torch.tensor(np.ascontiguousarray(a.transpose(2, 0, 1)), dtype=torch.float32)

    return {"input": t(marked), "target": t(clean), "clean": t(clean), "mask": torch.tensor(mask)[None],
            "alpha": torch.tensor(alpha)[None], "colour": torch.ones(3, h, w)}


@pytest.fixture(scope="module")
def samples():
    return [_sample(i) for i in range(5)]


def _manifest(out):
    return json.loads((out / "visuals.json").read_text())


def test_unet_gets_every_figure_on_two_fixed_samples(tmp_path, samples):
    torch.manual_seed(0)
    net = UNet(base=8, depth=3, mask_head=True, mask_guided=True)
    lines: list[str] = []
    paths = visuals.draw_run_visuals(net.train(), samples, tmp_path / "v", lines.append, harden_mask=True)
    info = _manifest(tmp_path / "v")
    want = {f"s{i}-{n}.png" for i in (0, 1) for n in PER_SAMPLE + INSIDES} | {"first_layer_kernels.png"}
    assert {f["file"] for f in info["figures"]} == want and len(paths) == len(want)
    assert info["skipped"] == [] and info["failed"] == [], info
    for p in paths:
        _assert_real_png(p, min_w=100, min_h=60)
    assert net.training  # the caller's mode is left as it was
    assert any("17 figures" in line for line in lines)


def test_pick_samples_is_fixed_and_spread(samples):
    picked = visuals.pick_samples(samples, 2)
    assert torch.equal(picked[0]["input"], samples[0]["input"]) and torch.equal(picked[1]["input"], samples[-1]["input"])
    assert len(visuals.pick_samples(samples[:1], 2)) == 1 and visuals.pick_samples([], 2) == []
    small = visuals._shrink(samples[0], 100)
    assert small["input"].shape[-2:] == (60, 100) and small["mask"].shape[-2:] == (60, 100)


def test_locate_restore_draws_both_trunks_and_the_localiser_maps(tmp_path, samples):
    torch.manual_seed(0)
    net = LocateRestore(base=8, depth=2, loc_base=8, loc_depth=2, view=64)
    with torch.no_grad():  # zero-initialised heads would draw flat maps
        net.localiser.out.weight.normal_(std=0.5)
        net.restorer.out.weight.normal_(std=0.1)
    paths = visuals.draw_run_visuals(net, samples, tmp_path / "v", log=None, max_side=96)
    info = _manifest(tmp_path / "v")
    names = {f["file"] for f in info["figures"]}
    for i in (0, 1):
        assert f"s{i}-localiser_maps.png" in names
        for part in ("localiser", "restorer"):
            assert {f"s{i}-{part}-{n}.png" for n in INSIDES} <= names
    assert {"localiser-first_layer_kernels.png", "restorer-first_layer_kernels.png"} <= names
    assert info["failed"] == [] and info["skipped"] == [], info
    assert len(paths) == 2 * (len(PER_SAMPLE) + 1 + 2 * len(INSIDES)) + 2
    _assert_real_png(tmp_path / "v" / "s0-localiser_maps.png")


class _NoGates(torch.nn.Module):
    """A remover with no U-Net insides: one conv and a mask logit."""

    size_multiple = 1
    mask_head = False

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return {"image": x + 0.1 * self.conv(x)}


def test_a_network_without_gates_skips_what_does_not_apply(tmp_path, samples):
    torch.manual_seed(0)
    lines: list[str] = []
    paths = visuals.draw_run_visuals(_NoGates(), samples, tmp_path / "v", lines.append, max_side=64)
    info = _manifest(tmp_path / "v")
    assert {f["file"] for f in info["figures"]} == {f"s{i}-{n}.png" for i in (0, 1) for n in PER_SAMPLE}
    assert len(paths) == 10 and info["failed"] == []
    skipped = {s["figure"] for s in info["skipped"]}
    assert skipped == {f"s{i}-{n}" for i in (0, 1) for n in INSIDES} | {"first_layer_kernels"}
    assert any("skipped s0-attention_gate_maps" in line and "no gates" in line for line in lines), lines


def test_broken_samples_and_a_failing_figure_never_raise(tmp_path):
    class Broken:
        def __len__(self):
            return 3

        def __getitem__(self, i):
            raise OSError(f"sample {i} is unreadable")

    lines: list[str] = []
    net = UNet(base=8, depth=2)
    paths = visuals.draw_run_visuals(net, Broken(), tmp_path / "v", lines.append)
    info = _manifest(tmp_path / "v")
    assert [f["file"] for f in info["figures"]] == ["first_layer_kernels.png"] and len(paths) == 1
    assert info["failed"][0]["figure"] == "samples" and "unreadable" in info["failed"][0]["reason"]
    # a sample the network cannot take (one channel): its figures fail, logged, and the run goes on
    bad = {"input": torch.rand(1, 32, 32), "clean": torch.rand(1, 32, 32)}
    visuals.draw_run_visuals(net, [bad], tmp_path / "w", lines.append)
    info = _manifest(tmp_path / "w")
    assert {f["figure"] for f in info["failed"]} >= {"s0-residual_histogram", "s0-gradient_saliency"}
    assert any("s0-gradient_saliency failed" in line for line in lines)
