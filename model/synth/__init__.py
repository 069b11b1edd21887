"""Synthetic watermarks and the training pairs made with them.

The stages, from a font on the machine to a batch the trainer takes:

1. ``fonts``: which installed fonts write each script's phrases (glyph coverage, shaping).
2. ``icons``: logos composed from human-designed pictogram sets, split by identity.
3. ``layers``, ``text``, ``logos``: the pieces of a mark: premultiplied RGBA layers and the
   palette, rasterised and styled phrases, procedural emblems and wordmarks.
4. ``families`` and ``renderer``: ``WatermarkRenderer`` draws one mark of a family (text, tiled,
   logo, badge, shape) and composites it exactly, returning the image, mask, alpha and colour.
5. ``pairs``: ``WatermarkPairs``, the dataset of (watermarked, target, mask, clean) samples drawn
   from image files on the CPU (augmentation, marking, shared artefacts); ``split_paths``.
6. ``device_pairs``: ``MarkBank``, the same pairs composited on the training device from a
   pre-rendered bank of marks, for a lent GPU.

``from model.synth import WatermarkRenderer`` (and the other names below) loads the module that
defines the name only when asked.
"""

_HOMES = {
    "FAMILIES": "renderer", "WatermarkRenderer": "renderer", "Watermarked": "renderer",
    "WatermarkPairs": "pairs", "CleanCrops": "pairs", "split_paths": "pairs",
    "MarkBank": "device_pairs",
}


def __getattr__(name: str):  # each name loads its own module (torch and kornia only when asked for)
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f"model.synth.{_HOMES[name]}"), name)
    raise AttributeError(name)
