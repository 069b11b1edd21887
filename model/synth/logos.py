"""Logo marks: procedural emblems, invented wordmarks, and RGBA logos from a folder.

Pictogram logos (human-designed icons composed with a name) live in ``model.synth.icons``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from model.synth.fonts import FontFace
from model.synth.layers import PALETTE


def procedural_logo(rng: np.random.Generator, font: FontFace | None, px: int = 160) -> np.ndarray:
    """A multi-colour emblem (RGBA uint8): a base shape, an inner shape or initials, sometimes a
    ring, in two or three palette colours."""
    img = Image.new("RGBA", (px, px), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    colours = PALETTE[rng.choice(len(PALETTE), size=3, replace=False)]
    c = [tuple(int(v * 255) for v in col) + (255,) for col in colours]
    m = px // 16
    base = rng.choice(["circle", "square", "polygon", "shield"])
    if base == "circle":
        d.ellipse((m, m, px - m, px - m), fill=c[0])
    elif base == "square":
        d.rounded_rectangle((m, m, px - m, px - m), radius=int(px * rng.uniform(0.05, 0.3)), fill=c[0])
    elif base == "polygon":
        d.regular_polygon((px / 2, px / 2, px / 2 - m), int(rng.integers(3, 9)), rotation=float(rng.uniform(0, 360)),
                          fill=c[0])
    else:
        d.polygon([(m, m), (px - m, m), (px - m, px * 0.55), (px / 2, px - m), (m, px * 0.55)], fill=c[0])
    if rng.random() < 0.4:
        w = max(2, px // 20)
        d.ellipse((3 * m, 3 * m, px - 3 * m, px - 3 * m), outline=c[2], width=w)
    inner = rng.choice(["initials", "star", "bars"]) if font else rng.choice(["star", "bars"])
    if inner == "initials":
        letters = "".join(rng.choice(list("ABCDEFGHKMNPRSTWZ©"), size=int(rng.integers(1, 3))))
        f = font.load(int(px * (0.5 if len(letters) == 1 else 0.38)))
        d.text((px / 2, px / 2), letters, font=f, fill=c[1], anchor="mm")
    elif inner == "star":
        r = px * rng.uniform(0.2, 0.32)
        n = int(rng.integers(4, 7))
        pts = [(px / 2 + (r if i % 2 == 0 else r * 0.45) * math.cos(math.pi * i / n - math.pi / 2),
                px / 2 + (r if i % 2 == 0 else r * 0.45) * math.sin(math.pi * i / n - math.pi / 2))
               for i in range(2 * n)]
        d.polygon(pts, fill=c[1])
    else:
        bw = px // 10
        for i in range(int(rng.integers(2, 4))):
            x = px * 0.3 + i * bw * 1.6
            d.rectangle((x, px * 0.3, x + bw, px * 0.7), fill=c[1])
    return np.asarray(img)


# Invented names: wordmarks look like platform / agency watermarks without copying a real one.
BRAND_WORDS = {
    "english": ("pixora.com", "snapstock", "fotobox", "imgly.net", "clipzone", "photohub", "@lens_daily",
                "viewfinder.io", "stockly"),
    "chinese": ("图片之家", "影像库", "快照网", "视觉素材"),
    "japanese": ("フォトライブラリ", "写真素材"),
    "korean": ("포토뱅크", "사진창고"),
    "russian": ("фотосток", "Снимок.ру"),
}


def wordmark_logo(rng: np.random.Generator, script_fonts: dict[str, list[FontFace]], px: int = 64) -> np.ndarray:
    """An icon beside a brand name, sometimes over a smaller handle line: the white (or
    two-colour) wordmarks that social and stock platforms stamp on images. Hard-edged alpha."""
    scripts = [s for s in BRAND_WORDS if s in script_fonts]
    script = scripts[int(rng.integers(len(scripts)))]
    words = BRAND_WORDS[script]
    name = words[int(rng.integers(len(words)))]
    faces = script_fonts[script]
    font = faces[int(rng.integers(len(faces)))].load(px)
    left, top, right, bottom = font.getbbox(name)
    tw, th = right - left, bottom - top
    icon_px = int(th * rng.uniform(1.1, 1.6))
    handle = rng.random() < 0.35
    latin = script_fonts.get("english", [None])[0]
    small = latin.load(max(8, px // 3)) if (handle and latin) else None
    line = f"@{''.join(rng.choice(list('abcdefghkmnprstuvwxyz'), size=6))}{int(rng.integers(100, 9999))}"
    sh = (small.getbbox(line)[3] + 4) if small else 0
    gap = px // 5
    W = icon_px + gap + tw + 8
    H = max(icon_px, th + sh) + 8
    img = Image.new("RGBA", (W, H), (0, 0, 0, 0))
    mode = str(rng.choice(["white", "colour", "two"], p=[0.55, 0.2, 0.25]))
    ink = (255, 255, 255) if mode != "colour" else tuple(int(v * 255) for v in PALETTE[int(rng.integers(5, len(PALETTE)))])
    icon = Image.fromarray(procedural_logo(rng, None, px=icon_px))
    if mode != "two":  # one colour: the icon's base shape in the ink colour, its inner details cut out
        arr = np.asarray(icon)
        opaque = arr[..., 3] >= 128
        colours, counts = np.unique(arr[opaque][:, :3], axis=0, return_counts=True)
        base = colours[counts.argmax()].astype(np.int16)
        keep = opaque & (np.abs(arr[..., :3].astype(np.int16) - base).max(axis=-1) < 40)
        icon = Image.new("RGBA", icon.size, ink + (255,))
        icon.putalpha(Image.fromarray((keep * 255).astype(np.uint8)))
    img.alpha_composite(icon, (4, (H - icon_px) // 2))
    d = ImageDraw.Draw(img)
    x = 4 + icon_px + gap
    y = (H - th - sh) // 2
    d.text((x - left, y - top), name, font=font, fill=ink + (255,))
    if small:
        d.text((x, y + th + 4), line, font=small, fill=ink + (255,))
    arr = np.asarray(img).copy()
    arr[..., 3] = np.where(arr[..., 3] >= 128, 255, 0).astype(np.uint8)
    return arr


def load_logos(folder: str | os.PathLike) -> list[np.ndarray]:
    """RGBA logos (uint8) from the PNG/WebP files in ``folder``; files without an alpha channel
    get one from their distance to the corner colour (the usual flat background)."""
    logos = []
    for p in sorted(Path(folder).iterdir()):
        if p.suffix.lower() not in (".png", ".webp"):
            continue
        with Image.open(p) as im:
            im.load()
            has_alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
            arr = np.asarray(im.convert("RGBA")).copy()
        if not has_alpha:
            bg = arr[0, 0, :3].astype(np.int16)
            dist = np.abs(arr[..., :3].astype(np.int16) - bg).max(axis=-1)
            arr[..., 3] = np.where(dist > 24, 255, 0).astype(np.uint8)
        if arr[..., 3].any():
            logos.append(arr)
    return logos
