"""The report's pictures, written once into ``reports/assets/`` and reused by every later report.

- ``thumb``: a blob as a JPEG thumbnail (long side ``THUMB``), named by blob key;
- ``overlay``: the image with its predicted mask (probability > 0.5) tinted red;
- ``zoom``: the marked region (the mask's bounding box, padded by ``PAD``) cut from the image
  before and after cleaning at full resolution, side by side; a region longer than ``ZOOM_MAX``
  is scaled down to it (its scale is shown). A sidecar JSON keeps the region, so a report over
  thousands of cleanings decodes each mask once, ever.

An unreadable blob gives ``None`` (the page shows a missing picture), never an exception: the
report is about the catalog, and one bad blob must not hide the rest.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from pipeline.images import open_image
from storage import BlobStore

THUMB = 320  # longest side of a thumbnail, px
ZOOM_MAX = 384  # longest side of a zoomed crop, px (larger regions are scaled down to it)
ZOOM_SHOW = 200  # a smaller crop is shown magnified a whole number of times up to about this, px
PAD = 0.15  # padding around the marked region, as a fraction of its longer side (at least 8 px)


def write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jpeg(im: PILImage.Image, quality: int = 88) -> bytes:
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = PILImage.new("RGB", im.size, (255, 255, 255))  # flatten onto white for a JPEG
        bg.paste(im, mask=im.getchannel("A"))
        im = bg
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _digest(*keys: str | None) -> str:
    return hashlib.sha256("|".join(k or "" for k in keys).encode()).hexdigest()[:32]


def marked_box(mask: PILImage.Image, size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """The padded bounding box (x0, y0, x1, y1) of ``mask`` > 127, in the pixels of an image of
    ``size`` (w, h) (the mask is scaled to it); ``None`` when nothing is marked."""
    m = np.asarray(mask.convert("L")) > 127
    if not m.any():
        return None
    ys, xs = np.nonzero(m)
    sx, sy = size[0] / m.shape[1], size[1] / m.shape[0]
    x0, x1 = xs.min() * sx, (xs.max() + 1) * sx
    y0, y1 = ys.min() * sy, (ys.max() + 1) * sy
    pad = max(8.0, PAD * max(x1 - x0, y1 - y0))
    return (max(0, int(x0 - pad)), max(0, int(y0 - pad)), min(size[0], int(np.ceil(x1 + pad))),
            min(size[1], int(np.ceil(y1 + pad))))


@dataclass
class Zoom:
    before: str
    after: str
    box: tuple[int, int, int, int]
    scale: float  # 1.0: full resolution

    @property
    def size(self) -> tuple[int, int]:
        """The crops' size in pixels (the region's, times ``scale``)."""
        x0, y0, x1, y1 = self.box
        return max(1, round((x1 - x0) * self.scale)), max(1, round((y1 - y0) * self.scale))

    @property
    def magnify(self) -> int:
        """A whole-number factor to show a small crop at: its pixels stay sharp squares."""
        return max(1, ZOOM_SHOW // max(self.size))

    @property
    def note(self) -> str:
        x0, y0, x1, y1 = self.box
        size = f"{x1 - x0}×{y1 - y0} px at ({x0}, {y0})"
        shown = f", shown {self.magnify}×" if self.magnify > 1 else ""
        return (f"{size}, full resolution" if self.scale == 1.0 else f"{size}, scaled 1:{1 / self.scale:.1f}") + shown


class Assets:
    """Pictures of blobs in ``folder`` (linked as ``assets/NAME``), written once."""

    def __init__(self, folder: Path, blobs: BlobStore, max_pixels: int):
        self.folder, self.blobs, self.max_pixels = folder, blobs, max_pixels
        self._decoded: dict[str, PILImage.Image] = {}  # the last few blobs: a row's are read once
        self._zooms: dict[str, dict] = {}  # sidecars read this report (each row is on two pages)
        folder.mkdir(parents=True, exist_ok=True)

    def _open(self, key: str) -> PILImage.Image:
        if key not in self._decoded:
            if len(self._decoded) >= 4:
                self._decoded.clear()
            im = open_image(self.blobs.get(key), self.max_pixels)
            im.load()
            self._decoded[key] = im
        return self._decoded[key]

    def thumb(self, key: str | None) -> str | None:
        if not key:
            return None
        name = key.replace("/", "_")[-64:] + ".jpg"
        if not (self.folder / name).exists():
            try:
                im = self._open(key).copy()
            except Exception:  # noqa: BLE001 - an unreadable blob shows as a missing picture
                return None
            im.thumbnail((THUMB, THUMB))
            write_atomic(self.folder / name, _jpeg(im))
        return f"assets/{name}"

    def overlay(self, image_key: str | None, mask_key: str | None) -> str | None:
        """A thumbnail of the image with the predicted mask (probability > 0.5) tinted red."""
        if not image_key or not mask_key:
            return None
        name = f"mask_{_digest(image_key, mask_key)}.jpg"
        if not (self.folder / name).exists():
            try:
                im = self._open(image_key).convert("RGB")
                mask = self._open(mask_key).convert("L")
            except Exception:  # noqa: BLE001 - an unreadable blob shows as a missing picture
                return None
            if mask.size != im.size:
                mask = mask.resize(im.size)
            im.paste(PILImage.new("RGB", im.size, (230, 20, 20)), mask=mask.point(lambda v: 150 if v > 127 else 0))
            im.thumbnail((THUMB, THUMB))
            write_atomic(self.folder / name, _jpeg(im))
        return f"assets/{name}"

    def zoom(self, image_key: str | None, after_key: str | None, mask_key: str | None) -> Zoom | None:
        """The marked region before and after, or ``None`` (no mask, nothing marked, unreadable)."""
        if not image_key or not after_key or not mask_key:
            return None
        stem = f"zoom_{_digest(image_key, after_key, mask_key)}"
        info = self._zooms.get(stem)
        if info is None:
            side = self.folder / f"{stem}.json"
            info = json.loads(side.read_text()) if side.exists() else None
            if info is None or (info.get("box") is not None and not all(
                    (self.folder / f"{stem}_{w}.jpg").exists() for w in ("before", "after"))):
                try:
                    info = self._draw_zoom(stem, image_key, after_key, mask_key)
                except Exception:  # noqa: BLE001 - an unreadable blob shows as a missing picture
                    return None
                write_atomic(side, json.dumps(info).encode())
            self._zooms[stem] = info
        if info.get("box") is None:
            return None
        return Zoom(f"assets/{stem}_before.jpg", f"assets/{stem}_after.jpg", tuple(info["box"]), info["scale"])

    def _draw_zoom(self, stem: str, image_key: str, after_key: str, mask_key: str) -> dict:
        before = self._open(image_key)
        box = marked_box(self._open(mask_key), before.size)
        if box is None:
            return {"box": None}
        after = self._open(after_key)
        w, h = box[2] - box[0], box[3] - box[1]
        scale = min(1.0, ZOOM_MAX / max(w, h))
        for im, which in ((before, "before"), (after, "after")):
            sx, sy = im.size[0] / before.size[0], im.size[1] / before.size[1]  # an output of another size
            crop = im.crop((round(box[0] * sx), round(box[1] * sy), round(box[2] * sx), round(box[3] * sy)))
            if scale < 1.0:
                crop = crop.resize(Zoom("", "", box, scale).size, PILImage.LANCZOS)
            write_atomic(self.folder / f"{stem}_{which}.jpg", _jpeg(crop, quality=92))
        return {"box": list(box), "scale": scale}
