"""model.synth.device_pairs: marks composited on the training device from a pre-rendered bank follow the
renderer's compositing rule exactly, and a run can train on them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.synth.device_pairs import MIN_DIFF, MarkBank
from model.synth.renderer import WatermarkRenderer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def bank() -> MarkBank:
    return MarkBank.build(WatermarkRenderer(seed=0), 8, size=64, seed=0)


def _clean(b: int = 6, h: int = 48, w: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 0.8 + 0.1


def test_bank_holds_visible_premultiplied_marks(bank):
    assert len(bank) == 8 and bank.layers.shape == (8, 4, 64, 64) and bank.layers.dtype == torch.float16
    a = bank.layers[:, 3].float()
    assert (a.flatten(1).amax(1) > 0.1).all()  # every mark is visible
    assert (bank.layers[:, :3].float() <= a[:, None] + 1e-2).all()  # colour premultiplied by α
    with pytest.raises(ValueError, match="at least one"):
        MarkBank(torch.zeros(0, 4, 8, 8), [])
    with pytest.raises(ValueError, match=r"\(n, 4, S, S\)"):
        MarkBank(torch.zeros(2, 3, 8, 8), [])


def test_composite_follows_the_rule_and_leaves_unmarked_pixels(bank):
    clean = _clean()
    out = bank.composite(clean, torch.Generator().manual_seed(1), jpeg_p=0.0, noise_p=0.0)
    assert set(out) == {"input", "target", "mask", "clean", "alpha", "colour"}
    assert out["input"].shape == clean.shape and out["mask"].shape == (6, 1, 48, 64)
    m = out["mask"].bool()
    assert m.flatten(1).any(1).sum() >= 4  # most samples carry a visible mark
    outside = ~m.expand_as(clean)
    assert torch.equal(out["input"][outside], clean[outside])
    rebuilt = clean * (1 - out["alpha"]) + out["alpha"] * out["colour"]
    assert torch.allclose(rebuilt[~outside], out["input"][~outside], atol=1e-4)
    diff = (out["input"] - clean).abs().amax(1, keepdim=True)
    assert float(diff[m].min()) >= MIN_DIFF - 1e-6


def test_a_clean_share_of_the_batch_stays_unmarked(bank):
    clean = _clean(32, 32, 32)
    out = bank.composite(clean, torch.Generator().manual_seed(2), jpeg_p=0.0, noise_p=0.0, clean_share=0.5)
    empty = ~out["mask"].flatten(1).any(1)
    assert 8 <= int(empty.sum()) <= 24
    assert torch.equal(out["input"][empty], clean[empty]) and float(out["alpha"][empty].abs().max()) == 0.0
    none = bank.composite(clean, torch.Generator().manual_seed(2), jpeg_p=0.0, noise_p=0.0, clean_share=0.0)
    assert int((~none["mask"].flatten(1).any(1)).sum()) < int(empty.sum())


def test_composite_is_seeded_and_reencodes_odd_sizes(bank):
    clean = _clean(4, 40, 56)
    a = bank.composite(clean, torch.Generator().manual_seed(5), jpeg_p=1.0, noise_p=1.0)
    b = bank.composite(clean, torch.Generator().manual_seed(5), jpeg_p=1.0, noise_p=1.0)
    assert torch.equal(a["input"], b["input"])
    assert a["input"].shape == clean.shape and 0 <= float(a["input"].min()) and float(a["input"].max()) <= 1
    plain = bank.composite(clean, torch.Generator().manual_seed(5), jpeg_p=0.0, noise_p=0.0)
    assert not torch.equal(a["input"], plain["input"])  # the artefacts were applied


def test_a_run_trains_on_device_composited_pairs(tmp_path):
    from PIL import Image

    from model.remover.train import profile_config, train

    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        p = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    cfg = profile_config("tiny-locate", synth="device", bank_size=6)
    s = train(paths[:3], paths[3:4], paths[4:], cfg, tmp_path / "run", log=None)
    assert s["steps"] == cfg.epochs * cfg.steps_per_epoch
    with pytest.raises(ValueError, match="synth must be"):
        train(paths[:3], paths[3:4], paths[4:], profile_config("tiny", synth="gpu"), tmp_path / "r2", log=None)
