"""Human-designed pictograms for the mark bank: SVG icon sets that install from PyPI, rasterised
with resvg, composed into logo layouts, and split by icon identity.

Sets (each optional; ``icon_files`` lists what is installed):
- ``tabler``: pytablericons (outline and filled; MIT), ``brand-*`` icons excluded;
- ``fontawesome``: fontawesomefree (solid and regular; CC BY 4.0), the ``brands`` folder excluded.

No brand-logo set is read (no simple-icons, no ``*-brands``, no brand-named icons): benchmarks use
platform logos, and a brand seen in training would make their test meaningless.

``split_of(name)`` puts an icon's identity (its name, the same across sets and styles) in
``train`` or ``val`` by the SHA-256 of the name, so validation measures marks never trained on.
``icon_logo`` turns one icon into an RGBA logo: alone, beside or above a wordmark, in a ring, on a
filled disc or shield (knocked out), outlined, two-colour or with a gradient.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

BANK_VERSION = "icons-1"
LAYOUTS = ("alone", "beside", "above", "ring", "disc", "shield", "outline")
# Brand-named icons outside the brand folders (a pictogram of a company's logo).
BRAND_NAMES = frozenset({"apple", "android", "windows", "linux", "github", "gitlab", "google", "facebook", "twitter",
                         "instagram", "youtube", "amazon", "paypal", "spotify", "slack", "discord", "whatsapp",
                         "telegram", "reddit", "pinterest", "tiktok", "snapchat", "linkedin", "dribbble", "behance",
                         "figma", "chrome", "firefox", "safari", "opera", "edge", "skype", "steam", "xbox",
                         "playstation", "nintendo", "bitcoin", "ethereum", "mastodon", "medium", "patreon"})


@dataclass(frozen=True)
class IconFile:
    set: str
    name: str  # identity: the same pictogram in another style or set shares it
    path: Path


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    return Path(spec.origin).parent if spec and spec.origin else None


def icon_files() -> list[IconFile]:
    """Every non-brand SVG icon of the installed sets, sorted by (set, name, path)."""
    out: list[IconFile] = []
    tabler = _package_dir("pytablericons")
    if tabler:
        for style in ("outline", "filled"):
            for p in (tabler / "icons" / style).glob("*.svg"):
                out.append(IconFile("tabler", p.stem, p))
    fa = _package_dir("fontawesomefree")
    if fa:
        for style in ("solid", "regular"):
            for p in (fa / "static" / "fontawesomefree" / "svgs" / style).glob("*.svg"):
                out.append(IconFile("fontawesome", p.stem, p))
    keep = [f for f in out if not f.name.startswith("brand-") and f.name.split("-")[0] not in BRAND_NAMES]
    return sorted(keep, key=lambda f: (f.set, f.name, str(f.path)))


def split_of(name: str, val_fraction: float = 0.1) -> str:
    """``val`` for a fixed ``val_fraction`` of icon identities (by SHA-256 of the name), else ``train``."""
    u = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "val" if u < val_fraction else "train"


def rasterise(path: str | Path, px: int) -> np.ndarray:
    """The icon's coverage (uint8 HxW, its longer side ``px``), black ink on transparent."""
    import resvg_py

    svg = Path(path).read_text().replace("currentColor", "#000")
    a = _render_alpha(resvg_py.svg_to_bytes(svg_string=svg, width=px))
    if a.shape[0] > px:  # a tall icon: its height is the longer side
        a = _render_alpha(resvg_py.svg_to_bytes(svg_string=svg, height=px))
    ys, xs = np.nonzero(a)
    if not len(ys):
        raise ValueError(f"icon {path} renders empty")
    return np.ascontiguousarray(a[ys.min():ys.max() + 1, xs.min():xs.max() + 1])


def _render_alpha(png: bytes | list[int]) -> np.ndarray:
    with Image.open(io.BytesIO(bytes(png))) as im:
        return np.asarray(im.convert("RGBA"))[..., 3]


def _rgb(c: np.ndarray) -> tuple[int, int, int]:
    return tuple(int(round(v * 255)) for v in c)


def _ink(coverage: np.ndarray, colour: np.ndarray, second: np.ndarray | None) -> Image.Image:
    """RGBA of ``coverage`` in ``colour``, or a vertical gradient to ``second``."""
    h, w = coverage.shape
    if second is None:
        rgb = np.broadcast_to(np.asarray(colour, np.float32), (h, w, 3))
    else:
        t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
        rgb = np.broadcast_to(colour * (1 - t) + second * t, (h, w, 3))
    arr = np.dstack([(np.clip(rgb, 0, 1) * 255).astype(np.uint8), coverage])
    return Image.fromarray(arr, "RGBA")


def icon_logo(coverage: np.ndarray, rng: np.random.Generator, palette: np.ndarray, font=None,
              word: str | None = None, layout: str | None = None) -> np.ndarray:
    """One logo (RGBA uint8) from an icon's ``coverage``: ``layout`` (one of ``LAYOUTS``, random when
    None), colours from ``palette`` (N×3 in [0, 1]), a wordmark ``word`` in ``font`` (a PIL font)
    for ``beside`` / ``above``."""
    layout = layout or str(rng.choice(LAYOUTS))
    if layout not in LAYOUTS:
        raise ValueError(f"unknown logo layout {layout!r}; known: {list(LAYOUTS)}")
    c1, c2 = palette[rng.choice(len(palette), size=2, replace=False)]
    gradient = c2 if rng.random() < 0.25 else None
    icon = _ink(coverage, c1, gradient)
    h, w = coverage.shape
    if layout in ("beside", "above") and font is not None and word:
        left, top, right, bottom = font.getbbox(word)
        tw, th = right - left, bottom - top
        if layout == "beside":
            W, H = w + th // 2 + tw + 8, max(h, th) + 8
            ix, iy, tx, ty = 4, (H - h) // 2, 4 + w + th // 2, (H - th) // 2
        else:
            W, H = max(w, tw) + 8, h + th // 2 + th + 8
            ix, iy, tx, ty = (W - w) // 2, 4, (W - tw) // 2, 4 + h + th // 2
        img = Image.new("RGBA", (W, H), (0, 0, 0, 0))
        img.alpha_composite(icon, (ix, iy))
        ImageDraw.Draw(img).text((tx - left, ty - top), word, font=font,
                                 fill=_rgb(c2 if rng.random() < 0.5 else c1) + (255,))
    elif layout in ("ring", "disc", "shield"):
        side = int(max(h, w) * 1.6)
        img = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        d = ImageDraw.Draw(img)
        m = max(1, side // 24)
        if layout == "ring":
            d.ellipse((m, m, side - m, side - m), outline=_rgb(c1) + (255,), width=max(2, side // 16))
            img.alpha_composite(icon, ((side - w) // 2, (side - h) // 2))
        else:
            if layout == "disc":
                d.ellipse((m, m, side - m, side - m), fill=_rgb(c1) + (255,))
            else:
                d.polygon([(m, m), (side - m, m), (side - m, side * 0.55), (side / 2, side - m), (m, side * 0.55)],
                          fill=_rgb(c1) + (255,))
            knock = rng.random() < 0.5  # the icon cut out of the shape, or drawn on it in a second colour
            glyph = Image.new("L", (side, side), 0)
            glyph.paste(Image.fromarray(coverage), ((side - w) // 2, (side - h) // 2))
            if knock:
                a = np.asarray(img)[..., 3].astype(np.float32) * (1 - np.asarray(glyph, np.float32) / 255)
                img.putalpha(Image.fromarray(a.astype(np.uint8)))
            else:
                img.alpha_composite(_ink(np.asarray(glyph), c2, None))
    elif layout == "outline":
        k = max(3, (max(h, w) // 12) | 1)
        pad = k
        cov = np.pad(coverage, pad)
        grown = np.asarray(Image.fromarray(cov).filter(ImageFilter.MaxFilter(k)))
        img = _ink(grown, c2, None)
        img.alpha_composite(_ink(cov, c1, gradient))
    else:
        img = icon
    arr = np.asarray(img).copy()
    if rng.random() < 0.15:  # embossed: a one-pixel light/dark offset of the alpha
        a = arr[..., 3].astype(np.int16)
        shade = np.clip(128 + (np.roll(a, 1, (0, 1)) - np.roll(a, -1, (0, 1))) // 2, 0, 255)
        arr[..., :3] = np.where(a[..., None] > 0, shade[..., None], arr[..., :3]).astype(np.uint8)
    return arr


class IconBank:
    """The icons of one identity split, rasterised once at ``px`` on first use."""

    def __init__(self, split: str = "train", px: int = 96, limit: int | None = None, seed: int = 0):
        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be train, val or all, got {split!r}")
        files = [f for f in icon_files() if split == "all" or split_of(f.name) == split]
        if limit is not None and len(files) > limit:
            pick = np.random.default_rng(seed).choice(len(files), size=limit, replace=False)
            files = [files[i] for i in sorted(pick)]
        self.files = files
        self.px = px
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.files)

    def coverage(self, i: int) -> np.ndarray:
        if i not in self._cache:
            self._cache[i] = rasterise(self.files[i].path, self.px)
        return self._cache[i]

    def logos(self, n: int, rng: np.random.Generator, palette: np.ndarray, fonts: list | None = None,
              words: tuple[str, ...] = ()) -> list[np.ndarray]:
        """``n`` logos from randomly chosen icons (``fonts``: PIL fonts for wordmark layouts)."""
        if not self.files:
            raise RuntimeError("no icon set is installed (pip install pytablericons fontawesomefree resvg-py)")
        out = []
        for _ in range(n):
            cov = self.coverage(int(rng.integers(len(self.files))))
            font = fonts[int(rng.integers(len(fonts)))] if fonts else None
            word = words[int(rng.integers(len(words)))] if words else None
            out.append(icon_logo(cov, rng, palette, font=font, word=word))
        return out


def contact_sheet(logos: list[np.ndarray], cell: int = 96, cols: int = 12) -> Image.Image:
    """The logos on a grey grid, for a person to look at."""
    rows = math.ceil(len(logos) / cols)
    sheet = Image.new("RGBA", (cols * cell, rows * cell), (128, 128, 128, 255))
    for i, arr in enumerate(logos):
        im = Image.fromarray(arr, "RGBA")
        im.thumbnail((cell - 8, cell - 8))
        sheet.alpha_composite(im, ((i % cols) * cell + 4, (i // cols) * cell + 4))
    return sheet
