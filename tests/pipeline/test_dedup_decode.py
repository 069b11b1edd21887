"""The fast paths of dedup hashing (``pipeline.perceptual``): OpenCV's reduced JPEG decode and
libspng's PNG decode give the very pixels of Pillow's decode (the path they replaced, kept here as
the reference), Pillow still takes the files they do not handle, broken files still fail, and the
window codes from the cached resize/DCT matrices stay within a few bits of resizing each window
with Pillow and hashing it as imagehash does."""

from __future__ import annotations

import io

import numpy as np
import pytest
import scipy.fftpack
from PIL import Image, ImageOps

from pipeline.hashindex import hamming
from pipeline.images import BadImage
from pipeline.perceptual import (
    REDUCED_SIDE,
    TRIM,
    WINDOWS,
    _bits_to_uint64,
    hash_image,
    hash_windows,
    reduced_gray,
)


def _photo(name: str = "astronaut") -> Image.Image:
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _pillow_reduced_gray(data: bytes, side: int = REDUCED_SIDE) -> np.ndarray:
    """The decode every image took before the fast paths: Pillow's draft mode, exif_transpose,
    convert("L"), power-of-two box reduction."""
    im = Image.open(io.BytesIO(data))
    if im.format == "JPEG":
        im.draft("L", (side, side))
    im = ImageOps.exif_transpose(im).convert("L")
    factor = 1
    while min(im.size) // (factor * 2) >= side:
        factor *= 2
    return np.asarray(im.reduce(factor) if factor > 1 else im)


def _with_orientation(im: Image.Image, orientation: int, fmt: str) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(im, fmt, exif=exif.tobytes(), **({"quality": 90} if fmt == "JPEG" else {}))


# short sides 40..1000 px: Pillow's draft (and OpenCV's flag) picks scale 1, 2, 4 and 8
@pytest.mark.parametrize("short_side", [40, 70, 150, 300, 1000])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_opencv_jpeg_decode_gives_pillows_pixels(short_side, mode):
    im = _photo("coffee").convert(mode)
    s = short_side / min(im.size)
    im = im.resize((round(im.width * s), round(im.height * s)), Image.LANCZOS)
    for data in (_encode(im, "JPEG", quality=85), _encode(im, "JPEG", quality=70, progressive=True)):
        assert np.array_equal(np.asarray(reduced_gray(data)), _pillow_reduced_gray(data))


@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_exif_orientation_is_applied_as_pillow_applies_it(orientation):
    im = _photo("chelsea").resize((300, 200))
    for fmt in ("JPEG", "PNG"):  # a PNG with an eXIf chunk takes Pillow's path
        data = _with_orientation(im, orientation, fmt)
        got, want = np.asarray(reduced_gray(data)), _pillow_reduced_gray(data)
        assert got.shape == want.shape and np.array_equal(got, want)
        if orientation in (5, 6, 7, 8):
            assert got.shape[0] > got.shape[1]  # turned upright: taller than wide


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "LA", "I;16"])
def test_png_decode_gives_pillows_pixels_for_every_kind(mode):
    # RGB and L go through libspng; the others through Pillow, as before
    im = _photo("rocket").resize((320, 200))
    im = im.convert("I;16") if mode == "I;16" else im.convert(mode)
    for data in (_encode(im, "PNG"), _encode(im, "PNG", optimize=True)):
        assert np.array_equal(np.asarray(reduced_gray(data)), _pillow_reduced_gray(data))


def test_png_text_chunks_without_orientation_keep_the_fast_path_result():
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "unmark test")
    info.add_itxt("Comment", "a note")
    data = _encode(_photo("astronaut").resize((256, 256)), "PNG", pnginfo=info)
    assert np.array_equal(np.asarray(reduced_gray(data)), _pillow_reduced_gray(data))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_truncated_files_are_corrupt(fmt, keep):
    data = _encode(_photo("astronaut"), fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    with pytest.raises(BadImage) as exc:
        hash_image(data[: int(len(data) * keep)])
    assert exc.value.reason == "corrupt"


def test_corrupt_png_crc_is_corrupt():
    data = bytearray(_encode(_photo("astronaut").resize((128, 128)), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 40] ^= 0xFF  # inside the compressed pixels: the chunk's CRC no longer matches
    with pytest.raises(BadImage) as exc:
        hash_image(bytes(data))
    assert exc.value.reason == "corrupt"


def _windows_by_pillow(im: Image.Image) -> np.ndarray:
    """(N_WINDOWS, 2) codes of each window resized by Pillow (8-bit) and hashed as imagehash does."""
    w, h = im.size
    rows = [(0, h), (TRIM * h, h), (0, (1 - TRIM) * h)]
    cols = [(0, w), (TRIM * w, w), (0, (1 - TRIM) * w)]
    ph, dh = [], []
    for r, c in WINDOWS:
        box = (cols[c][0], rows[r][0], cols[c][1], rows[r][1])
        p = np.asarray(im.resize((32, 32), Image.LANCZOS, box=box), dtype=np.float64)
        dct = scipy.fftpack.dct(scipy.fftpack.dct(p, axis=0), axis=1)[:8, :8]
        ph.append((dct > np.median(dct)).ravel())
        d = np.asarray(im.resize((9, 8), Image.LANCZOS, box=box)).astype(np.int16)
        dh.append((d[:, 1:] > d[:, :-1]).ravel())
    return np.stack([_bits_to_uint64(np.array(ph)), _bits_to_uint64(np.array(dh))], axis=1)


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "rocket"])
def test_window_codes_stay_close_to_resizing_each_window(name):
    # Measured on bench/dedup.py's 1264 images: pHash windows differ by 0.15 bits on average
    # (max 4), dHash windows by 1.0 (p99 8, max 12: near-equal neighbours that the 8-bit
    # rounding of a resized window makes equal). Threshold 22 leaves room for that.
    im = reduced_gray(_encode(_photo(name), "JPEG", quality=90))
    ours, pillow = hash_windows(im)[1:], _windows_by_pillow(im)
    p_bits = hamming(ours[:, :1], pillow[:, :1])
    d_bits = hamming(ours[:, 1:], pillow[:, 1:])
    assert p_bits.max() <= 4 and d_bits.max() <= 12
    assert p_bits.mean() <= 1.0 and d_bits.mean() <= 3.0
    # and each window is a different picture from the frame and the other windows
    assert len({(int(a), int(b)) for a, b in hash_windows(im)}) == len(WINDOWS) + 1
