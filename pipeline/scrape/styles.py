"""Images in CSS: ``url(...)`` and ``image-set(...)`` in style attributes, ``<style>`` blocks and
stylesheets, and the ``@import`` s a stylesheet makes.

What a browser would fetch as an image is kept: ``url()`` outside ``@font-face`` rules and outside
``@import``; in an ``image-set()`` (``-webkit-image-set()`` too) the largest candidate, the others
kept as ``also`` (lesser candidates of the same picture). URLs come back as written; the caller
resolves them against the stylesheet's own URL (for a linked sheet) or the page's base.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

COMMENT = re.compile(r"/\*.*?\*/", re.DOTALL)
FONT_FACE = re.compile(r"@font-face\s*\{[^}]*\}", re.IGNORECASE)
IMPORT = re.compile(r"""@import\s+(?:url\(\s*(['"]?)(.*?)\1\s*\)|(['"])(.*?)\3)""", re.IGNORECASE | re.DOTALL)
URL = re.compile(r"""url\(\s*(['"]?)(.*?)\1\s*\)""", re.IGNORECASE | re.DOTALL)
IMAGE_SET = re.compile(r"(?:-webkit-)?image-set\(", re.IGNORECASE)
# one image-set candidate: url("a.png") / url(a.png) / "a.png", then its descriptor (2x, 1dppx, 600w…)
CANDIDATE = re.compile(r"""\s*(?:url\(\s*(['"]?)(.*?)\1\s*\)|(['"])(.*?)\3)\s*([^,]*)""", re.IGNORECASE | re.DOTALL)
FONT_EXTENSIONS = (".woff", ".woff2", ".ttf", ".otf", ".eot")


@dataclass
class CssImage:
    url: str
    also: tuple[str, ...] = ()  # lesser image-set candidates


@dataclass
class CssRefs:
    images: list[CssImage] = field(default_factory=list)
    imports: list[str] = field(default_factory=list)


def _density(descriptor: str) -> float:
    d = descriptor.strip().lower()
    for unit, scale in (("dppx", 1.0), ("dpcm", 2.54 / 96), ("dpi", 1 / 96), ("x", 1.0), ("w", 1.0)):
        if d.endswith(unit):
            try:
                return float(d[: -len(unit)]) * scale
            except ValueError:
                return 1.0
    return 1.0


def _scan(text: str, start: int = 0):
    """``(index, char, depth)`` for each character outside quotes, ``depth`` counting the
    parentheses opened since ``start`` (a ``)`` is reported at its new depth)."""
    depth, quote = 0, ""
    for i in range(start, len(text)):
        c = text[i]
        if quote:
            quote = "" if c == quote else quote
            continue
        if c in "\"'":
            quote = c
            continue
        depth += (c == "(") - (c == ")")
        yield i, c, depth


def _closing(text: str, start: int) -> int:
    """Index of the ``)`` that closes the parenthesis opened just before ``start``."""
    return next((i for i, c, depth in _scan(text, start) if c == ")" and depth < 0), len(text))


def _image_set(body: str) -> CssImage | None:
    ranked: list[tuple[float, str]] = []
    for part in _split_top(body):
        m = CANDIDATE.match(part)
        if not m:
            continue
        url = (m.group(2) if m.group(2) is not None else m.group(4) or "").strip()
        if url:
            ranked.append((_density(m.group(5) or ""), url))
    if not ranked:
        return None
    best = max(ranked, key=lambda r: r[0])[1]
    return CssImage(best, tuple(dict.fromkeys(u for _, u in ranked if u != best)))


def _split_top(body: str) -> list[str]:
    """``body`` split at the commas outside parentheses and quotes."""
    cuts = [i for i, c, depth in _scan(body) if c == "," and depth == 0]
    return [body[a + 1:b] for a, b in zip([-1, *cuts], [*cuts, len(body)], strict=True)]


def css_refs(text: str, max_images: int = 1_000) -> CssRefs:
    """The images and ``@import`` s of a piece of CSS (a sheet, a block or a style attribute)."""
    out = CssRefs()
    text = FONT_FACE.sub(" ", COMMENT.sub(" ", text))
    for m in IMPORT.finditer(text):
        target = (m.group(2) if m.group(2) is not None else m.group(4) or "").strip()
        if target:
            out.imports.append(target)
    text = IMPORT.sub(" ", text)
    pos = 0
    while len(out.images) < max_images:
        s = IMAGE_SET.search(text, pos)
        u = URL.search(text, pos)
        if s is None and u is None:
            break
        if s is not None and (u is None or s.start() <= u.start()):
            end = _closing(text, s.end())
            found = _image_set(text[s.end():end])
            if found is not None:
                out.images.append(found)
            pos = end + 1
            continue
        url = u.group(2).strip()
        if url and not url.lower().split("?", 1)[0].endswith(FONT_EXTENSIONS):
            out.images.append(CssImage(url))
        pos = u.end()
    return out
