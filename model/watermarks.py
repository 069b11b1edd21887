"""Synthetic watermarks: draw a mark on a clean image and return the composite, mask and alpha.

Families (pick with ``family=`` or restrict with ``families=``):

- ``text``   one phrase (25+ phrases, 11 scripts, fonts found on the machine; see ``model.fonts``)
             at any size, angle, colour and opacity, plain / outline / shadow / emboss, sometimes
             running past the image edge;
- ``tiled``  the stock-photo grid: one phrase repeated in staggered diagonal rows over the whole
             image;
- ``logo``   logo-like marks pasted whole: multi-colour procedural emblems, white or two-colour
             wordmarks (an icon beside an invented brand name, as platforms stamp them), with
             ``icon_logos=N`` N logos composed from installed pictogram sets (``model.icons``, one
             identity split), plus any RGBA PNGs in ``logo_dir``; half of them with one flat alpha, as photo agencies and
             the SWCNN benchmark do;
- ``badge``  a filled pill / box / circle carrying a phrase, usually in a corner or along an edge;
- ``shape``  lines, rectangles and circles (outlined or filled).

Any family may get a spatially varying alpha (a linear or radial ramp) and, now and then, a
brightness/contrast change of the picture under the mark.

Speed: every phrase is rasterised once per renderer (a bank of coverage bitmaps; procedural logos
likewise); a render only scales, rotates, styles, colours and composites those bitmaps (a tiled
grid is one wrap-around warp of a single brick-pattern period), which costs 2–6 ms at 256 px.
Work and memory grow with the image (a few float32 planes of its size): render at the size you
train or detect at.

Compositing is exact: pixels are premultiplied RGBA layers composed with "over", and the
composite is ``clean·(1−A) + colour·A``. A pixel belongs to the mask when the 8-bit composite
differs from the clean image there by at least ``min_diff`` levels (default 2/255): fainter
pixels — antialiasing tails, white on white — are not learnable targets, so they are reset to
the clean value and their alpha to 0. Hence, before post-processing, outside the mask the
composite equals the clean image bit for bit. A mark whose mask ends up smaller than
``min_mask_fraction`` of the image is redrawn (up to a few times), so every sample carries a
visible mark.

Post-processing (``render(..., postprocess=True)``, the default) re-encodes the composite only,
as a web copy would be: Gaussian blur, JPEG re-compression and sensor-like noise
(:func:`reencode_artifacts`, applied with independent probabilities). ``Watermarked.raw`` keeps
the composite before it. ``model.data`` turns this off and applies the same artifacts to the
input and its target together.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
from PIL import Image, ImageDraw

from model.fonts import SCRIPTS, FontFace, find_script_fonts

log = logging.getLogger(__name__)

FAMILIES: tuple[str, ...] = ("text", "tiled", "logo", "badge", "shape")
# How often each family is drawn when none is asked for. Logos weigh most: real marks (and the
# SWCNN benchmark's) are mostly large multi-colour logos pasted whole.
FAMILY_WEIGHTS = {"text": 0.25, "tiled": 0.2, "logo": 0.3, "badge": 0.12, "shape": 0.13}
TEXT_STYLES = ("plain", "outline", "shadow", "emboss")
BANK_FONT_PX = 96  # phrases are rasterised once at this size, then scaled per render

PALETTE = np.array([  # saturated colours seen on real marks, plus neutrals
    (255, 255, 255), (0, 0, 0), (128, 128, 128), (200, 200, 200), (40, 40, 40),
    (220, 30, 40), (250, 200, 20), (30, 120, 220), (20, 160, 80), (240, 120, 20),
    (150, 40, 170), (0, 170, 190), (250, 80, 150), (120, 70, 30),
], dtype=np.float32) / 255.0


@dataclass
class Watermarked:
    """One watermarked image. ``composite``/``raw`` are HxWx3 uint8, ``mask`` HxW bool, ``alpha``
    HxW float32 in [0, 1] (0 outside the mask)."""

    composite: np.ndarray
    mask: np.ndarray
    alpha: np.ndarray
    family: str
    style: dict = field(default_factory=dict)
    raw: np.ndarray | None = None  # the composite before post-processing
    colour: np.ndarray | None = None  # HxWx3 float32 mark colour W in [0, 1] (0 outside the mask)


@dataclass(frozen=True)
class TextSprite:
    coverage: np.ndarray  # uint8 HxW glyph coverage, BANK_FONT_PX tall glyphs
    script: str
    phrase: str
    font: FontFace


def reencode_artifacts() -> list[tuple[float, A.BasicTransform]]:
    """What re-encoding does to a web image, as (probability, transform) pairs applied
    independently: blur (resampling), JPEG re-compression, sensor-like noise."""
    return [
        (0.15, A.GaussianBlur(blur_limit=(3, 5), sigma_limit=(0.3, 1.0), p=1.0)),
        (0.35, A.ImageCompression(quality_range=(50, 95), p=1.0)),
        (0.25, A.GaussNoise(std_range=(0.004, 0.02), p=1.0)),
    ]


# --- layers: premultiplied RGBA float32 -------------------------------------------------------


def _over(dst: np.ndarray, src: np.ndarray, x: int, y: int) -> None:
    """Compose premultiplied ``src`` (h,w,4) over ``dst`` (H,W,4) with its top-left at (x, y);
    whatever falls outside ``dst`` is cut off (a mark running past the edge)."""
    H, W = dst.shape[:2]
    h, w = src.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    if x0 >= x1 or y0 >= y1:
        return
    s = src[y0 - y : y1 - y, x0 - x : x1 - x]
    d = dst[y0:y1, x0:x1]
    d *= 1.0 - s[..., 3:4]
    d += s


def _colourise(coverage: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Premultiplied RGBA of a flat colour through a coverage map in [0, 1]."""
    return coverage[..., None] * np.append(colour, 1.0).astype(np.float32)


def _warp(layer: np.ndarray, scale: float, angle: float) -> np.ndarray:
    """Scale and rotate a layer (HxW or HxWxC) about its centre into its new bounding box."""
    h, w = layer.shape[:2]
    rad = math.radians(angle)
    c, s = abs(math.cos(rad)), abs(math.sin(rad))
    nw = max(1, int(math.ceil((w * c + h * s) * scale)))
    nh = max(1, int(math.ceil((w * s + h * c) * scale)))
    if angle == 0:
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        return cv2.resize(layer, (nw, nh), interpolation=interp)
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    m[0, 2] += nw / 2 - w / 2
    m[1, 2] += nh / 2 - h / 2
    return cv2.warpAffine(layer, m, (nw, nh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _pad(a: np.ndarray, p: int) -> np.ndarray:
    return np.pad(a, ((p, p), (p, p)) + ((0, 0),) * (a.ndim - 2))


def _styled_text(cov: np.ndarray, colour: np.ndarray, style: str, rng: np.random.Generator,
                 height: float) -> np.ndarray:
    """Premultiplied RGBA of a text coverage map in a style (padded for outline/shadow/emboss)."""
    k = max(1, int(round(height * rng.uniform(0.04, 0.1))))  # effect size follows the glyph size
    if style == "plain":
        return _colourise(cov, colour)
    pad = 3 * k + 2
    cov = _pad(cov, pad)
    fill = _colourise(cov, colour)
    if style == "outline":
        ring = cv2.dilate(cov, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1)))
        edge = _contrasting(colour)
        return fill + _colourise(ring, edge) * (1.0 - cov[..., None])
    if style == "shadow":
        dx, dy = int(rng.integers(1, 2 * k + 2)), int(rng.integers(1, 2 * k + 2))
        shadow = np.roll(cov, (dy, dx), axis=(0, 1))
        shadow = cv2.GaussianBlur(shadow, (0, 0), max(0.5, k / 2)) * rng.uniform(0.5, 0.9)
        return fill + _colourise(shadow, _contrasting(colour)) * (1.0 - cov[..., None])
    # emboss: the glyphs as relief, light on one edge and dark on the other (a bevelled mark);
    # with a faint fill of the colour now and then.
    soft = cv2.GaussianBlur(cov, (0, 0), max(0.7, k / 2))
    d = max(1, k // 2)
    relief = soft - np.roll(soft, (d, d), axis=(0, 1))
    gain = rng.uniform(1.5, 3.0)
    light = np.clip(relief * gain, 0, 1)
    dark = np.clip(-relief * gain, 0, 1)
    layer = _colourise(light, np.ones(3, np.float32)) + _colourise(dark, np.zeros(3, np.float32))
    if rng.random() < 0.5:
        faint = cov * rng.uniform(0.15, 0.4)
        layer = layer + _colourise(faint, colour) * (1.0 - layer[..., 3:4])
    return layer


def _contrasting(colour: np.ndarray) -> np.ndarray:
    lum = float(colour @ np.array([0.299, 0.587, 0.114], np.float32))
    return np.zeros(3, np.float32) if lum > 0.5 else np.ones(3, np.float32)


def _luma(img: np.ndarray) -> float:
    """Mean luma of an RGB uint8 image in [0, 1]. cv2.mean: 0.07 ms at 512² where numpy's mean over
    a reshaped view took 1.5-5 ms (it was a tenth of a training sample's cost)."""
    means = cv2.mean(np.ascontiguousarray(img))[:3]
    return float(np.dot(means, [0.299, 0.587, 0.114])) / 255.0


# --- procedural logos ---------------------------------------------------------------------------


def _procedural_logo(rng: np.random.Generator, font: FontFace | None, px: int = 160) -> np.ndarray:
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


def _wordmark_logo(rng: np.random.Generator, script_fonts: dict[str, list[FontFace]], px: int = 64) -> np.ndarray:
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
    icon = Image.fromarray(_procedural_logo(rng, None, px=icon_px))
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


def mark_window(shape: tuple[int, int], crop: int, rng: np.random.Generator,
                mask: np.ndarray | None = None) -> tuple[int, int]:
    """Top-left of a ``crop`` window: anywhere, or (when ``mask`` is given) one containing a
    random mask pixel, so positive views usually show their mark."""
    H, W = shape
    if mask is not None and mask.any():
        ys, xs = np.nonzero(mask)
        k = int(rng.integers(len(ys)))
        y0 = int(rng.integers(max(0, ys[k] - crop + 1), min(ys[k], H - crop) + 1))
        x0 = int(rng.integers(max(0, xs[k] - crop + 1), min(xs[k], W - crop) + 1))
        return y0, x0
    return int(rng.integers(0, H - crop + 1)), int(rng.integers(0, W - crop + 1))


# --- the renderer -------------------------------------------------------------------------------


class WatermarkRenderer:
    """Draws random watermarks on clean images; every random choice comes from the ``rng`` given
    to :meth:`render`, so a seeded generator reproduces a sample exactly.

    ``families`` restricts what is drawn (a detector can hold some out); ``fonts_dir`` adds fonts,
    ``logo_dir`` adds RGBA logo PNGs. ``seed`` fixes the procedural logo bank (None: random).
    """

    def __init__(self, fonts_dir: str | os.PathLike | None = None, logo_dir: str | os.PathLike | None = None,
                 families: list[str] | tuple[str, ...] | None = None, seed: int | None = None,
                 min_diff: int = 2, min_mask_fraction: float = 0.003, n_logos: int = 48,
                 icon_logos: int = 0, icon_split: str = "train"):
        chosen = tuple(families) if families else FAMILIES
        unknown = set(chosen) - set(FAMILIES)
        if unknown:
            raise ValueError(f"unknown watermark families {sorted(unknown)}; known: {list(FAMILIES)}")
        self.families = chosen
        weights = np.array([FAMILY_WEIGHTS[f] for f in chosen], np.float64)
        self._weights = weights / weights.sum()
        self.min_diff = min_diff
        self.min_mask_fraction = min_mask_fraction
        self.script_fonts = find_script_fonts(fonts_dir)
        if self.script_fonts.skipped:
            log.warning("watermark text: skipping scripts %s",
                        ", ".join(f"{k} ({v})" for k, v in self.script_fonts.skipped.items()))
        if not self.script_fonts.fonts and set(chosen) & {"text", "tiled", "badge"}:
            raise RuntimeError("no font on this machine covers any watermark phrase; install fonts-noto-core "
                               "or fonts-dejavu-core, or pass fonts_dir")
        self._text_bank = self._build_text_bank()
        bank_rng = np.random.default_rng(seed)
        latin = self.script_fonts.fonts.get("english", [None])[0]
        wordmarks = bool(set(BRAND_WORDS) & set(self.script_fonts.fonts))
        # half emblems, half wordmarks (icon + name), when a font can write the names
        self._logos = [_wordmark_logo(bank_rng, self.script_fonts.fonts) if wordmarks and i % 2
                       else _procedural_logo(bank_rng, latin) for i in range(n_logos)]
        self._user_logos = load_logos(logo_dir) if logo_dir else []
        # logos composed from human-designed pictograms (model.icons), of one identity split
        self._icon_logos: list[np.ndarray] = []
        if icon_logos:
            from model.icons import IconBank

            fonts = [f.load(48) for f in self.script_fonts.fonts.get("english", [])[:4]]
            self._icon_logos = IconBank(icon_split).logos(icon_logos, bank_rng, PALETTE, fonts=fonts,
                                                          words=BRAND_WORDS["english"])
        self._post = reencode_artifacts()

    # -- what is available

    def available_scripts(self) -> list[str]:
        """The scripts (named by language) drawn on this machine: those with a covering font."""
        return list(self.script_fonts.fonts)

    def text_sprites(self, script: str | None = None) -> list[TextSprite]:
        return [s for s in self._text_bank if script is None or s.script == script]

    def _build_text_bank(self) -> list[TextSprite]:
        bank = []
        by_name = {s.name: s for s in SCRIPTS}
        for name, faces in self.script_fonts.fonts.items():
            for phrase in by_name[name].phrases:
                for face in faces:
                    bank.append(TextSprite(rasterise(phrase, face), name, phrase, face))
        return bank

    # -- rendering

    def render(self, clean: np.ndarray, rng: np.random.Generator, family: str | None = None,
               postprocess: bool = True) -> Watermarked:
        """Watermark ``clean`` (HxWx3 uint8) with a mark of ``family`` (any of ``FAMILIES``), or
        one drawn from this renderer's families. ``postprocess`` re-encodes the composite."""
        if clean.ndim != 3 or clean.shape[2] != 3 or clean.dtype != np.uint8:
            raise ValueError(f"clean must be HxWx3 uint8, got {clean.shape} {clean.dtype}")
        if family is None:
            family = str(rng.choice(self.families, p=self._weights))
        elif family not in FAMILIES:
            raise ValueError(f"unknown watermark family {family!r}; known: {list(FAMILIES)}")
        H, W = clean.shape[:2]
        min_pixels = max(1, int(self.min_mask_fraction * H * W))
        for _attempt in range(6):  # redraw marks that came out (nearly) invisible
            out = self._draw_once(clean, rng, family)
            if np.count_nonzero(out.mask) >= min_pixels:
                break
        out.raw = out.composite
        if postprocess:
            out.composite, out.style["post"] = self.postprocess(out.composite, rng)
        return out

    def layer(self, clean: np.ndarray, rng: np.random.Generator, family: str, adjust_under: bool = True
              ) -> tuple[np.ndarray, dict]:
        """The mark of ``family`` for ``clean`` as a premultiplied RGBA float32 layer (H,W,4) and its
        style, not yet composited (``model.synth`` pre-renders a bank of them). ``adjust_under``
        lets the layer carry a brightness/contrast change of the picture under the mark, which
        belongs to this ``clean`` only."""
        H, W = clean.shape[:2]
        layer = np.zeros((H, W, 4), np.float32)
        style: dict = {"family": family}
        getattr(self, f"_draw_{family}")(layer, clean, rng, style)
        if rng.random() < 0.25:
            self._vary_alpha(layer, rng, style)
        # (under a full-image grid it would be a global edit)
        if family != "tiled" and rng.random() < 0.1 and adjust_under:
            self._adjust_under(layer, clean, rng, style)
        return layer, style

    def _draw_once(self, clean: np.ndarray, rng: np.random.Generator, family: str) -> Watermarked:
        H, W = clean.shape[:2]
        layer, style = self.layer(clean, rng, family)
        # Only the mark's bounding box is composited; everything else is the clean image as is.
        x, y, w, h = cv2.boundingRect((layer[..., 3] > 0).view(np.uint8))
        composite = clean.copy()
        mask = np.zeros((H, W), bool)
        alpha = np.zeros((H, W), np.float32)
        colour = np.zeros((H, W, 3), np.float32)
        if w and h:
            box = (slice(y, y + h), slice(x, x + w))
            c8 = clean[box]
            lay = layer[box]
            comp = c8.astype(np.float32)
            comp *= 1.0 / 255.0
            comp *= 1.0 - lay[..., 3:4]
            comp += lay[..., :3]
            comp8 = np.clip(np.rint(comp * 255.0), 0, 255).astype(np.uint8)
            mask[box] = channel_max(cv2.absdiff(comp8, c8)) >= self.min_diff
            m = mask[box]
            # masked copies (np.where with a broadcast mask took ~2 ms of a 512² tiled render)
            composite[box] = cv2.copyTo(comp8, m.view(np.uint8), composite[box])
            np.copyto(alpha[box], lay[..., 3], where=m)
            # W = premultiplied colour / alpha: composite = clean·(1 − α) + α·W exactly
            np.copyto(colour[box], np.clip(lay[..., :3] / np.maximum(lay[..., 3:4], 1e-6), 0.0, 1.0), where=m[..., None])
        return Watermarked(composite=composite, mask=mask, alpha=alpha, family=family, style=style, colour=colour)

    def postprocess(self, img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
        """Re-encoding artefacts (blur, JPEG, noise) drawn as :meth:`render` draws them. Apply it to
        clean images too wherever a classifier sees both, or the artefacts become the label."""
        applied = []
        for p, t in self._post:
            if rng.random() < p:
                t.set_random_seed(int(rng.integers(2**31)))
                img = t(image=img)["image"]
                applied.append(type(t).__name__)
        return img, applied

    # -- families

    def _pick_text(self, rng: np.random.Generator, script: str | None = None) -> TextSprite:
        if script is None:
            scripts = self.available_scripts()
            script = scripts[int(rng.integers(len(scripts)))]
        sprites = self.text_sprites(script)
        return sprites[int(rng.integers(len(sprites)))]

    def _pick_colour(self, rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
        """Half the time the colour that contrasts with the picture (white on a dark one, black on
        a light one, by mean luma), otherwise any palette colour, slightly jittered."""
        if rng.random() < 0.5:
            return np.ones(3, np.float32) if _luma(background) < 0.5 else np.zeros(3, np.float32)
        colour = PALETTE[int(rng.integers(len(PALETTE)))].copy()
        return np.clip(colour + rng.normal(0, 0.05, 3).astype(np.float32), 0, 1)

    def _place(self, size: tuple[int, int], shape: tuple[int, int], rng: np.random.Generator,
               spill: float) -> tuple[int, int]:
        """Top-left corner for a (h, w) layer on a (H, W) image; with probability ``spill`` the
        layer may run past an edge (up to half of it), otherwise it lies inside where it fits."""
        H, W = size
        h, w = shape
        if rng.random() < spill:
            return int(rng.integers(-(w // 2), W - w // 2 + 1)), int(rng.integers(-(h // 2), H - h // 2 + 1))
        return int(rng.integers(min(0, W - w), max(W - w, 0) + 1)), int(rng.integers(min(0, H - h), max(H - h, 0) + 1))

    def _text_layer(self, coverage: np.ndarray, width: float, angle: float, rng: np.random.Generator,
                    colour: np.ndarray, text_style: str) -> np.ndarray:
        cov = coverage.astype(np.float32) / 255.0
        scale = width / cov.shape[1]
        cov = _warp(cov, scale, angle)
        return _styled_text(cov, colour, text_style, rng, BANK_FONT_PX * scale)

    def _draw_text(self, layer: np.ndarray, clean: np.ndarray, rng: np.random.Generator, style: dict) -> None:
        H, W = layer.shape[:2]
        sprite = self._pick_text(rng)
        cov = sprite.coverage
        phrase = sprite.phrase
        if rng.random() < 0.2:  # a smaller second line, as in "© Agency / www.agency.com"
            same = rng.random() < 0.5 or "english" not in self.script_fonts.fonts
            second = self._pick_text(rng, sprite.script if same else "english")
            cov = _two_lines(cov, second.coverage, rng.uniform(0.4, 0.75))
            phrase = f"{phrase}\n{second.phrase}"
        aspect = cov.shape[1] / cov.shape[0]
        # width as a fraction of the image, capped so the glyphs stay below ~60% of the height
        width = min(W * rng.uniform(0.3, 0.95), H * 0.6 * aspect) * rng.uniform(0.7, 1.0)
        # and above ~10 px (3% of the height on large images): smaller text is unreadable noise
        width = min(max(width, max(10.0, 0.03 * H) * aspect), 1.2 * W)
        angle = 0.0 if rng.random() < 0.4 else float(rng.uniform(-45, 45))
        text_style = str(rng.choice(TEXT_STYLES, p=[0.4, 0.25, 0.2, 0.15]))
        colour = self._pick_colour(rng, clean)
        opacity = float(rng.uniform(0.3, 1.0))
        mark = self._text_layer(cov, width, angle, rng, colour, text_style) * opacity
        x, y = self._place((H, W), mark.shape[:2], rng, spill=0.25)
        _over(layer, mark, x, y)
        style.update(script=sprite.script, phrase=phrase, font=sprite.font.path, text_style=text_style,
                     angle=round(angle, 1), opacity=round(opacity, 3), colour=_rgb(colour), position=(x, y),
                     size=mark.shape[:2])

    def _draw_tiled(self, layer: np.ndarray, clean: np.ndarray, rng: np.random.Generator, style: dict) -> None:
        H, W = layer.shape[:2]
        sprite = self._pick_text(rng)
        angle = float(rng.uniform(20, 45) * rng.choice([-1, 1]))
        # lines of similar height whatever the phrase's length; gaps bounded so the grid is dense
        aspect = sprite.coverage.shape[1] / sprite.coverage.shape[0]
        width = min(min(H, W) * rng.uniform(0.05, 0.14) * aspect, W * 0.45)
        text_style = str(rng.choice(TEXT_STYLES, p=[0.55, 0.2, 0.15, 0.1]))
        colour = self._pick_colour(rng, clean)
        opacity = float(rng.uniform(0.3, 0.8))
        tile = self._text_layer(sprite.coverage, width, 0.0, rng, colour, text_style) * opacity
        x, y, tw, th = cv2.boundingRect((tile[..., 3] > 0.01).view(np.uint8))  # spacing from the ink
        tile = tile[y : y + th, x : x + tw]
        step_x = tw + max(1, int(min(tw * rng.uniform(0.1, 0.6), W * 0.2)))
        step_y = th + max(1, int(min(th * rng.uniform(0.5, 1.6), H * 0.2)))
        # One period of a brick pattern: a cell holding the tile, and below it the same cell
        # shifted by half a step. Sampling it rotated with wrap-around borders paves the whole
        # image at any size, for the cost of one warp.
        cell = np.zeros((step_y, step_x, 4), np.float32)
        cell[:th, :tw] = tile[:step_y, :step_x]
        unit = np.concatenate([cell, np.roll(cell, step_x // 2, axis=1)], axis=0)
        ox, oy = rng.uniform(0, step_x), rng.uniform(0, 2 * step_y)
        c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        m = np.array([[c, -s, ox - c * W / 2 + s * H / 2],  # image pixel -> pattern coordinates
                      [s, c, oy - s * W / 2 - c * H / 2]], np.float64)
        grid = cv2.warpAffine(unit, m, (W, H), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_WRAP)
        _over(layer, grid, 0, 0)
        style.update(script=sprite.script, phrase=sprite.phrase, font=sprite.font.path, text_style=text_style,
                     angle=round(angle, 1), opacity=round(opacity, 3), colour=_rgb(colour),
                     step=(step_x, step_y))

    def _draw_logo(self, layer: np.ndarray, clean: np.ndarray, rng: np.random.Generator, style: dict) -> None:
        H, W = layer.shape[:2]
        use_user = bool(self._user_logos) and rng.random() < 0.5
        use_icons = not use_user and bool(self._icon_logos) and rng.random() < 0.6
        pool = self._user_logos if use_user else self._icon_logos if use_icons else self._logos
        k = int(rng.integers(len(pool)))
        rgba = pool[k].astype(np.float32) / 255.0
        a = rgba[..., 3]
        flat = rng.random() < 0.5
        opacity = float(rng.uniform(0.3, 1.0))
        # flat: every non-transparent pixel gets one alpha (the SWCNN protocol's marks)
        a = np.where(a > 0, opacity, 0.0).astype(np.float32) if flat else a * opacity
        tint = rng.random() < 0.3  # a tinted version of the logo
        if tint:
            rgba[..., :3] = rgba[..., :3] * 0.5 + PALETTE[int(rng.integers(len(PALETTE)))] * 0.5
        mark = np.concatenate([rgba[..., :3] * a[..., None], a[..., None]], axis=-1)
        target = min(H, W) * rng.uniform(0.25, 0.7)
        scale = target / max(mark.shape[:2])
        angle = 0.0 if rng.random() < 0.7 else float(rng.uniform(-30, 30))
        mark = _warp(mark, scale, angle)
        x, y = self._place((H, W), mark.shape[:2], rng, spill=0.2)
        _over(layer, mark, x, y)
        style.update(logo=("user" if use_user else "icon" if use_icons else "procedural", k), flat_alpha=flat, tint=tint, opacity=round(opacity, 3),
                     angle=round(angle, 1), position=(x, y), size=mark.shape[:2])

    def _draw_badge(self, layer: np.ndarray, clean: np.ndarray, rng: np.random.Generator, style: dict) -> None:
        H, W = layer.shape[:2]
        sprite = self._pick_text(rng)
        aspect = sprite.coverage.shape[1] / sprite.coverage.shape[0]
        shape = str(rng.choice(["pill", "box", "circle", "ribbon"]))
        if shape == "ribbon":  # a band across the image, text centred
            width = W * rng.uniform(0.5, 0.9)
        else:
            width = min(W * rng.uniform(0.25, 0.55), H * 0.3 * aspect)
        text = sprite.coverage.astype(np.float32) / 255.0
        text = _warp(text, width / text.shape[1], 0.0)
        th, tw = text.shape
        pad = max(2, int(th * rng.uniform(0.3, 0.7)))
        if shape == "circle":
            side = int(math.hypot(th, tw)) + 2 * pad
            bh, bw = side, side
        elif shape == "ribbon":
            bh, bw = th + 2 * pad, W + 4
        else:
            bh, bw = th + 2 * pad, tw + 2 * pad
        box = np.zeros((bh, bw), np.uint8)
        if shape == "circle":
            cv2.circle(box, (bw // 2, bh // 2), bw // 2 - 1, 255, -1, cv2.LINE_AA)
        elif shape == "pill":
            r = bh // 2
            cv2.rectangle(box, (r, 0), (bw - r - 1, bh - 1), 255, -1)
            cv2.circle(box, (r, r), r, 255, -1, cv2.LINE_AA)
            cv2.circle(box, (bw - r - 1, r), r, 255, -1, cv2.LINE_AA)
        else:
            box[:] = 255
        box_a = box.astype(np.float32) / 255.0
        text_full = np.zeros((bh, bw), np.float32)
        ty, tx = (bh - th) // 2, (bw - tw) // 2
        text_full[ty : ty + th, tx : tx + tw] = text
        fill = PALETTE[int(rng.integers(len(PALETTE)))]
        ink = _contrasting(fill)
        fill_opacity = float(rng.uniform(0.45, 0.9))
        knockout = rng.random() < 0.3  # text cut out of the badge, the photo shows through
        if knockout:
            badge = _colourise(box_a * (1.0 - text_full), fill) * fill_opacity
        else:
            badge = _colourise(box_a, fill) * fill_opacity
            badge = _colourise(text_full, ink) + badge * (1.0 - text_full[..., None])
        if shape == "ribbon":
            x, y = -2, int(rng.choice([rng.integers(0, max(1, H // 6)), rng.integers(H // 3, max(H // 3 + 1, 2 * H // 3)),
                                       rng.integers(max(0, 5 * H // 6 - bh), max(1, H - bh + 1))]))
        else:  # a corner most of the time, anywhere otherwise
            if rng.random() < 0.7:
                m = int(min(H, W) * rng.uniform(0.0, 0.06))
                x = m if rng.random() < 0.5 else W - bw - m
                y = m if rng.random() < 0.5 else H - bh - m
            else:
                x, y = self._place((H, W), (bh, bw), rng, spill=0.0)
        _over(layer, badge, x, y)
        style.update(script=sprite.script, phrase=sprite.phrase, font=sprite.font.path, badge=shape,
                     knockout=knockout, opacity=round(fill_opacity, 3), colour=_rgb(fill), position=(x, y),
                     size=(bh, bw))

    def _draw_shape(self, layer: np.ndarray, clean: np.ndarray, rng: np.random.Generator, style: dict) -> None:
        H, W = layer.shape[:2]
        n = int(rng.integers(1, 5))
        one_colour = rng.random() < 0.5
        colour = self._pick_colour(rng, clean)
        kinds = []
        for _ in range(n):
            kind = str(rng.choice(["line", "rectangle", "circle"]))
            kinds.append(kind)
            cov = np.zeros((H, W), np.uint8)
            thick = int(max(1, min(H, W) * rng.uniform(0.01, 0.04)))
            filled = kind != "line" and rng.random() < 0.3
            t = -1 if filled else thick
            p1 = (int(rng.integers(-W // 4, W + W // 4)), int(rng.integers(-H // 4, H + H // 4)))
            if kind == "line":
                p2 = (int(rng.integers(-W // 4, W + W // 4)), int(rng.integers(-H // 4, H + H // 4)))
                cv2.line(cov, p1, p2, 255, thick, cv2.LINE_AA)
            elif kind == "rectangle":
                p2 = (p1[0] + int(rng.integers(W // 8, W // 2 + 1)), p1[1] + int(rng.integers(H // 8, H // 2 + 1)))
                cv2.rectangle(cov, p1, p2, 255, t, cv2.LINE_AA)
            else:
                r = int(min(H, W) * rng.uniform(0.08, 0.35))
                cv2.circle(cov, p1, r, 255, t, cv2.LINE_AA)
            c = colour if one_colour else self._pick_colour(rng, clean)
            opacity = float(rng.uniform(0.35, 1.0)) * (rng.uniform(0.4, 0.8) if filled else 1.0)
            x, y, w, h = cv2.boundingRect(cov)  # only the stroke's box: the rest composes as a no-op
            if w and h:
                _over(layer, _colourise(cov[y : y + h, x : x + w].astype(np.float32) / 255.0, c) * opacity, x, y)
        style.update(shapes=kinds, colour=_rgb(colour), one_colour=one_colour)

    # -- modifiers

    def _vary_alpha(self, layer: np.ndarray, rng: np.random.Generator, style: dict) -> None:
        """Spatially varying opacity over the whole image: a linear ramp at a random angle or a
        radial falloff. Computed only inside the mark's box (the layer is zero elsewhere); the
        linear ramp's range over the image is that of its four corners, exactly, as float32
        rounding is monotone."""
        H, W = layer.shape[:2]
        x0, y0, w, h = cv2.boundingRect((layer[..., 3] > 0).view(np.uint8))
        yy, xx = np.mgrid[y0 : y0 + h, x0 : x0 + w].astype(np.float32)
        low = float(rng.uniform(0.3, 0.8))
        if rng.random() < 0.5:
            t = float(rng.uniform(0, 2 * math.pi))
            c, s = math.cos(t), math.sin(t)
            corners = np.array([0, W - 1, 0, W - 1], np.float32) * c + np.array([0, 0, H - 1, H - 1], np.float32) * s
            ramp = (xx * c + yy * s - corners.min()) / max(float(corners.max() - corners.min()), 1e-6)
            kind = "linear"
        else:
            cx, cy = rng.uniform(0, W), rng.uniform(0, H)
            ramp = 1.0 - np.clip(np.hypot(xx - cx, yy - cy) / math.hypot(H, W), 0, 1)
            kind = "radial"
        layer[y0 : y0 + h, x0 : x0 + w] *= (low + (1.0 - low) * ramp)[..., None]
        style["alpha_ramp"] = (kind, round(low, 3))

    def _adjust_under(self, layer: np.ndarray, clean: np.ndarray, rng: np.random.Generator, style: dict) -> None:
        """Brightness/contrast change of the picture under (and just around) the mark.

        Folded into the layer: ``adjusted`` under a soft region r is the same as composing a layer
        of colour ``adjusted`` and alpha r, then the mark over it, so compositing stays one rule."""
        H, W = clean.shape[:2]
        support = (layer[..., 3] > 0.02).view(np.uint8)
        k = max(3, (min(H, W) // 32) | 1)
        gain = float(rng.uniform(0.6, 1.3))
        bias = float(rng.uniform(-0.15, 0.15))
        style["under"] = {"contrast": round(gain, 3), "brightness": round(bias, 3)}
        x, y, w, h = cv2.boundingRect(support)
        if not (w and h):
            return
        # Only a box around the mark: the dilation and the blur reach k//2 each, and a margin of
        # 2k keeps the blur's mirrored border inside zeros; columns aligned to 16 keep OpenCV's
        # vector and tail code on the same pixels, so the box gives what the whole image did, bit
        # for bit.
        x0, y0 = max(0, x - 2 * k) // 16 * 16, max(0, y - 2 * k)
        x1, y1 = min(W, -(-(x + w + 2 * k) // 16) * 16), min(H, y + h + 2 * k)
        box = (slice(y0, y1), slice(x0, x1))
        region = cv2.GaussianBlur(cv2.dilate(support[box].astype(np.float32), np.ones((k, k), np.uint8)), (k, k), 0)
        adjusted = np.clip((clean[box].astype(np.float32) / 255.0 - 0.5) * gain + 0.5 + bias, 0, 1)
        under = np.concatenate([adjusted * region[..., None], region[..., None]], axis=-1)
        mark = layer[box].copy()
        layer[box] = under
        _over(layer, mark, x0, y0)


def rasterise(text: str, face: FontFace, px: int = BANK_FONT_PX) -> np.ndarray:
    """Coverage bitmap (uint8) of ``text`` set in ``face`` at ``px``, cropped to its ink plus a
    small margin; complex scripts are shaped by raqm (see ``model.fonts``)."""
    font = face.load(px)
    left, top, right, bottom = font.getbbox(text)
    m = max(2, px // 16)
    img = Image.new("L", (right - left + 2 * m, bottom - top + 2 * m), 0)
    ImageDraw.Draw(img).text((m - left, m - top), text, font=font, fill=255)
    return np.asarray(img)


def _two_lines(first: np.ndarray, second: np.ndarray, rel: float) -> np.ndarray:
    """Two coverage bitmaps stacked and centred, the second scaled to ``rel`` of the first's height."""
    h2 = max(4, int(first.shape[0] * rel))
    w2 = max(4, int(second.shape[1] * h2 / second.shape[0]))
    second = cv2.resize(second, (w2, h2), interpolation=cv2.INTER_AREA)
    w = max(first.shape[1], w2)
    out = np.zeros((first.shape[0] + h2, w), np.uint8)
    x1, x2 = (w - first.shape[1]) // 2, (w - w2) // 2
    out[: first.shape[0], x1 : x1 + first.shape[1]] = first
    out[first.shape[0] :, x2 : x2 + w2] = second
    return out


def channel_max(img: np.ndarray) -> np.ndarray:
    """Per-pixel maximum over the channels of an HxWx3 array (far faster than ``max(axis=-1)``)."""
    return np.maximum(np.maximum(img[..., 0], img[..., 1]), img[..., 2])


def _rgb(colour: np.ndarray) -> tuple[int, int, int]:
    return tuple(int(round(float(v) * 255)) for v in colour)
