"""Text for marks: phrases rasterised once into coverage bitmaps, then styled per render.

Fonts and scripts come from ``model.synth.fonts``; each phrase is set once at ``BANK_FONT_PX``
(:func:`rasterise`) and kept as a :class:`TextSprite`; a render scales and rotates the bitmap and
styles it (:func:`styled_text`: plain, outline, shadow or emboss).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageDraw

from model.synth.fonts import FontFace
from model.synth.layers import colourise, contrasting

TEXT_STYLES = ("plain", "outline", "shadow", "emboss")
BANK_FONT_PX = 96  # phrases are rasterised once at this size, then scaled per render


@dataclass(frozen=True)
class TextSprite:
    coverage: np.ndarray  # uint8 HxW glyph coverage, BANK_FONT_PX tall glyphs
    script: str
    phrase: str
    font: FontFace


def rasterise(text: str, face: FontFace, px: int = BANK_FONT_PX) -> np.ndarray:
    """Coverage bitmap (uint8) of ``text`` set in ``face`` at ``px``, cropped to its ink plus a
    small margin; complex scripts are shaped by raqm (see ``model.synth.fonts``)."""
    font = face.load(px)
    left, top, right, bottom = font.getbbox(text)
    m = max(2, px // 16)
    img = Image.new("L", (right - left + 2 * m, bottom - top + 2 * m), 0)
    ImageDraw.Draw(img).text((m - left, m - top), text, font=font, fill=255)
    return np.asarray(img)


def two_lines(first: np.ndarray, second: np.ndarray, rel: float) -> np.ndarray:
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


def _pad(a: np.ndarray, p: int) -> np.ndarray:
    return np.pad(a, ((p, p), (p, p)) + ((0, 0),) * (a.ndim - 2))


def styled_text(cov: np.ndarray, colour: np.ndarray, style: str, rng: np.random.Generator,
                 height: float) -> np.ndarray:
    """Premultiplied RGBA of a text coverage map in a style (padded for outline/shadow/emboss)."""
    k = max(1, int(round(height * rng.uniform(0.04, 0.1))))  # effect size follows the glyph size
    if style == "plain":
        return colourise(cov, colour)
    pad = 3 * k + 2
    cov = _pad(cov, pad)
    fill = colourise(cov, colour)
    if style == "outline":
        ring = cv2.dilate(cov, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1)))
        edge = contrasting(colour)
        return fill + colourise(ring, edge) * (1.0 - cov[..., None])
    if style == "shadow":
        dx, dy = int(rng.integers(1, 2 * k + 2)), int(rng.integers(1, 2 * k + 2))
        shadow = np.roll(cov, (dy, dx), axis=(0, 1))
        shadow = cv2.GaussianBlur(shadow, (0, 0), max(0.5, k / 2)) * rng.uniform(0.5, 0.9)
        return fill + colourise(shadow, contrasting(colour)) * (1.0 - cov[..., None])
    # emboss: the glyphs as relief, light on one edge and dark on the other (a bevelled mark);
    # with a faint fill of the colour now and then.
    soft = cv2.GaussianBlur(cov, (0, 0), max(0.7, k / 2))
    d = max(1, k // 2)
    relief = soft - np.roll(soft, (d, d), axis=(0, 1))
    gain = rng.uniform(1.5, 3.0)
    light = np.clip(relief * gain, 0, 1)
    dark = np.clip(-relief * gain, 0, 1)
    layer = colourise(light, np.ones(3, np.float32)) + colourise(dark, np.zeros(3, np.float32))
    if rng.random() < 0.5:
        faint = cov * rng.uniform(0.15, 0.4)
        layer = layer + colourise(faint, colour) * (1.0 - layer[..., 3:4])
    return layer
