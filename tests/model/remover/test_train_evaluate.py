"""model/remover/evaluate.py: the SWCNN protocol (reproduces the paper's input PSNRs) and the synthetic
test-split scoring with its baselines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.remover.evaluate import (
    SWCNN_INPUT_PSNR,
    alpha_key,
    evaluate_pairs,
    inpaint_telea,
    predict,
    swcnn_logo,
    swcnn_protocol,
    swcnn_read_image,
    swcnn_watermark,
)
from model.remover.network import UNet

SWCNN = Path(__file__).resolve().parents[4] / "shared" / "benchmarks" / "swcnn"


@pytest.mark.skipif(not (SWCNN / "images").is_dir(), reason="../shared/benchmarks/swcnn not present")
def test_swcnn_input_psnr_reproduces_the_paper_to_3_decimals():
    result = swcnn_protocol(None, SWCNN / "images", SWCNN / "logos", score_ssim=False)
    assert result["images"] == 27 and result["logos"] == 12
    for a, expected in SWCNN_INPUT_PSNR.items():
        assert round(result["alpha"][a]["input_psnr"], 3) == pytest.approx(round(expected, 3), abs=1e-9), a


def _smooth_photo(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    small = rng.integers(0, 256, size=(h // 16, w // 16, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))


@pytest.fixture
def swcnn_like(tmp_path):
    """Two photos (not multiples of 32) and one RGBA logo, laid out as the benchmark folder."""
    rng = np.random.default_rng(0)
    images, logos = tmp_path / "images", tmp_path / "logos"
    images.mkdir()
    logos.mkdir()
    for i, (h, w) in enumerate([(300, 333), (290, 300)], start=1):
        Image.fromarray(_smooth_photo(rng, h, w)).save(images / f"{i}.jpg", quality=95)
    logo = np.zeros((40, 60, 4), np.uint8)
    logo[5:35, 5:55] = (250, 30, 20, 255)
    logo[15:25, 20:40, 3] = 0  # a hole: alpha stays zero there
    Image.fromarray(logo, "RGBA").save(logos / "1.png")
    return images, logos


def test_swcnn_steps_follow_the_protocol(swcnn_like):
    images, logos = swcnn_like
    clean = swcnn_read_image(images / "1.jpg")
    assert clean.shape == (288, 320, 3)  # cropped down to multiples of 32
    logo = swcnn_logo(logos / "1.png", 0.5)
    assert logo.size == (90, 60)  # 1.5x
    a = np.asarray(logo)[..., 3]
    assert np.median(a[a > 0]) == 127  # non-zero alpha -> int(255*0.5), then resized
    assert a[:6, :6].max() == 0  # outside the logo's opaque part stays transparent
    marked = swcnn_watermark(clean, logo)
    assert marked.shape == clean.shape
    assert np.array_equal(marked[:128], clean[:128]) and np.array_equal(marked[:, :128], clean[:, :128])
    inside = marked[140:180, 140:200].astype(int) - clean[140:180, 140:200]
    assert np.abs(inside).mean() > 20  # the logo is there, at (128, 128)


def test_swcnn_protocol_scores_an_identity_model_as_its_input(swcnn_like):
    images, logos = swcnn_like
    model = UNet(base=4, depth=2)  # zero-initialised head: returns its input
    result = swcnn_protocol(model, images, logos, alphas=(0.3, 1.0))
    assert set(result["alpha"]) == {"0.3", "1.0"}
    for v in result["alpha"].values():
        assert v["psnr"] == pytest.approx(v["input_psnr"], abs=1e-3)
        assert v["ssim"] == pytest.approx(v["input_ssim"], abs=1e-4)
    assert result["alpha"]["0.3"]["input_psnr"] > result["alpha"]["1.0"]["input_psnr"] + 5


def test_alpha_keys():
    assert [alpha_key(a) for a in (0.3, 0.5, 0.7, 1)] == ["0.3", "0.5", "0.7", "1.0"]


class _Oracle(torch.nn.Module):
    """Returns the clean image it was given: the best a remover can do."""

    size_multiple = 1

    def __init__(self, clean: torch.Tensor):
        super().__init__()
        self.clean = clean

    def forward(self, x):
        return {"image": self.clean[: x.shape[0]]}


def _pairs(n: int = 3, size: int = 64):
    rng = np.random.default_rng(1)
    items = []
    for _ in range(n):
        clean = _smooth_photo(rng, size, size).astype(np.float32) / 255
        mask = np.zeros((size, size), bool)
        mask[20:40, 10:50] = True
        marked = clean.copy()
        marked[mask] = 0.6 * marked[mask] + 0.4 * np.array([1.0, 1.0, 1.0], np.float32)
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float()  # noqa: E731
        items.append({"input": t(marked), "clean": t(clean), "target": t(clean),
                      "mask": torch.from_numpy(mask)[None].float()})
    return items


def test_evaluate_pairs_orders_oracle_inpaint_and_input():
    items = _pairs()
    oracle = _Oracle(torch.stack([it["clean"] for it in items]))
    r = evaluate_pairs(oracle, items, batch_size=8)
    assert r["n"] == 3
    assert r["model"]["psnr"] > 60  # float copy of the clean image (up to rounding)
    assert r["inpaint"]["psnr"] > r["input"]["psnr"]  # inpainting with the true mask helps
    assert r["inpaint"]["masked_psnr"] > r["input"]["masked_psnr"]
    assert r["input"]["ssim"] < 1.0
    only = evaluate_pairs(oracle, items, baselines=("input",))
    assert only["input"] == r["input"] and "inpaint" not in only
    with pytest.raises(ValueError, match="unknown baselines"):
        evaluate_pairs(oracle, items, baselines=("median",))


def test_inpaint_telea_fills_only_the_mask():
    img = np.full((32, 32, 3), 100, np.uint8)
    img[10:20, 10:20] = 255
    mask = np.zeros((32, 32), bool)
    mask[10:20, 10:20] = True
    out = inpaint_telea(img, mask)
    assert np.array_equal(out[~mask], img[~mask])
    assert np.abs(out[mask].astype(int) - 100).max() < 10


def test_predict_pads_odd_sizes_and_hardens_the_mask():
    torch.manual_seed(0)
    model = UNet(base=4, depth=2, mask_guided=True)
    with torch.no_grad():
        model.mask_out.bias.fill_(-20.0)  # the mask says: nothing is marked
        model.head.bias.fill_(0.3)  # and the raw prediction is far from the input
    x = torch.rand(2, 3, 30, 37)
    soft = predict(model, x)["image"]
    hard = predict(model, x, harden_mask=True)
    assert soft.shape == x.shape and hard["mask"].shape == (2, 1, 30, 37)
    assert torch.equal(hard["image"], x)  # hard mask all zero: every pixel copied exactly
    with torch.no_grad():
        model.mask_out.bias.fill_(20.0)  # everything marked: the raw prediction comes through
    raw = predict(model, x, harden_mask=True)["image"]
    assert torch.allclose(raw, (x + 0.3).clamp(0, 1), atol=1e-5)
