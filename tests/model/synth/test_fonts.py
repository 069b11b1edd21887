"""Fonts for watermark text: every script we draw shows real glyphs (no tofu), complex scripts
are shaped, and scripts without a covering font are skipped with one warning naming them."""

from __future__ import annotations

import logging
import shutil
import subprocess

import numpy as np
import pytest
from PIL import ImageFont, features

from model.synth import fonts
from model.synth.fonts import SCRIPTS, FontFace, covers, find_script_fonts, glyph_bitmap, missing_codepoint
from model.synth.renderer import WatermarkRenderer
from model.synth.text import rasterise

REQUIRED = {"english", "spanish", "french", "german", "chinese", "japanese", "korean", "russian", "arabic", "hindi"}


def _noto_installed() -> bool:
    if not shutil.which("fc-list"):
        return False
    out = subprocess.run(["fc-list", ":", "family"], capture_output=True, text=True).stdout
    return "Noto Sans CJK" in out and "Noto Sans Devanagari" in out and "Noto Sans Arabic" in out


@pytest.fixture(scope="module")
def script_fonts():
    return find_script_fonts()


def _is_tofu(face: FontFace, ch: str) -> bool:
    """True when ``ch`` draws as the face's .notdef glyph (or draws nothing at all)."""
    glyph = glyph_bitmap(face, ch)
    notdef = glyph_bitmap(face, missing_codepoint(face))
    return glyph.size == 0 or (glyph.shape == notdef.shape and np.array_equal(glyph, notdef))


def test_at_least_25_phrases_in_10_scripts():
    assert sum(len(s.phrases) for s in SCRIPTS) >= 25
    assert REQUIRED <= {s.name for s in SCRIPTS}


@pytest.mark.skipif(not _noto_installed(), reason="fonts-noto-core / fonts-noto-cjk not installed")
def test_required_scripts_have_fonts_when_noto_is_installed(script_fonts):
    assert REQUIRED <= set(script_fonts.fonts), script_fonts.skipped


def test_every_available_script_renders_real_glyphs(script_fonts):
    assert script_fonts.fonts, "no script has a font on this machine"
    by_name = {s.name: s for s in SCRIPTS}
    for name, faces in script_fonts.fonts.items():
        for face in faces:
            for phrase in by_name[name].phrases:
                assert covers(face, phrase)
                for ch in set(phrase) - {" "}:
                    assert not _is_tofu(face, ch), f"{name}: {ch!r} draws as .notdef in {face.path}"
                ink = rasterise(phrase, face, px=32)
                assert (ink > 128).sum() > 20, f"{name}: {phrase!r} left no ink with {face.path}"


def test_tofu_check_detects_a_missing_glyph(script_fonts):
    """The comparison against .notdef does catch a character the font lacks."""
    latin = script_fonts.fonts["english"][0]
    assert not covers(latin, "样")
    assert _is_tofu(latin, "样")
    assert not _is_tofu(latin, "S")


@pytest.mark.skipif(not features.check("raqm"), reason="Pillow without libraqm: complex scripts are skipped")
def test_arabic_and_hindi_are_shaped(script_fonts):
    """With raqm, joined Arabic and Devanagari conjuncts differ from glyphs set side by side."""
    for name, phrase in (("arabic", "عينة"), ("hindi", "पूर्वावलोकन")):
        if name not in script_fonts.fonts:
            continue
        face = script_fonts.fonts[name][0]
        shaped = np.asarray(face.load(48).getmask(phrase))
        basic = np.asarray(ImageFont.truetype(face.path, 48, index=face.index,
                                              layout_engine=ImageFont.Layout.BASIC).getmask(phrase))
        assert shaped.shape != basic.shape or not np.array_equal(shaped, basic), name


def test_scripts_without_fonts_are_skipped_with_one_warning(monkeypatch, caplog, request, script_fonts):
    latin_only = script_fonts.fonts["english"][:1]  # a Latin-only face (Noto Sans or DejaVu Sans)
    monkeypatch.setattr(fonts, "_fc_faces", lambda lang: list(latin_only))
    find_script_fonts.cache_clear()
    request.addfinalizer(find_script_fonts.cache_clear)
    with caplog.at_level(logging.WARNING, logger="model.synth.renderer"):
        renderer = WatermarkRenderer(seed=0, families=["text"])
    assert {"chinese", "japanese", "korean", "hindi"}.isdisjoint(renderer.available_scripts())
    assert "english" in renderer.available_scripts()
    warnings = [r for r in caplog.records if r.name == "model.synth.renderer"]
    assert len(warnings) == 1
    for name in ("chinese", "japanese", "korean", "hindi"):
        assert name in warnings[0].getMessage()
    rng = np.random.default_rng(0)
    img = np.full((96, 96, 3), 60, np.uint8)
    for _ in range(20):
        assert renderer.render(img, rng).style["script"] in renderer.available_scripts()


def test_fonts_dir_comes_first_and_matplotlib_is_the_fallback(tmp_path, monkeypatch, script_fonts):
    latin = script_fonts.fonts["english"][0]
    own = tmp_path / ("mine" + latin.path[latin.path.rfind("."):])
    own.write_bytes(open(latin.path, "rb").read())
    assert find_script_fonts(fonts_dir=str(tmp_path)).fonts["english"][0].path == str(own)
    # without fontconfig every font matplotlib knows is checked for coverage
    monkeypatch.setattr(fonts, "_fc_faces", lambda lang: None)
    fallback = find_script_fonts(per_script=1)
    find_script_fonts.cache_clear()
    assert set(fallback.fonts) == set(script_fonts.fonts)
    for name, faces in fallback.fonts.items():
        phrases = next(s.phrases for s in SCRIPTS if s.name == name)
        assert all(covers(faces[0], p) for p in phrases)
