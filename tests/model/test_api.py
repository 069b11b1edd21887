"""model/api.py: ``Remover.load().clean(image)`` with no catalog: input types, the mask threshold
and dilation, pixels outside the mask copied exactly, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from model import Remover
from model.remover.network import UNet, save_checkpoint


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    net = UNet(base=8, depth=2, mask_head=True, mask_guided=True)
    with torch.no_grad():  # a mask head that fires on bright pixels, and a head that darkens them
        net.mask_out.weight.zero_()
        net.mask_out.bias.fill_(-4.0)
    return save_checkpoint(net.half(), tmp_path / "r.pt", train_config='{"profile": "tiny"}')


def test_clean_keeps_unmasked_pixels_and_takes_pil_grey_and_rgba(checkpoint):
    torch.set_num_threads(1)
    r = Remover.load(checkpoint, device="cpu")
    assert r.config == {"profile": "tiny"} and next(r.network.parameters()).dtype == torch.float32
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    out, mask = r.clean(img)
    assert out.shape == img.shape and out.dtype == np.uint8 and mask.shape == (37, 53)
    assert not mask.any() and np.array_equal(out, img)  # mask probability sigmoid(-4) < 0.5
    out, mask = r.clean(img, threshold=0.01, dilate=0)
    assert mask.all()
    out_pil, _ = r.clean(Image.fromarray(img))
    assert np.array_equal(out_pil, img)
    grey, _ = r.clean(img[..., 0])
    assert grey.shape == (37, 53, 3)
    rgba, _ = r.clean(np.dstack([img, np.full((37, 53), 255, np.uint8)]))
    assert np.array_equal(rgba, img)


def test_bad_input_is_a_clear_error(checkpoint, tmp_path):
    r = Remover.load(checkpoint, device="cpu")
    with pytest.raises(ValueError, match="uint8"):
        r.clean(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        r.clean(np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(ValueError, match="threshold"):
        r.clean(np.zeros((8, 8, 3), np.uint8), threshold=1.0)
    with pytest.raises(FileNotFoundError, match="no remover checkpoint"):
        Remover.load(tmp_path / "missing.pt")


class _DarkenBright(torch.nn.Module):
    """A mask head that fires on bright pixels and a prediction that is black everywhere."""

    def forward(self, x):
        return {"image": torch.zeros_like(x), "mask_logits": (x.mean(1, keepdim=True) - 0.5) * 40}


def test_dilate_and_feather_widen_the_mask_and_fade_into_the_input():
    torch.set_num_threads(1)
    r = Remover(_DarkenBright(), device="cpu")
    img = np.full((40, 40, 3), 120, np.uint8)
    img[16:24, 16:24] = 250  # an 8x8 bright mark
    out, mask = r.clean(img, dilate=0)
    assert mask.sum() == 64 and (out[16:24, 16:24] == 0).all() and np.array_equal(out[~mask], img[~mask])
    out, mask = r.clean(img, dilate=2)
    assert mask.sum() == 144 and (out[14:26, 14:26] == 0).all() and out[13, 20, 0] == 120
    out, mask = r.clean(img, dilate=0, feather=3)
    assert mask.sum() == 14 * 14 - 4  # the feather reaches 3 pixels out (Euclidean: the corners round off)
    # along a row leaving the mark: weights 3/4, 1/2, 1/4 at distances 1, 2, 3, then the input
    assert list(out[20, 24:28, 0]) == [30, 60, 90, 120]
    assert np.array_equal(out[~mask], img[~mask])


def test_detector_scores_pil_and_arrays_like_triage_and_clear_errors(tmp_path):
    from model import Detector
    from model.api import WEIGHTS_DIR
    from model.detector import WatermarkDetector, save_detector, score_images

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = WatermarkDetector(widths=(8, 8, 8, 8))
    with torch.no_grad():
        net.head.weight.normal_(std=50)
    path = save_detector(net, tmp_path / "d.pt", scales=[64], calibration={"low": 0.2, "high": 0.8})
    det = Detector.load(path, device="cpu")
    assert det.scales == (64,) and det.calibration == {"low": 0.2, "high": 0.8}
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (2, 48, 80, 3), dtype=np.uint8)
    sa, sb = det.score(a), det.score(Image.fromarray(b))
    assert isinstance(sa, float) and 0 < sa < 1 and sa != sb
    assert sa == pytest.approx(float(score_images(net.eval(), [a], scales=(64,))[0]), abs=1e-6)
    assert det.score(Image.fromarray(a)) == pytest.approx(sa) and det.score(a[..., 0]) > 0
    assert Detector.load(path.read_bytes(), device="cpu").score(a) == pytest.approx(sa)
    with pytest.raises(FileNotFoundError, match="no detector checkpoint"):
        Detector.load(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="not a detector checkpoint"):
        Detector.load(b"not a checkpoint")
    shipped = Detector.load(device="cpu")  # model/weights/detector.pt, with its triage thresholds
    assert (WEIGHTS_DIR / "detector.pt").exists() and shipped.calibration["low"] <= shipped.calibration["high"]
    assert shipped.threshold is not None and 0 <= shipped.score(a) <= 1
    assert shipped.score_many([a, b]).shape == (2,)


@pytest.mark.slow
def test_readme_python_api_example_runs(tmp_path, monkeypatch, capsys):
    """The README's example, as written, with the shipped weights."""
    import re
    from pathlib import Path

    torch.set_num_threads(1)
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## The Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    out, mask = np.asarray(Image.open("astronaut-clean.png")), np.asarray(Image.open("astronaut-mask.png"))
    assert out.shape == (512, 512, 3) and mask.shape == (512, 512) and "cleaned" in capsys.readouterr().out


def test_the_api_loads_no_catalog_database_or_orchestrator():
    """``from model import Remover, Detector`` and loading the shipped models bring in none of the
    pipeline's other layers or their heavy dependencies (a notebook needs only torch)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; from model import Remover, Detector; Remover.load(device='cpu'); Detector.load(); "
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0, r.stderr[-2000:]
    loaded = set(r.stdout.split())
    assert "torch" in loaded and "model" in loaded
    assert not loaded & {"prefect", "sqlalchemy", "storage", "pipeline", "flows", "dask", "playwright"}, loaded
