"""Perceptual hashes of image bytes: 64-bit pHash and dHash from imagehash, as signed int64.

Hashes only compare when they were made the same way (imagehash #181: another resize path moves
hashes by ~7 bits), so every hash is stored with ``HASH_IMPL``, which names the library, its
version and the reduction used here, and dedup never compares hashes of different ``hash_impl``.

Decoding dominates the cost, so images are decoded reduced: a JPEG in the DCT domain (1/2, 1/4,
1/8 scale, straight to grayscale), every other format with the same power-of-two box reduction,
so a PNG and a JPEG of one photo take the same path to the hash. JPEG goes through OpenCV's
decoder and 8-bit RGB/grey PNG through libspng (``pyspng``): the same pixels as Pillow's decode
(``tests/pipeline/test_dedup_decode.py`` checks it) at less CPU; Pillow still reads every header
(format allowlist, pixel limit, EXIF orientation) and decodes everything else.
"""

from __future__ import annotations

import functools
import struct

import cv2
import imagehash
import numpy as np
import pyspng
import scipy.fftpack
from PIL import ExifTags, Image, ImageOps

from pipeline.images import BadImage, guarded_open

# The reduced image keeps at least this many pixels on its short side. pHash resizes to 32x32
# anyway; 32 lets a JPEG decode at 1/8 scale, and separated distinct photos best (bench/dedup.py).
REDUCED_SIDE = 32
N_WINDOWS = 8  # crop windows per image (see hash_windows)
HASH_IMPL = f"imagehash-{imagehash.__version__}/phash64+dhash64/draft{REDUCED_SIDE}+win{N_WINDOWS}m"

_JPEG_FLAGS = {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
               4: cv2.IMREAD_REDUCED_GRAYSCALE_4, 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}
_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
# PNG chunks that can carry an orientation (eXIf; EXIF or XMP in text chunks), which Pillow may
# only find after the pixels: such files take Pillow's path
_PNG_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
_PNG_ORIENTATION_KEYWORDS = (b"Raw profile type exif", b"XML:com.adobe.xmp")


def to_signed(v: int) -> int:
    """uint64 -> int64 (SQLite INTEGER and PostgreSQL BIGINT are signed)."""
    return v - (1 << 64) if v >= (1 << 63) else v


def to_unsigned(v: int) -> int:
    return v + (1 << 64) if v < 0 else v


def _draft_scale(size: tuple[int, int], side: int) -> int:
    """The DCT scale Pillow's ``draft(mode, (side, side))`` picks: the largest of 8, 4, 2, 1 that
    keeps both sides at least ``side``."""
    scale = min(size[0] // side, size[1] // side)
    return next(s for s in (8, 4, 2, 1) if scale >= s)


def _jpeg_gray(data: bytes, im: Image.Image, side: int) -> np.ndarray | None:
    """The grayscale pixels Pillow's draft-mode decode gives, decoded by OpenCV; None where this
    JPEG is for Pillow (CMYK, several tiles, or no end-of-image marker: OpenCV would return a
    truncated file's grey fill with a warning where Pillow raises)."""
    if im.mode not in ("RGB", "L") or len(im.tile) != 1 or not data.rstrip(b"\0\r\n ").endswith(b"\xff\xd9"):
        return None
    flags = _JPEG_FLAGS[_draft_scale(im.size, side)] | cv2.IMREAD_IGNORE_ORIENTATION
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if arr is None:
        raise BadImage("corrupt", "JPEG decode failed")
    return arr


def _png_may_rotate(data: bytes) -> bool:
    """Whether a PNG has a chunk that may hold an EXIF orientation, from the chunk headers (and a
    text chunk's keyword) alone."""
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"eXIf" or (kind in _PNG_TEXT_CHUNKS
                               and data[pos + 8 : pos + 8 + min(length, 80)].split(b"\0")[0] in _PNG_ORIENTATION_KEYWORDS):
            return True
        pos += 12 + length
    return False


def _png_pixels(data: bytes) -> np.ndarray | None:
    """8-bit RGB or grey, non-interlaced PNG pixels decoded by libspng; None for any other kind
    (and for metadata that may hold an orientation)."""
    if len(data) < 33:
        return None
    bit_depth, colour_type, interlace = data[24], data[25], data[28]
    if bit_depth != 8 or colour_type not in (0, 2) or interlace or _png_may_rotate(data):
        return None
    try:
        return pyspng.load(data)
    except Exception as exc:  # pyspng raises a bare Exception for every libspng error
        raise BadImage("corrupt", f"PNG: {exc}") from exc


def _fast_gray(data: bytes, im: Image.Image, side: int) -> Image.Image | None:
    """What Pillow's path in ``reduced_gray`` gives before the box reduction (draft-mode decode,
    EXIF orientation, grayscale), decoded by OpenCV (JPEG) or libspng (PNG); None where the file
    is for Pillow."""
    if im.format == "JPEG":
        arr = _jpeg_gray(data, im, side)
        if arr is None:
            return None
        gray, transpose = Image.fromarray(arr), _ORIENTATION.get(im.getexif().get(ExifTags.Base.Orientation, 1))
        return gray.transpose(transpose) if transpose is not None else gray
    if im.format == "PNG":
        arr = _png_pixels(data)
        return None if arr is None else Image.fromarray(arr).convert("L")  # Pillow's RGB->L weights
    return None


def reduced_gray(data: bytes, max_pixels: int = 64_000_000, side: int = REDUCED_SIDE) -> Image.Image:
    """Decode ``data`` to a grayscale image whose short side is REDUCED_SIDE..2*REDUCED_SIDE-1
    (or the original size when smaller), EXIF orientation applied. Raises ``BadImage``."""
    with guarded_open(data, max_pixels) as (_fmt, im):
        gray = _fast_gray(data, im, side)
        if gray is None:
            if im.format == "JPEG":
                im.draft("L", (side, side))
            gray = ImageOps.exif_transpose(im).convert("L")
        factor = 1
        while min(gray.size) // (factor * 2) >= side:
            factor *= 2
        return gray.reduce(factor) if factor > 1 else gray


# Crops defeat a global hash (a 10 % corner crop moves pHash+dHash by 25-45 bits, as far as an
# unrelated photo), so each image also gets the codes of eight 90 % windows: 10 % trimmed off the
# left, right, top or bottom, and the four 90 % x 90 % corners. A crop of one image then lands
# near a window of the other (bench/dedup.py shows what this does to recall and precision).
#
# Resizing and the DCT are linear, so a window's 8x8 low-frequency DCT block is
# (DCT8 · Ry) · G · (DCT8 · Rx)ᵀ, with Ry, Rx the Lanczos weights of the window's rows and
# columns of the reduced grey image G: two small matrix products per window on matrices cached
# per side length (photos share sizes), where each window used to cost Pillow resizes (cut from
# the frame resized 36/32 larger: 1/9 windows for pHash, 1/10 for dHash) and a DCT. Without the
# 8-bit rounding of a resized image the codes move by a bit or two (tests/pipeline/
# test_dedup_index.py); on bench/dedup.py's set exact 10 % windows raised group F1 from 0.997
# to 0.998, 1/9 windows lowered it to 0.996. Row 0 stays imagehash's own, bit for bit.
TRIM = 0.1
# each window as (row span, column span); span 0 = all, 1 = first TRIM dropped, 2 = last TRIM dropped
WINDOWS = ((0, 1), (0, 2), (1, 0), (2, 0), (2, 2), (2, 1), (1, 2), (1, 1))
_WINDOW_ROWS, _WINDOW_COLS = (np.array(span) for span in zip(*WINDOWS, strict=True))


def _lanczos_weights(n: int, out: int, trim: float) -> np.ndarray:
    """(3, out, n) resampling matrices from ``n`` pixels to ``out``, one per span (all, first
    ``trim`` dropped, last ``trim`` dropped): Pillow's LANCZOS (a=3, widened by the scale when
    shrinking, clipped at the edges, rows normalised)."""
    starts, ends = np.array([0.0, trim * n, 0.0]), np.array([n, n, (1 - trim) * n])
    scale = (ends - starts) / out  # (3,)
    fscale = np.maximum(scale, 1.0)
    centre = starts[:, None] + (np.arange(out) + 0.5) * scale[:, None]  # (3, out)
    x = (np.arange(n) + 0.5 - centre[:, :, None]) / fscale[:, None, None]  # (3, out, n)
    w = np.where(np.abs(x) < 3, np.sinc(x) * np.sinc(x / 3), 0.0)
    return w / w.sum(axis=2, keepdims=True)


@functools.lru_cache(maxsize=1024)
def _axis_matrices(n: int, dct_out: int, dhash_out: int) -> tuple[np.ndarray, np.ndarray]:
    """For one axis of ``n`` pixels: (3, 8, n) DCT-of-resize rows for pHash, and (3, dhash_out, n)
    resize rows for dHash."""
    k, m = np.arange(8)[:, None], np.arange(dct_out)[None, :]
    dct8 = np.cos(np.pi * k * (2 * m + 1) / (2 * dct_out))  # scipy's DCT-II rows 0..7, unscaled
    return dct8 @ _lanczos_weights(n, dct_out, TRIM), _lanczos_weights(n, dhash_out, TRIM)


def _bits_to_uint64(bits: np.ndarray) -> np.ndarray:
    """(k, 64) bools, row-major like ImageHash, -> (k,) uint64 equal to int(str(ImageHash), 16)."""
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


def _median_split(dct: np.ndarray) -> np.ndarray:
    """(k, 64) -> (k, 64) bools: above the row's median (``np.median``'s value: the mean of the
    two middle ones), without ``np.median``'s per-call overhead."""
    mid = np.sort(dct, axis=1)[:, 31:33]
    return dct > (mid[:, :1] + mid[:, 1:]) / 2


def hash_windows(im: Image.Image) -> np.ndarray:
    """(1 + N_WINDOWS, 2) uint64 codes (pHash, dHash) of the full frame and each window of a
    grayscale image. Row 0 equals ``imagehash.phash(im)`` / ``imagehash.dhash(im)`` bit for bit:
    the same Pillow resizes and the same scipy DCT."""
    frame = np.asarray(im.resize((32, 32), Image.LANCZOS), dtype=np.float64)
    frame_dct = scipy.fftpack.dct(scipy.fftpack.dct(frame, axis=0), axis=1)[:8, :8].reshape(1, 64)
    frame_d = np.asarray(im.resize((9, 8), Image.LANCZOS))
    g = np.asarray(im, dtype=np.float64)  # (h, w)
    h, w = g.shape
    py, dy = _axis_matrices(h, 32, 8)  # (3, 8, h), (3, 8, h)
    px, dx = _axis_matrices(w, 32, 9)  # (3, 8, w), (3, 9, w)
    rows, cols = _WINDOW_ROWS, _WINDOW_COLS
    # pHash: 8x8 low-frequency DCT of each window, above its median
    dct = np.matmul(np.matmul(py, g)[rows], px[cols].transpose(0, 2, 1)).reshape(N_WINDOWS, 64)
    ph = _median_split(np.concatenate([frame_dct, dct]))
    # dHash: the 9x8 resize of each window, left neighbour darker
    small = np.matmul(np.matmul(dy, g)[rows], dx[cols].transpose(0, 2, 1))  # (N_WINDOWS, 8, 9)
    dh = np.concatenate([(frame_d[:, 1:] > frame_d[:, :-1]).reshape(1, 64),
                         (small[:, :, 1:] > small[:, :, :-1]).reshape(N_WINDOWS, 64)])
    return np.stack([_bits_to_uint64(ph), _bits_to_uint64(dh)], axis=1)


def hash_image(data: bytes, max_pixels: int = 64_000_000) -> np.ndarray:
    """(1 + N_WINDOWS, 2) int64 codes of image bytes: row 0 is the image's (pHash, dHash), the
    rest its windows'. Signed, as the catalog stores them. Raises ``BadImage``."""
    return hash_windows(reduced_gray(data, max_pixels)).view(np.int64)
