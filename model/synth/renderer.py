"""Synthetic watermarks: draw a mark on a clean image and return the composite, mask and alpha.

Families (pick with ``family=`` or restrict with ``families=``):

- ``text``   one phrase (25+ phrases, 11 scripts, fonts found on the machine; see ``model.synth.fonts``)
             at any size, angle, colour and opacity, plain / outline / shadow / emboss, sometimes
             running past the image edge;
- ``tiled``  the stock-photo grid: one phrase repeated in staggered diagonal rows over the whole
             image;
- ``logo``   logo-like marks pasted whole: multi-colour procedural emblems, white or two-colour
             wordmarks (an icon beside an invented brand name, as platforms stamp them), with
             ``icon_logos=N`` N logos composed from installed pictogram sets (``model.synth.icons``, one
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
the composite before it. ``model.synth.pairs`` turns this off and applies the same artifacts to the
input and its target together.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import cv2
import numpy as np

from model.synth.families import FamilyDrawers
from model.synth.fonts import SCRIPTS, find_script_fonts
from model.synth.layers import PALETTE, channel_max, reencode_artifacts
from model.synth.logos import BRAND_WORDS, load_logos, procedural_logo, wordmark_logo
from model.synth.text import TextSprite, rasterise

log = logging.getLogger(__name__)

FAMILIES: tuple[str, ...] = ("text", "tiled", "logo", "badge", "shape")
# How often each family is drawn when none is asked for. Logos weigh most: real marks (and the
# SWCNN benchmark's) are mostly large multi-colour logos pasted whole.
FAMILY_WEIGHTS = {"text": 0.25, "tiled": 0.2, "logo": 0.3, "badge": 0.12, "shape": 0.13}


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


class WatermarkRenderer(FamilyDrawers):
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
        self._logos = [wordmark_logo(bank_rng, self.script_fonts.fonts) if wordmarks and i % 2
                       else procedural_logo(bank_rng, latin) for i in range(n_logos)]
        self._user_logos = load_logos(logo_dir) if logo_dir else []
        # logos composed from human-designed pictograms (model.synth.icons), of one identity split
        self._icon_logos: list[np.ndarray] = []
        if icon_logos:
            from model.synth.icons import IconBank

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
        style, not yet composited (``model.synth.device_pairs`` pre-renders a bank of them). ``adjust_under``
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
