"""Write a cleaned image back in its input's own terms: format, mode, size, EXIF orientation,
ICC profile and metadata (``unmark clean-files``).

The remover works on what a viewer shows: the RGB pixels with the EXIF orientation applied
(``pipeline.images.open_image``). Writing back undoes that: the cleaned pixels are turned back
to the stored orientation (the EXIF block is kept as it was, so the output shows the same way),
converted to the input's mode (grey, palette, CMYK, 16-bit, alpha kept), and taken only where the
cleaning changed something; every other pixel is the input's own value, in its own mode. The
file is then encoded in the input's format (by its bytes, whatever its name says) with its ICC
profile, EXIF, and the format's settings (JPEG quantisation tables and subsampling, PNG
transparency and text, WebP losslessness, TIFF compression). Lossy formats are re-encoded, so
their untouched pixels move by the codec's error, at the input's own quality.

A mask is written as an 8-bit greyscale PNG (255: the cleaned region, grey: the feather) in the
stored orientation with the same EXIF block, so it lies on its image in any viewer. Every file
is written atomically (``atomic_write``), the run's ``manifest.json``/``manifest.csv`` too.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, JpegImagePlugin, PngImagePlugin

from pipeline.images import ALLOWED_FORMATS, inspect_image

ORIENTATION = 0x0112
# Image.Transpose that undoes ImageOps.exif_transpose for each EXIF orientation
UNDO = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_270}
TIFF_COMPRESSIONS = {"raw", "tiff_lzw", "tiff_deflate", "tiff_adobe_deflate", "packbits"}


class NotWritable(ValueError):
    """The input cannot be written back in its own format and mode; ``reason`` says why."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass
class Original:
    """An input file's first frame as stored, and what writing it back needs."""

    image: Image.Image
    format: str
    frames: int
    orientation: int
    info: dict = field(default_factory=dict)
    lossless_webp: bool = False

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def read_original(data: bytes, max_pixels: int) -> Original:
    """Validate ``data`` (``BadImage`` as the import judges it) and open its first frame."""
    info = inspect_image(data, max_pixels)
    im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    frames = int(getattr(im, "n_frames", 1) or 1)
    im.load()
    orientation = int(im.getexif().get(ORIENTATION, 1) or 1)
    lossless = info.format == "WEBP" and b"VP8L" in data[:64]
    return Original(im, info.format, frames, orientation if orientation in UNDO else 1, dict(im.info), lossless)


def to_stored(im: Image.Image, orientation: int) -> Image.Image:
    """A displayed (EXIF-transposed) image back in the stored orientation."""
    return im.transpose(UNDO[orientation]) if orientation in UNDO else im


def _like(rgb: Image.Image, orig: Image.Image) -> Image.Image:
    """``rgb`` (the cleaned pixels, stored orientation) in ``orig``'s mode, its alpha kept."""
    mode = orig.mode
    if mode == "RGB":
        return rgb
    if mode in ("RGBA", "LA"):
        out = rgb.convert(mode[0] if mode == "LA" else "RGB").convert(mode)
        out.putalpha(orig.getchannel("A"))
        return out
    if mode in ("P", "PA"):
        out = rgb.quantize(palette=orig.convert("P") if mode == "PA" else orig, dither=Image.Dither.NONE)
        if mode == "PA":
            out = out.convert("PA")
            out.putalpha(orig.getchannel("A"))
        return out
    if mode.startswith("I;16") or mode == "I":
        # open_image scaled 16-bit values by 255/65535 (8-bit data held in a wide mode: by 1)
        wide = np.asarray(orig).max() > 255
        grey = np.asarray(rgb.convert("L"), np.uint16) * (257 if wide else 1)
        return Image.fromarray(grey.astype(np.int32 if mode == "I" else np.uint16)).convert(mode)
    if mode in ("L", "1", "CMYK"):
        return rgb.convert(mode, dither=Image.Dither.NONE)
    raise NotWritable("mode", f"cannot write {mode} pixels back")


def compose(orig: Original, cleaned: np.ndarray, changed: np.ndarray) -> Image.Image:
    """The output image: ``orig`` where ``changed`` (HxW bool, displayed orientation) is False, the
    ``cleaned`` pixels (HxWx3 uint8, displayed orientation) in ``orig``'s mode where it is True."""
    rgb = to_stored(Image.fromarray(np.ascontiguousarray(cleaned[..., :3]), "RGB"), orig.orientation)
    where = to_stored(Image.fromarray(changed.astype(np.uint8) * 255, "L"), orig.orientation)
    if rgb.size != orig.size:
        raise NotWritable("size", f"cleaned {rgb.size} does not match the input's {orig.size}")
    base = orig.image
    if base.mode == "I;16B":  # composite wants one byte order
        base = base.convert("I;16")
    out = Image.composite(_like(rgb, base), base, where)
    if base.mode in ("P", "PA") and base.getpalette() is not None:
        out.putpalette(base.getpalette(rawmode="RGB"))
    return out


def _metadata(orig: Original) -> dict:
    kw = {}
    if orig.info.get("icc_profile"):
        kw["icc_profile"] = orig.info["icc_profile"]
    exif = orig.info.get("exif")
    if exif:
        kw["exif"] = exif
    elif len(orig.image.getexif()):
        kw["exif"] = orig.image.getexif().tobytes()
    if "dpi" in orig.info and orig.format in ("JPEG", "PNG", "TIFF"):
        kw["dpi"] = orig.info["dpi"]
    return kw


def encode_like(orig: Original, out: Image.Image) -> bytes:
    """``out`` encoded in ``orig``'s format with its metadata and settings."""
    kw = _metadata(orig)
    fmt = orig.format
    src = orig.image
    if fmt == "JPEG":
        kw["qtables"] = getattr(src, "quantization", None) or None
        sampling = JpegImagePlugin.get_sampling(src) if kw["qtables"] else -1
        kw["subsampling"] = sampling if sampling != -1 else 0
        kw["progressive"] = bool(orig.info.get("progressive") or orig.info.get("progression"))
        if not kw["qtables"]:
            kw.pop("qtables")
            kw["quality"] = 95
    elif fmt == "PNG":
        if "transparency" in orig.info:
            kw["transparency"] = orig.info["transparency"]
        text = getattr(src, "text", None) or {}
        if text:
            png = PngImagePlugin.PngInfo()
            for k, v in text.items():
                png.add_text(k, v)
            kw["pnginfo"] = png
    elif fmt == "GIF":
        for k in ("transparency", "background"):
            if k in orig.info:
                kw[k] = orig.info[k]
        kw.pop("icc_profile", None)
    elif fmt == "WEBP":
        kw.update(lossless=True) if orig.lossless_webp else kw.update(quality=95)
    elif fmt == "TIFF":
        comp = orig.info.get("compression")
        kw["compression"] = comp if comp in TIFF_COMPRESSIONS else "tiff_lzw"
    elif fmt == "BMP":
        kw = {}
    buf = io.BytesIO()
    out.save(buf, fmt, **kw)
    return buf.getvalue()


def mask_like(orig: Original, weights: np.ndarray) -> bytes:
    """The blend weights (HxW in [0, 1], displayed orientation) as a PNG beside the image."""
    grey = Image.fromarray(np.clip(np.rint(np.asarray(weights, np.float32) * 255.0), 0, 255).astype(np.uint8), "L")
    grey = to_stored(grey, orig.orientation)
    kw = {}
    if orig.orientation != 1:
        exif = Image.Exif()
        exif[ORIENTATION] = orig.orientation
        kw["exif"] = exif.tobytes()
    buf = io.BytesIO()
    grey.save(buf, "PNG", **kw)
    return buf.getvalue()


# --- the manifest (``unmark clean-files``) ----------------------------------------------------

METRIC_COLUMNS = ("psnr_vs_input", "ssim_vs_input", "changed_fraction", "score_after", "mask_threshold",
                  "mask_dilate", "mask_feather")


def write_manifest(data: list[dict[str, Any]], columns: Sequence[str], out_dir: Path) -> dict[str, str]:
    """``manifest.json`` (the rows, a list) and ``manifest.csv`` (``columns``, the main metrics as
    columns too, and all of them as JSON in ``metrics``) in ``out_dir``."""
    atomic_write(out_dir / "manifest.json", (json.dumps(data, indent=2, default=str) + "\n").encode())
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=[*columns, *METRIC_COLUMNS])
    w.writeheader()
    for r in data:
        m = r["metrics"]
        w.writerow({**r, **{k: m.get(k) for k in METRIC_COLUMNS}, "metrics": json.dumps(m, default=str) if m else ""})
    atomic_write(out_dir / "manifest.csv", buf.getvalue().encode())
    return {"manifest": str(out_dir / "manifest.json"), "manifest_csv": str(out_dir / "manifest.csv")}


def atomic_write(path: Path, data: bytes) -> None:
    """``data`` to ``path`` by a rename: a reader sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
