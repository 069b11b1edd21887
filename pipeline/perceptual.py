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
HASH_IMPL = f"imagehash-{imagehash.__version__}/phash64+dhash64/draft{REDUCED_SIDE}"


def to_signed(v: int) -> int:
    """uint64 -> int64 (SQLite INTEGER and PostgreSQL BIGINT are signed)."""
    return v - (1 << 64) if v >= (1 << 63) else v


def to_unsigned(v: int) -> int:
    return v + (1 << 64) if v < 0 else v


def _hash_int(h: imagehash.ImageHash) -> int:
    return int.from_bytes(np.packbits(h.hash.ravel()).tobytes(), "big")


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


def hash_image(data: bytes, max_pixels: int = 64_000_000) -> tuple[int, int]:
    """``(phash, dhash)`` of image bytes as signed int64. Raises ``BadImage``."""
    im = reduced_gray(data, max_pixels)
    return to_signed(_hash_int(imagehash.phash(im))), to_signed(_hash_int(imagehash.dhash(im)))
