"""model/synth/icons.py: the installed pictogram sets without brand icons, the identity split, the
rasteriser, the logo layouts, and the renderer drawing icon logos."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import ImageFont

from model.synth.icons import LAYOUTS, IconBank, icon_files, icon_logo, rasterise, split_of
from model.synth.layers import PALETTE
from model.synth.renderer import WatermarkRenderer


def test_sets_are_large_and_hold_no_brand_icons():
    files = icon_files()
    assert len(files) > 3000 and {f.set for f in files} == {"tabler", "fontawesome"}
    assert not [f for f in files if f.name.startswith("brand-") or "brands" in f.path.parts]
    assert not {"github", "apple", "android", "twitter"} & {f.name for f in files}


def test_identity_split_is_stable_and_disjoint():
    train, val = IconBank("train"), IconBank("val")
    names_t, names_v = {f.name for f in train.files}, {f.name for f in val.files}
    assert not names_t & names_v and 0.05 < len(names_v) / (len(names_t) + len(names_v)) < 0.15
    assert all(split_of(n) == "val" for n in names_v)
    with pytest.raises(ValueError, match="split"):
        IconBank("test")


def test_rasterise_gives_a_tight_coverage_and_refuses_an_empty_svg(tmp_path):
    cov = rasterise(icon_files()[0].path, 64)
    assert cov.dtype == np.uint8 and max(cov.shape) <= 64 and cov.max() == 255
    assert cov[0].any() and cov[-1].any() and cov[:, 0].any() and cov[:, -1].any()  # cropped to the ink
    empty = tmp_path / "e.svg"
    empty.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="24" height="24"></svg>')
    with pytest.raises(ValueError, match="renders empty"):
        rasterise(empty, 32)


def test_every_layout_makes_a_visible_rgba_logo():
    cov = IconBank("val").coverage(0)
    font = ImageFont.truetype("DejaVuSans-Bold.ttf", 32)
    for layout in LAYOUTS:
        logo = icon_logo(cov, np.random.default_rng(1), PALETTE, font=font, word="pixora.com", layout=layout)
        assert logo.ndim == 3 and logo.shape[2] == 4 and (logo[..., 3] > 0).mean() > 0.02, layout
    beside = icon_logo(cov, np.random.default_rng(1), PALETTE, font=font, word="pixora.com", layout="beside")
    assert beside.shape[1] > 2 * beside.shape[0]  # the wordmark widens it
    with pytest.raises(ValueError, match="layout"):
        icon_logo(cov, np.random.default_rng(1), PALETTE, layout="spiral")


def test_renderer_draws_icon_logos_only_when_asked():
    clean = np.full((96, 96, 3), 120, np.uint8)
    plain = WatermarkRenderer(seed=0, n_logos=4)
    assert plain._icon_logos == []
    r = WatermarkRenderer(seed=0, n_logos=4, icon_logos=6, icon_split="val")
    kinds = {r.render(clean, np.random.default_rng(i), family="logo").style["logo"][0] for i in range(12)}
    assert "icon" in kinds
