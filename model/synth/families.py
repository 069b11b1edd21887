"""The five mark families and the two modifiers, drawn into a premultiplied RGBA layer.

:class:`FamilyDrawers` is the drawing half of ``model.synth.renderer.WatermarkRenderer``: each
``_draw_<family>(layer, clean, rng, style)`` draws one mark of its family into ``layer`` (H,W,4)
and records its choices in ``style``; ``_vary_alpha`` and ``_adjust_under`` modify a drawn layer.
It needs the renderer's text bank (``text_sprites``, ``available_scripts``, ``script_fonts``) and
logo banks (``_logos``, ``_user_logos``, ``_icon_logos``).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from model.synth.layers import PALETTE, colourise, contrasting, luma, over, rgb, warp
from model.synth.text import BANK_FONT_PX, TEXT_STYLES, TextSprite, styled_text, two_lines


class FamilyDrawers:
    """Draws the marks of each family; mixed into ``WatermarkRenderer``."""

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
            return np.ones(3, np.float32) if luma(background) < 0.5 else np.zeros(3, np.float32)
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
        cov = warp(cov, scale, angle)
        return styled_text(cov, colour, text_style, rng, BANK_FONT_PX * scale)

    def _draw_text(self, layer: np.ndarray, clean: np.ndarray, rng: np.random.Generator, style: dict) -> None:
        H, W = layer.shape[:2]
        sprite = self._pick_text(rng)
        cov = sprite.coverage
        phrase = sprite.phrase
        if rng.random() < 0.2:  # a smaller second line, as in "© Agency / www.agency.com"
            same = rng.random() < 0.5 or "english" not in self.script_fonts.fonts
            second = self._pick_text(rng, sprite.script if same else "english")
            cov = two_lines(cov, second.coverage, rng.uniform(0.4, 0.75))
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
        over(layer, mark, x, y)
        style.update(script=sprite.script, phrase=phrase, font=sprite.font.path, text_style=text_style,
                     angle=round(angle, 1), opacity=round(opacity, 3), colour=rgb(colour), position=(x, y),
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
        over(layer, grid, 0, 0)
        style.update(script=sprite.script, phrase=sprite.phrase, font=sprite.font.path, text_style=text_style,
                     angle=round(angle, 1), opacity=round(opacity, 3), colour=rgb(colour),
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
        mark = warp(mark, scale, angle)
        x, y = self._place((H, W), mark.shape[:2], rng, spill=0.2)
        over(layer, mark, x, y)
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
        text = warp(text, width / text.shape[1], 0.0)
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
        ink = contrasting(fill)
        fill_opacity = float(rng.uniform(0.45, 0.9))
        knockout = rng.random() < 0.3  # text cut out of the badge, the photo shows through
        if knockout:
            badge = colourise(box_a * (1.0 - text_full), fill) * fill_opacity
        else:
            badge = colourise(box_a, fill) * fill_opacity
            badge = colourise(text_full, ink) + badge * (1.0 - text_full[..., None])
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
        over(layer, badge, x, y)
        style.update(script=sprite.script, phrase=sprite.phrase, font=sprite.font.path, badge=shape,
                     knockout=knockout, opacity=round(fill_opacity, 3), colour=rgb(fill), position=(x, y),
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
                over(layer, colourise(cov[y : y + h, x : x + w].astype(np.float32) / 255.0, c) * opacity, x, y)
        style.update(shapes=kinds, colour=rgb(colour), one_colour=one_colour)

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
        over(layer, mark, x0, y0)
