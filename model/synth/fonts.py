"""Fonts for multilingual watermark text: discovery, glyph coverage and shaping.

Fonts come from the machine: fontconfig (``fc-list``, with its per-language hints to keep the
candidate list short) when it is installed, matplotlib's font manager otherwise, plus any
``.ttf/.otf/.ttc`` files in a folder the caller names. A phrase is drawn only with a font whose
character map (read with fontTools) holds every one of its code points; a script with no such font
is skipped, and :func:`find_script_fonts` reports it so the caller can warn once.

Shaping: Arabic needs contextual joining and right-to-left order, Devanagari (Hindi) needs
conjuncts and vowel-sign reordering. Pillow does both through libraqm, which its wheels load at
run time (``PIL.features.check("raqm")``). We use raqm when it is there; without it those two
scripts are *skipped* (reported like a missing font) rather than drawn as disconnected or
misordered letters, which would teach a detector shapes no real watermark has.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import ImageFont, features

FONT_SUFFIXES = (".ttf", ".otf", ".ttc")

# Families that cover a script's code points but are a poor look for a watermark.
_AVOID = ("mono", "math", "symbol", "emoji", "old ", "music", "sign")


@dataclass(frozen=True)
class Script:
    """A writing system (keyed by language) and the watermark phrases drawn in it."""

    name: str
    fc_lang: str  # fontconfig language tag used to shortlist fonts
    phrases: tuple[str, ...]
    complex: bool = False  # needs shaping (libraqm) to be written correctly
    family_hint: str = ""  # a word in the family name of fonts made for this script


SCRIPTS: tuple[Script, ...] = (
    Script("english", "en", ("© Stock Photo", "SAMPLE", "PREVIEW", "Do Not Copy", "© 2024 Photo Agency",
                             "www.stockimages.com", "PROOF")),
    Script("spanish", "es", ("Muestra", "Vista previa", "© Foto de archivo")),
    Script("french", "fr", ("Aperçu", "Épreuve", "Échantillon")),
    Script("german", "de", ("Vorschau", "Muster", "Urheberrechtlich geschützt")),
    Script("russian", "ru", ("Образец", "Предпросмотр", "Фотобанк")),
    Script("greek", "el", ("Δείγμα", "Προεπισκόπηση")),
    Script("chinese", "zh-cn", ("样图", "版权所有", "预览图片"), family_hint="cjk sc"),
    Script("japanese", "ja", ("サンプル", "見本", "著作権保護"), family_hint="cjk jp"),
    Script("korean", "ko", ("샘플", "미리보기", "저작권"), family_hint="cjk kr"),
    Script("arabic", "ar", ("عينة", "معاينة", "حقوق النشر"), complex=True, family_hint="arabic"),
    Script("hindi", "hi", ("नमूना", "पूर्वावलोकन", "कॉपीराइट"), complex=True,
           family_hint="devanagari"),
)


@dataclass(frozen=True)
class FontFace:
    """One face of a font file (``index`` picks the face inside a ``.ttc`` collection)."""

    path: str
    index: int = 0
    family: str = ""

    def load(self, size: int) -> ImageFont.FreeTypeFont:
        layout = ImageFont.Layout.RAQM if features.check("raqm") else ImageFont.Layout.BASIC
        return _load_font(self.path, self.index, int(size), layout)


@dataclass
class ScriptFonts:
    """Which scripts can be drawn on this machine, with which faces, and which cannot and why."""

    fonts: dict[str, list[FontFace]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # script name -> reason


@functools.lru_cache(maxsize=256)
def _load_font(path: str, index: int, size: int, layout) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size=size, index=index, layout_engine=layout)


@functools.lru_cache(maxsize=512)
def font_cmap(path: str, index: int = 0) -> frozenset[int]:
    """The code points a font face maps to a glyph (its best Unicode cmap)."""
    from fontTools.ttLib import TTFont

    with TTFont(path, fontNumber=index, lazy=True) as font:
        cmap = font.getBestCmap() or {}
    return frozenset(cmap)


def covers(face: FontFace, text: str) -> bool:
    """True when every non-space character of ``text`` has a glyph in ``face``."""
    needed = {ord(c) for c in text if not c.isspace()}
    try:
        return needed <= font_cmap(face.path, face.index)
    except Exception:  # noqa: BLE001 - unreadable or unsupported font file: treat as not covering
        return False


def missing_codepoint(face: FontFace) -> str:
    """A character the face has no glyph for, so drawing it shows the face's .notdef glyph."""
    cmap = font_cmap(face.path, face.index)
    for cp in range(0xE000, 0xF900):  # private use area: almost never mapped
        if cp not in cmap:
            return chr(cp)
    raise ValueError(f"{face.path} maps the whole private use area")


def glyph_bitmap(face: FontFace, text: str, size: int = 48) -> np.ndarray:
    """Coverage bitmap (uint8, 0..255) of ``text`` drawn with ``face``, cropped to its ink."""
    mask = face.load(size).getmask(text, mode="L")
    arr = np.asarray(mask, dtype=np.uint8).reshape(mask.size[1], mask.size[0])
    ys, xs = np.nonzero(arr)
    if len(ys) == 0:
        return arr[:0, :0]
    return arr[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def _fc_faces(lang: str | None) -> list[FontFace] | None:
    """Faces fontconfig lists (for one language when given); None when fc-list is absent."""
    exe = shutil.which("fc-list")
    if exe is None:
        return None
    pattern = f":lang={lang}" if lang else ":"
    try:
        out = subprocess.run([exe, "--format", "%{file}|%{index}|%{family[0]}\n", pattern],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    faces = []
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[0].lower().endswith(FONT_SUFFIXES):
            faces.append(FontFace(parts[0], int(parts[1] or 0), parts[2]))
    return faces


def _matplotlib_faces() -> list[FontFace]:
    from matplotlib import font_manager

    return [FontFace(p, 0, Path(p).stem) for p in font_manager.findSystemFonts()
            if p.lower().endswith(FONT_SUFFIXES)]


def _folder_faces(folder: str | os.PathLike) -> list[FontFace]:
    faces = []
    for p in sorted(Path(folder).rglob("*")):
        if p.suffix.lower() in FONT_SUFFIXES:
            faces.append(FontFace(str(p), 0, p.stem))
    return faces


def _preference(face: FontFace, hint: str) -> tuple:
    name = (face.family or Path(face.path).stem).lower()
    avoid = any(word in name for word in _AVOID) or "light" in Path(face.path).stem.lower()
    # A font made for the script first (its shaping tables and glyph shapes are the real thing),
    # then the fonts the project installs (Noto, DejaVu); shorter family names are the plain
    # Latin/Cyrillic/Greek faces ("Noto Sans" before "Noto Sans CJK JP").
    made_for = 0 if hint and hint in name else 1
    known = 0 if ("noto" in name or "dejavu" in name) else 1
    return (avoid, made_for, known, len(name), face.path, face.index)


@functools.lru_cache(maxsize=8)
def find_script_fonts(fonts_dir: str | os.PathLike | None = None, scripts: tuple[Script, ...] = SCRIPTS,
                      per_script: int = 3) -> ScriptFonts:
    """Up to ``per_script`` faces for each script that cover every one of its phrases.

    Faces from ``fonts_dir`` are tried first. Different families are preferred so a script gets
    some variety (sans/serif, regular/bold). The answer is cached per process (the fonts on a
    machine do not change under a running job); treat it as read-only.
    """
    result = ScriptFonts()
    raqm = features.check("raqm")
    extra = _folder_faces(fonts_dir) if fonts_dir else []
    all_faces: list[FontFace] | None = None
    for script in scripts:
        if script.complex and not raqm:
            result.skipped[script.name] = "needs text shaping, and Pillow has no libraqm here"
            continue
        candidates = _fc_faces(script.fc_lang)
        if candidates is None:  # no fontconfig: check every font matplotlib knows (slower)
            if all_faces is None:
                all_faces = _matplotlib_faces()
            candidates = all_faces
        candidates = extra + sorted(set(candidates), key=lambda f: _preference(f, script.family_hint))
        chosen: list[FontFace] = []
        for one_per_family in (True, False):  # variety first: Noto Sans, Noto Serif, DejaVu Sans...
            families = {f.family for f in chosen}
            for face in candidates:
                if len(chosen) >= per_script:
                    break
                if face in chosen or (one_per_family and face.family in families):
                    continue
                if all(covers(face, phrase) for phrase in script.phrases):
                    chosen.append(face)
                    families.add(face.family)
        if chosen:
            result.fonts[script.name] = chosen
        else:
            result.skipped[script.name] = "no installed font covers its phrases"
    return result
