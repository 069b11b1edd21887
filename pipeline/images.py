"""The one way the pipeline judges and opens untrusted image bytes.

Content is judged by its bytes (magic numbers), never by a Content-Type header or a file name.
Pillow opens only an allowlist of formats, the pixel count is checked from the header before
anything is decoded (decompression bombs), and the whole image is decoded once so truncated
files are caught here rather than later in the pipeline. A JPEG is decoded at 1/8 scale (Pillow's
``draft``): libjpeg still reads and entropy-decodes every block to the end of the data, so a
truncated or undecodable JPEG fails the same way, for a third of the CPU.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
MIME = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}


class BadImage(ValueError):
    """Bytes that are not an acceptable image; ``reason`` is a short machine-readable word."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class ImageInfo:
    format: str
    mime: str
    width: int
    height: int


def sniff_format(head: bytes) -> str | None:
    """The image format named by the first bytes, or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:2] == b"BM":
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    return None


@contextmanager
def guarded_open(data: bytes, max_pixels: int = 64_000_000) -> Iterator[tuple[str, Image.Image]]:
    """``(format, image)`` of ``data`` opened lazily by Pillow, refused before any decoding when
    its magic bytes, format or pixel count are wrong; any decode error inside the block becomes a
    ``BadImage`` (``not-image``, ``too-many-pixels`` or ``corrupt``)."""
    fmt = sniff_format(data[:16])
    if fmt is None:
        raise BadImage("not-image", f"unrecognised leading bytes {data[:8]!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            w, h = im.size
            if w * h > max_pixels:
                raise BadImage("too-many-pixels", f"{w}x{h} exceeds {max_pixels} pixels")
            yield fmt, im
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage("too-many-pixels", str(exc)) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadImage("corrupt", f"{type(exc).__name__}: {exc}") from exc


def inspect_image(data: bytes, max_pixels: int = 64_000_000, min_side: int = 1) -> ImageInfo:
    """Validate ``data`` as an image and return its format and size, or raise ``BadImage``.

    Reasons: ``not-image`` (magic bytes), ``format`` (not allowed), ``too-many-pixels`` (bomb),
    ``too-small``, ``corrupt`` (truncated or undecodable)."""
    with guarded_open(data, max_pixels) as (fmt, im):
        w, h = im.size
        if min(w, h) < min_side:
            raise BadImage("too-small", f"{w}x{h} below {min_side}px")
        if fmt == "JPEG":
            im.draft(im.mode, (max(1, w // 8), max(1, h // 8)))  # every block is still read
        _limit_and_load(im, max_pixels)
    return ImageInfo(fmt, MIME[fmt], w, h)


def _limit_and_load(im: Image.Image, max_pixels: int) -> None:
    old = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = max_pixels
        im.load()
        # Animated formats: every frame is checked by the first one's size; decoding one is enough.
    finally:
        Image.MAX_IMAGE_PIXELS = old


def open_image(data: bytes, max_pixels: int = 64_000_000) -> Image.Image:
    """Decode validated bytes to an RGB or RGBA Pillow image with EXIF orientation applied."""
    inspect_image(data, max_pixels)
    return displayed(Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS))


def displayed(im: Image.Image) -> Image.Image:
    """An opened image as the pipeline sees it: EXIF orientation applied, RGB or RGBA."""
    from PIL import ImageOps

    im = ImageOps.exif_transpose(im)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        return im.convert("RGBA")
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        import numpy as np

        arr = np.asarray(im, dtype=np.float32)
        arr = np.clip(arr / (65535.0 if arr.max() > 255 else 255.0) * 255.0, 0, 255).astype("uint8")
        return Image.fromarray(arr).convert("RGB")
    return im.convert("RGB")
