"""Hostile files through ``unmark clean-files``: each is cleaned, passed through or listed as failed
with its reason, the file beside it is still cleaned, and every output keeps its input's size,
mode and orientation."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps
from sqlalchemy import select

from storage.models import Failure
from tests.pipeline.scrape_site import bomb_png
from tests.pipeline.test_clean_files import (  # noqa: F401 - fixtures
    ICC,
    ORIENTATION,
    _one_thread,
    assert_like_input,
    encode,
    env,
    manifest,
    opened,
    photo,
    remover,
    rotated_jpeg,
    run,
)


def _png(mode: str = "RGB") -> bytes:
    return encode(Image.fromarray(photo(seed=3)).convert(mode), "PNG")


def _sixteen() -> bytes:
    grey = np.asarray(Image.fromarray(photo(seed=4)).convert("L"), np.uint16) * 257
    return encode(Image.fromarray(grey), "PNG")


def _palette() -> bytes:
    im = Image.fromarray(photo(seed=5)).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return encode(im, "PNG", transparency=0)


def _animated() -> bytes:
    frames = [Image.fromarray(photo(seed=s)).convert("P") for s in (6, 7)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _exif_png(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return encode(Image.fromarray(photo(seed=8)), "PNG", exif=exif.tobytes())


pytestmark = pytest.mark.usefixtures("remover")

# name, bytes, expected action, a word of the reason (failures)
CASES = {
    "truncated": ("t.png", lambda: _png()[:300], "failed", "corrupt"),
    "zero-byte": ("z.jpg", lambda: b"", "failed", "not-image"),
    "not-an-image": ("n.png", lambda: b"<html>hello</html>" * 20, "failed", "not-image"),
    "bomb": ("bomb.png", lambda: bomb_png(9000), "failed", "too-many-pixels"),
    "wrong-extension": ("really-png.jpg", _png, "cleaned", None),
    "cmyk": ("cmyk.jpg", lambda: encode(Image.fromarray(photo(seed=2)).convert("CMYK"), "JPEG", quality=92), "cleaned", None),
    "16-bit": ("deep.png", _sixteen, "cleaned", None),
    "grey": ("grey.jpg", lambda: encode(Image.fromarray(photo(seed=9)).convert("L"), "JPEG", quality=90), "cleaned", None),
    "palette": ("pal.png", _palette, "cleaned", None),
    "animated": ("anim.gif", _animated, "copied", "animated (2 frames)"),
    "exif-rotated-6": ("rot6.jpg", rotated_jpeg, "cleaned", None),
    "exif-rotated-8-png": ("rot8.png", lambda: _exif_png(8), "cleaned", None),
    "exif-rotated-5-png": ("rot5.png", lambda: _exif_png(5), "cleaned", None),
    "tiff": ("t.tif", lambda: encode(Image.fromarray(photo(seed=10)), "TIFF", compression="tiff_lzw"), "cleaned", None),
    "webp-lossless": ("w.webp", lambda: encode(Image.fromarray(photo(seed=11)), "WEBP", lossless=True), "cleaned", None),
    "rgba": ("a.png", lambda: _png("RGBA"), "cleaned", None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_file_is_a_row_and_the_rest_is_cleaned(case, tmp_path, catalog):
    name, make, action, reason = CASES[case]
    d, out = tmp_path / "in", tmp_path / "out"
    d.mkdir()
    (d / name).write_bytes(make())
    (d / "ok.png").write_bytes(encode(Image.fromarray(photo(seed=1)), "PNG", icc_profile=ICC))
    code, res, output = run(str(d), "--out", str(out), "--all", "--masks")
    assert code == (1 if action == "failed" else 0), output
    rows = manifest(out)
    assert rows["ok.png"]["action"] == "cleaned" and (out / "ok.png").exists()
    assert_like_input(d / "ok.png", out / "ok.png")
    row = rows[name]
    assert row["action"] == action, row
    if reason:
        assert reason in row["reason"]
    if action == "failed":
        assert not (out / name).exists()
        assert [f["input"] for f in res["failures"]] == [str(d / name)] and reason in output
        with catalog.session() as s:  # and the catalog has the failure row
            assert s.scalar(select(Failure.error_class).where(Failure.subject == (d / name).resolve().as_uri()))
    elif action == "copied":
        assert (out / name).read_bytes() == (d / name).read_bytes()
    else:
        assert_like_input(d / name, out / name)
        mask = opened(out / (name.rsplit(".", 1)[0] + ".mask.png"))
        assert mask.size == opened(d / name).size


@pytest.mark.parametrize("orientation", [5, 6, 8])
def test_rotated_lossless_output_lines_up_with_its_input_as_shown(orientation, tmp_path):
    """Shown the EXIF way, the output is the input outside its mask, pixel for pixel, and the mask
    lies on the pixels that changed."""
    d, out = tmp_path / "in", tmp_path / "out"
    d.mkdir()
    (d / "r.png").write_bytes(_exif_png(orientation))
    assert run(str(d), "--out", str(out), "--masks")[0] == 0
    src = np.asarray(ImageOps.exif_transpose(opened(d / "r.png")))
    dst = np.asarray(ImageOps.exif_transpose(opened(out / "r.png")))
    mask = np.asarray(ImageOps.exif_transpose(opened(out / "r.mask.png")))
    assert src.shape == dst.shape and mask.shape == src.shape[:2]
    changed = (src != dst).any(axis=2)
    assert changed.any() and not changed[mask == 0].any()
    assert opened(out / "r.png").size == opened(d / "r.png").size


def test_a_folder_of_every_kind_loses_nothing(tmp_path):
    """All of them at once: one row per file, every readable one written, the exit status 1."""
    d, out = tmp_path / "in", tmp_path / "out"
    d.mkdir()
    for name, make, _, _ in CASES.values():
        (d / name).write_bytes(make())
    code, res, _ = run(str(d), "--out", str(out), "--all", "--masks")
    rows = manifest(out)
    assert code == 1 and len(rows) == len(CASES) == res["files"]
    for name, _, action, _ in CASES.values():
        assert rows[name]["action"] == action
        assert (out / name).exists() == (action != "failed")
    assert res["failed"] == sum(a == "failed" for _, _, a, _ in CASES.values())
    # t.png and t.tif: the second mask takes the file's whole name
    assert rows["t.tif"]["mask"] == str(out / "t.tif.mask.png") and (out / "t.tif.mask.png").exists()
