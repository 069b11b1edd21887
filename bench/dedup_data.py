"""The near-duplicate set for ``bench/dedup.py``: offline photos, each with transformed copies.

Sources: the colour photos that ship with scikit-image, scikit-learn and matplotlib, plus
``../shared/corpus/voc150`` when present. Every base photo is saved as JPEG q95 with seven
copies, one per transformation the dedup issue names (parameters drawn from a seeded RNG):

- ``jpeg``: re-encoded at quality 30..90
- ``resize``: scaled 0.5..2x (Lanczos), never within 10 % of 1x
- ``crop``: 90..97 % of width and height kept, at a random offset (corner crops included)
- ``bright``: every channel shifted by ±(15..40) levels
- ``rotate``: ±(1..3)° and cropped to the largest upright rectangle inside
- ``png``: the base re-saved as PNG (a format change)
- ``wm``: a semi-transparent text watermark across the middle and a small one in a corner

Ground truth: every pair inside a group of eight is a duplicate; every other pair is not.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

VOC150 = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "voc150"
TRANSFORMS = ("jpeg", "resize", "crop", "bright", "rotate", "png", "wm")


def offline_photos() -> dict[str, Image.Image]:
    """Everyday colour photos that load without the network."""
    import matplotlib.cbook
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = {
        "astronaut": skimage.data.astronaut(),
        "chelsea": skimage.data.chelsea(),
        "coffee": skimage.data.coffee(),
        "rocket": skimage.data.rocket(),
        "motorcycle": skimage.data.stereo_motorcycle()[0],
    }
    sk = load_sample_images()
    for name, arr in zip(("china", "flower"), sk.images, strict=True):
        photos[name] = arr
    out = {k: Image.fromarray(v).convert("RGB") for k, v in photos.items()}
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as fh:
        out["grace_hopper"] = Image.open(fh).convert("RGB")
    return out


def base_photos(use_voc: bool = True, limit: int | None = None) -> dict[str, Image.Image]:
    photos = offline_photos()
    if use_voc and VOC150.is_dir():
        for p in sorted(VOC150.glob("*.jpg")):
            photos[f"voc{p.stem}"] = Image.open(p).convert("RGB")
    names = sorted(photos)[:limit] if limit else sorted(photos)
    return {n: photos[n] for n in names}


def watermark(im: Image.Image, rng: np.random.Generator, text: str = "(c) SAMPLE") -> Image.Image:
    w, h = im.size
    layer = Image.new("RGBA", im.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    size = max(10, int(min(w, h) * rng.uniform(0.10, 0.16)))
    font = ImageFont.load_default(size=size)
    box = draw.textbbox((0, 0), text, font=font)
    tw, th = box[2] - box[0], box[3] - box[1]
    alpha = int(rng.uniform(90, 140))
    colour = (255, 255, 255) if rng.random() < 0.5 else (20, 20, 20)
    outline = (20, 20, 20) if colour[0] > 128 else (235, 235, 235)
    xy = ((w - tw) // 2, (h - th) // 2)
    draw.text(xy, text, font=font, fill=colour + (alpha,), stroke_width=max(1, size // 14), stroke_fill=outline + (alpha,))
    small = ImageFont.load_default(size=max(8, size // 3))
    draw.text((int(w * 0.05), int(h * 0.88)), "stock-photo.example", font=small, fill=(255, 255, 255, 160))
    return Image.alpha_composite(im.convert("RGBA"), layer).convert("RGB")


def rotate_crop(im: Image.Image, degrees: float) -> Image.Image:
    """Rotate and keep the largest upright rectangle holding no fill (what a 'straighten' does)."""
    w, h = im.size
    rot = im.rotate(degrees, resample=Image.BICUBIC, expand=False)
    a = math.radians(abs(degrees))
    # largest axis-aligned rectangle inside the rotated w x h rectangle (same aspect ratio)
    scale = 1.0 / (math.cos(a) + math.sin(a) * max(w / h, h / w))
    cw, ch = int(w * scale), int(h * scale)
    left, top = (w - cw) // 2, (h - ch) // 2
    return rot.crop((left, top, left + cw, top + ch))


def transform(im: Image.Image, kind: str, rng: np.random.Generator) -> tuple[Image.Image, str, dict]:
    """One transformed copy: ``(image, file format, parameters)``."""
    w, h = im.size
    if kind == "jpeg":
        q = int(rng.integers(30, 91))
        return im, "JPEG", {"quality": q}
    if kind == "resize":
        f = float(rng.choice([rng.uniform(0.5, 0.9), rng.uniform(1.1, 2.0)]))
        return im.resize((max(8, round(w * f)), max(8, round(h * f))), Image.LANCZOS), "JPEG", {"factor": f, "quality": 90}
    if kind == "crop":
        kw, kh = rng.uniform(0.90, 0.97), rng.uniform(0.90, 0.97)
        cw, ch = int(w * kw), int(h * kh)
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return im.crop((left, top, left + cw, top + ch)), "JPEG", {"keep": [kw, kh], "at": [left, top], "quality": 90}
    if kind == "bright":
        d = int(rng.integers(15, 41)) * (1 if rng.random() < 0.5 else -1)
        arr = np.clip(np.asarray(im, dtype=np.int16) + d, 0, 255).astype(np.uint8)
        return Image.fromarray(arr), "JPEG", {"shift": d, "quality": 90}
    if kind == "rotate":
        deg = float(rng.uniform(1, 3)) * (1 if rng.random() < 0.5 else -1)
        return rotate_crop(im, deg), "JPEG", {"degrees": deg, "quality": 90}
    if kind == "png":
        return im, "PNG", {}
    if kind == "wm":
        return watermark(im, rng), "JPEG", {"quality": 90}
    raise ValueError(kind)


def save(im: Image.Image, path: Path, fmt: str, params: dict) -> Path:
    path = path.with_suffix(".png" if fmt == "PNG" else ".jpg")
    if fmt == "PNG":
        im.save(path, "PNG", compress_level=3)
    else:
        im.save(path, "JPEG", quality=int(params.get("quality", 95)))
    return path


def make_dataset(out_dir: Path, seed: int = 0, use_voc: bool = True, limit: int | None = None,
                 transforms: tuple[str, ...] = TRANSFORMS) -> list[dict]:
    """Write the set under ``out_dir`` (images only) and return one record per file:
    ``{"file", "group", "kind", "params"}``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records = []
    for name, im in base_photos(use_voc, limit).items():
        records.append({"file": save(im, out_dir / f"{name}-base", "JPEG", {"quality": 95}).name,
                        "group": name, "kind": "base", "params": {"quality": 95}})
        for kind in transforms:
            t, fmt, params = transform(im, kind, rng)
            records.append({"file": save(t, out_dir / f"{name}-{kind}", fmt, params).name,
                            "group": name, "kind": kind, "params": params})
    return records
