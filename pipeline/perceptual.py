"""Perceptual hashes of image bytes: 64-bit pHash and dHash from imagehash, as signed int64.

Hashes only compare when they were made the same way (imagehash #181: another resize path moves
hashes by ~7 bits), so every hash is stored with ``HASH_IMPL``, which names the library, its
version and the reduction used here, and dedup never compares hashes of different ``hash_impl``.

Decoding dominates the cost, so images are decoded reduced: a JPEG with Pillow's draft mode
(the DCT-domain 1/2, 1/4, 1/8 downscale, straight to grayscale), every other format with the same
power-of-two box reduction, so a PNG and a JPEG of one photo take the same path to the hash.
"""

from __future__ import annotations

import io
import warnings

import imagehash
import numpy as np
import scipy.fftpack  # noqa: F401  imagehash.phash imports it on first use; here, forked workers share it
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.images import ALLOWED_FORMATS, BadImage, sniff_format

# The reduced image keeps at least this many pixels on its short side. pHash resizes to 32x32
# anyway; 32 lets a JPEG decode at 1/8 scale, and separated distinct photos best (bench/dedup.py).
REDUCED_SIDE = 32
N_WINDOWS = 8  # crop windows per image (see hash_windows)
HASH_IMPL = f"imagehash-{imagehash.__version__}/phash64+dhash64/draft{REDUCED_SIDE}+win{N_WINDOWS}r"


def to_signed(v: int) -> int:
    """uint64 -> int64 (SQLite INTEGER and PostgreSQL BIGINT are signed)."""
    return v - (1 << 64) if v >= (1 << 63) else v


def to_unsigned(v: int) -> int:
    return v + (1 << 64) if v < 0 else v


def reduced_gray(data: bytes, max_pixels: int = 64_000_000, side: int = REDUCED_SIDE) -> Image.Image:
    """Decode ``data`` to a grayscale image whose short side is REDUCED_SIDE..2*REDUCED_SIDE-1
    (or the original size when smaller), EXIF orientation applied. Raises ``BadImage``."""
    if sniff_format(data[:16]) is None:
        raise BadImage("not-image", f"unrecognised leading bytes {data[:8]!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            w, h = im.size
            if w * h > max_pixels:
                raise BadImage("too-many-pixels", f"{w}x{h} exceeds {max_pixels} pixels")
            if im.format == "JPEG":
                im.draft("L", (side, side))
            im = ImageOps.exif_transpose(im)
            im = im.convert("L")
            factor = 1
            while min(im.size) // (factor * 2) >= side:
                factor *= 2
            if factor > 1:
                im = im.reduce(factor)
            return im
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage("too-many-pixels", str(exc)) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadImage("corrupt", f"{type(exc).__name__}: {exc}") from exc


# Crops defeat a global hash (a 10 % corner crop moves pHash+dHash by 25-45 bits, as far as an
# unrelated photo), so each image also gets the codes of eight ~90 % windows: 10 % trimmed off the
# left, right, top or bottom, and the four 90 % x 90 % corners. A crop of one image then lands
# near a window of the other (bench/dedup.py shows what this does to recall and precision).
# A window is cut from the image resized 1/0.9 larger rather than resized on its own: the same
# pixels within rounding, and three resizes per hash instead of eight (hashing is 2x faster).
def _gray_array(im: Image.Image, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(im.resize(size, Image.LANCZOS))


def _windows(full: np.ndarray, wide: np.ndarray, tall: np.ndarray, big: np.ndarray, k: int, j: int) -> np.ndarray:
    """Stack the full frame and the eight windows (trim left, right, top, bottom; corners TL, TR,
    BL, BR); ``wide``/``tall``/``big`` are the frame resized ``k`` columns / ``j`` rows / both
    larger than ``full``."""
    h, w = full.shape
    return np.stack([
        full, wide[:, k:], wide[:, :w], tall[j:, :], tall[:h, :],
        big[:h, :w], big[:h, k:], big[j:, :w], big[j:, k:],
    ])


def _bits_to_uint64(bits: np.ndarray) -> np.ndarray:
    """(k, 64) bools, row-major like ImageHash, -> (k,) uint64 equal to int(str(ImageHash), 16)."""
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


def hash_windows(im: Image.Image) -> np.ndarray:
    """(1 + N_WINDOWS, 2) uint64 codes (pHash, dHash) of the full frame and each window of a
    grayscale image. Row 0 equals ``imagehash.phash(im)`` / ``imagehash.dhash(im)`` bit for bit:
    the same resizes and the same scipy DCT, batched over the windows."""
    p = _windows(_gray_array(im, (32, 32)), _gray_array(im, (36, 32)), _gray_array(im, (32, 36)),
                 _gray_array(im, (36, 36)), 4, 4)
    dct = scipy.fftpack.dct(scipy.fftpack.dct(p, axis=1), axis=2)[:, :8, :8].reshape(len(p), 64)
    ph = dct > np.median(dct, axis=1, keepdims=True)
    d = _windows(_gray_array(im, (9, 8)), _gray_array(im, (10, 8)), _gray_array(im, (9, 9)),
                 _gray_array(im, (10, 9)), 1, 1)
    dh = (d[:, :, 1:] > d[:, :, :-1]).reshape(len(d), 64)
    return np.stack([_bits_to_uint64(ph), _bits_to_uint64(dh)], axis=1)


def hash_image(data: bytes, max_pixels: int = 64_000_000) -> np.ndarray:
    """(1 + N_WINDOWS, 2) int64 codes of image bytes: row 0 is the image's (pHash, dHash), the
    rest its windows'. Signed, as the catalog stores them. Raises ``BadImage``."""
    return hash_windows(reduced_gray(data, max_pixels)).view(np.int64)
