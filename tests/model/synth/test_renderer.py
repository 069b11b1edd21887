"""The watermark renderer: exact masks and compositing, determinism, tiled coverage, families."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from model.synth.layers import channel_max
from model.synth.renderer import FAMILIES, Watermarked, WatermarkRenderer


@pytest.fixture(scope="module")
def renderer():
    return WatermarkRenderer(seed=0)


def photo_like(size: int = 96, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients plus noise: every colour of mark shows somewhere, some do not."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([xx, yy, 1 - (xx + yy) / 2], -1) * 200 + rng.normal(0, 12, (size, size, 3)) + 20
    return np.clip(img, 0, 255).astype(np.uint8)


def dark_textured(size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(64, 6, (size, size, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("family", FAMILIES)
def test_mask_and_exact_compositing(renderer, family):
    clean = photo_like()
    rng = np.random.default_rng(1)
    for _ in range(12):
        w = renderer.render(clean, rng, family=family)
        assert isinstance(w, Watermarked) and w.family == family
        assert w.composite.shape == clean.shape and w.composite.dtype == np.uint8
        assert w.mask.shape == clean.shape[:2] and w.mask.dtype == bool
        assert w.alpha.shape == clean.shape[:2] and w.alpha.dtype == np.float32
        assert w.mask.any()
        # before post-processing, outside the mask nothing changed, bit for bit
        assert np.array_equal(w.raw[~w.mask], clean[~w.mask])
        assert not w.alpha[~w.mask].any()
        assert 0.0 <= w.alpha.min() and w.alpha.max() <= 1.0
        # and every mask pixel is a visible change (no sub-noise targets)
        diff = channel_max(cv2.absdiff(w.raw, clean))
        assert diff[w.mask].min() >= renderer.min_diff
        assert diff[~w.mask].max() == 0
        # the localiser's targets: raw = clean·(1 − α) + α·W, to the 8-bit rounding
        a = w.alpha[..., None]
        rebuilt = clean.astype(np.float32) * (1 - a) + a * w.colour * 255.0
        assert np.abs(rebuilt - w.raw.astype(np.float32)).max() <= 1.0
        assert not w.colour[~w.mask].any()


def test_postprocessing_changes_only_the_composite(renderer):
    clean = photo_like(128)
    rng = np.random.default_rng(3)
    processed = 0
    for _ in range(40):
        w = renderer.render(clean, rng)
        assert np.array_equal(w.raw[~w.mask], clean[~w.mask])
        if w.style["post"]:
            processed += 1
            assert not np.array_equal(w.composite, w.raw)
        else:
            assert np.array_equal(w.composite, w.raw)
    assert 5 <= processed <= 35
    w = renderer.render(clean, rng, postprocess=False)
    assert w.composite is w.raw and "post" not in w.style


def test_same_seed_same_watermark():
    clean = photo_like()
    a, b = WatermarkRenderer(seed=5), WatermarkRenderer(seed=5)
    for fam in [None, *FAMILIES]:
        wa = a.render(clean, np.random.default_rng(42), family=fam)
        wb = b.render(clean, np.random.default_rng(42), family=fam)
        assert np.array_equal(wa.composite, wb.composite)
        assert np.array_equal(wa.mask, wb.mask) and np.array_equal(wa.alpha, wb.alpha)
        assert wa.style == wb.style
    wc = a.render(clean, np.random.default_rng(43), family="text")
    wd = a.render(clean, np.random.default_rng(42), family="text")
    assert not np.array_equal(wc.composite, wd.composite)


def test_tiled_grid_covers_the_whole_image(renderer):
    for seed in range(12):
        clean = dark_textured(256, seed)
        w = renderer.render(clean, np.random.default_rng(seed), family="tiled", postprocess=False)
        cells = w.mask.reshape(4, 64, 4, 64).any(axis=(1, 3))
        assert cells.all(), f"seed {seed}: empty cells\n{cells.astype(int)} ({w.style})"
        assert w.mask.mean() > 0.08


def test_text_marks_vary(renderer):
    clean = photo_like(128)
    rng = np.random.default_rng(7)
    seen = {"text_style": set(), "script": set(), "rotated": 0, "past_edge": 0}
    for _ in range(150):
        w = renderer.render(clean, rng, family="text", postprocess=False)
        st = w.style
        seen["text_style"].add(st["text_style"])
        seen["script"].add(st["script"])
        seen["rotated"] += st["angle"] != 0
        (x, y), (h, wd) = st["position"], st["size"]
        seen["past_edge"] += x < 0 or y < 0 or x + wd > 128 or y + h > 128
    assert seen["text_style"] == {"plain", "outline", "shadow", "emboss"}
    assert seen["script"] == set(renderer.available_scripts())
    assert 30 < seen["rotated"] < 140
    assert seen["past_edge"] > 10


def test_families_restrict_what_is_drawn():
    r = WatermarkRenderer(seed=0, families=["logo", "shape"])
    rng = np.random.default_rng(0)
    drawn = {r.render(photo_like(64), rng).family for _ in range(40)}
    assert drawn == {"logo", "shape"}
    with pytest.raises(ValueError, match="unknown watermark famil"):
        WatermarkRenderer(families=["text", "neon"])
    with pytest.raises(ValueError):
        r.render(photo_like(64), rng, family="neon")


def test_logos_from_a_folder_are_used(tmp_path):
    logo = np.zeros((60, 90, 4), np.uint8)
    logo[10:50, 10:80] = (250, 20, 20, 255)  # a red bar, transparent around it
    Image.fromarray(logo, "RGBA").save(tmp_path / "bar.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "flat.png")  # no alpha: background keyed out
    (tmp_path / "notes.txt").write_text("not a logo")
    r = WatermarkRenderer(seed=0, logo_dir=tmp_path, families=["logo"])
    assert len(r._user_logos) == 1
    clean = np.full((128, 128, 3), 30, np.uint8)
    rng = np.random.default_rng(0)
    user = [w for w in (r.render(clean, rng, postprocess=False) for _ in range(30)) if w.style["logo"][0] == "user"]
    assert 5 < len(user) < 28
    plain = [w for w in user if not w.style["tint"] and "under" not in w.style]
    assert plain
    for w in plain:  # the bar is red: the mask holds reddened pixels only
        d = w.raw[w.mask].astype(int)
        assert (d[:, 0] > d[:, 2]).mean() > 0.9


def test_marks_are_visible(renderer):
    """Every render leaves a mask of at least min_mask_fraction on an ordinary photo."""
    clean = photo_like(128, seed=4)
    rng = np.random.default_rng(5)
    fractions = [renderer.render(clean, rng).mask.mean() for _ in range(60)]
    assert min(fractions) >= renderer.min_mask_fraction


def test_rejects_bad_input(renderer):
    with pytest.raises(ValueError):
        renderer.render(np.zeros((32, 32), np.uint8), np.random.default_rng(0))
    with pytest.raises(ValueError):
        renderer.render(np.zeros((32, 32, 3), np.float32), np.random.default_rng(0))


def test_flat_alpha_logos_have_one_opacity_unless_ramped(renderer):
    """Flat logos: the inside of the mark sits at the drawn opacity (thin features resampled
    aside); with an alpha ramp the opacity varies across the mark."""
    clean = photo_like(128)
    rng = np.random.default_rng(13)
    flat = ramps = 0
    for _ in range(80):
        w = renderer.render(clean, rng, family="logo", postprocess=False)
        if not w.style["flat_alpha"] or "under" in w.style or w.style["angle"] != 0:
            continue
        inner = cv2.erode(w.mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        if inner.sum() < 200:
            continue
        at_opacity = np.abs(w.alpha[inner] - w.style["opacity"]) < 0.01
        if "alpha_ramp" in w.style:
            ramps += 1
            assert at_opacity.mean() < 0.5, w.style
        else:
            flat += 1
            assert at_opacity.mean() > 0.9, w.style
    assert flat >= 3 and ramps >= 2


@pytest.mark.parametrize("shape", [(1, 1), (12, 12), (24, 160), (160, 24)])
def test_any_image_shape_renders(renderer, shape):
    img = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    for fam in FAMILIES:
        for seed in range(4):
            w = renderer.render(img, np.random.default_rng(seed), family=fam)
            assert w.composite.shape == img.shape and w.mask.shape == shape
            assert np.array_equal(w.raw[~w.mask], img[~w.mask])


def test_luma_is_the_mean_luma_of_any_view():
    from model.synth.layers import luma as _luma

    img = np.random.default_rng(3).integers(0, 256, (61, 47, 3), dtype=np.uint8)
    for view in (img, img[:, ::-1], img[5:50, 3:40], np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 255, np.uint8)):
        want = float(view.reshape(-1, 3).astype(np.float64).mean(axis=0) @ np.array([0.299, 0.587, 0.114])) / 255.0
        assert _luma(view) == pytest.approx(want, abs=1e-12)


def _whole_image_vary_alpha(layer, rng):
    """The ramp as it was computed before it was cut to the mark's box: over every pixel."""
    import math

    H, W = layer.shape[:2]
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    low = float(rng.uniform(0.3, 0.8))
    if rng.random() < 0.5:
        t = float(rng.uniform(0, 2 * math.pi))
        ramp = xx * math.cos(t) + yy * math.sin(t)
        ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    else:
        cx, cy = rng.uniform(0, W), rng.uniform(0, H)
        ramp = 1.0 - np.clip(np.hypot(xx - cx, yy - cy) / math.hypot(H, W), 0, 1)
    layer *= (low + (1.0 - low) * ramp)[..., None]


def _whole_image_adjust_under(layer, clean, rng):
    from model.synth.layers import over as _over

    support = (layer[..., 3] > 0.02).astype(np.float32)
    k = max(3, (min(clean.shape[:2]) // 32) | 1)
    region = cv2.GaussianBlur(cv2.dilate(support, np.ones((k, k), np.uint8)), (k, k), 0)
    gain, bias = float(rng.uniform(0.6, 1.3)), float(rng.uniform(-0.15, 0.15))
    adjusted = np.clip((clean.astype(np.float32) / 255.0 - 0.5) * gain + 0.5 + bias, 0, 1)
    under = np.concatenate([adjusted * region[..., None], region[..., None]], axis=-1)
    mark = layer.copy()
    layer[:] = under
    _over(layer, mark, 0, 0)


@pytest.mark.parametrize("shape", [(96, 96), (173, 301), (301, 140)])
def test_modifiers_computed_in_the_marks_box_match_the_whole_image(renderer, shape):
    # _vary_alpha and _adjust_under only touch a box around the mark (a few times faster at 512 px);
    # what they draw must be what the whole-image computation drew, marks at the edges included.
    clean = np.ascontiguousarray(np.resize(photo_like(max(shape)), shape + (3,)))
    for seed in range(24):
        rng = np.random.default_rng(seed)
        layer = np.zeros(shape + (4,), np.float32)
        getattr(renderer, f"_draw_{('text', 'logo', 'badge', 'shape')[seed % 4]}")(layer, clean, rng, {})
        a, b = layer.copy(), layer.copy()
        _whole_image_vary_alpha(a, np.random.default_rng(100 + seed))
        renderer._vary_alpha(b, np.random.default_rng(100 + seed), {})
        assert np.array_equal(a, b)
        a, b = layer.copy(), layer.copy()
        _whole_image_adjust_under(a, clean, np.random.default_rng(200 + seed))
        renderer._adjust_under(b, clean, np.random.default_rng(200 + seed), {})
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
    empty = np.zeros(shape + (4,), np.float32)
    renderer._vary_alpha(empty, np.random.default_rng(0), {})
    renderer._adjust_under(empty, clean, np.random.default_rng(0), {})
    assert not empty.any()
