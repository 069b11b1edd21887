"""Tiles of an image and the blend windows that join them without seams.

Along each axis :func:`axis_tiles` picks the tile length and start positions; :func:`axis_window`
is a tile's 1-D blend window, :func:`axis_cover` the same placed on the whole axis (their sum
normalises the blend); :func:`pad_to` pads an image up to a whole tile.

Why the window has a dead margin: a convolution near a tile edge sees zero padding instead of the
neighbouring pixels, so a tile's outermost pixels are the least trustworthy. Across an interior
edge the window is 0 for the outer quarter of the overlap, then a raised cosine over the middle
half, then 1; the neighbouring tile's window is its mirror, so the two always sum to 1 and each
pixel is taken only from tiles that saw at least ``overlap/4`` pixels of real context around it.
At the image border there is no neighbour and the window is 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tile:
    image: int  # index in the current call
    y: int
    x: int
    h: int  # tile height/width on the (possibly padded) image
    w: int


def axis_tiles(length: int, tile: int, overlap: int, multiple: int, even: bool) -> tuple[int, list[int]]:
    """Tile length and start positions along one axis of ``length`` pixels.

    The tile length is a multiple of ``multiple``. An axis no longer than ``tile`` is one tile
    (padded up to the multiple). Otherwise ``even=True`` spreads the fewest tiles that keep at
    least ``overlap`` pixels of overlap evenly (the tile shrinks, so less work is wasted on
    overlap); ``even=False`` keeps ``tile`` fixed (every tile the same shape, best for batching
    many images on a GPU) and aligns the last tile with the end."""
    tile = max(multiple, tile // multiple * multiple)
    padded = math.ceil(length / multiple) * multiple
    if padded <= tile:
        return padded, [0]
    overlap = min(overlap, tile // 2)
    n = math.ceil((length - overlap) / (tile - overlap))
    if even:
        tile = min(tile, math.ceil((length + (n - 1) * overlap) / n / multiple) * multiple)
        n = math.ceil((length - overlap) / (tile - overlap))
    stride = tile - overlap
    starts = [min(i * stride, length - tile) for i in range(n)]
    return tile, sorted(set(starts))


def edge_ramp(overlap: int) -> np.ndarray:
    """Window values for the ``overlap`` pixels at an interior tile edge, outermost first: 0 over
    the outer quarter, a raised cosine over the middle half, 1 over the inner quarter. The mirror
    of the neighbour's ramp, so overlapping ramps sum to 1."""
    if overlap <= 0:
        return np.zeros(0, dtype=np.float32)
    dead = overlap // 4
    rise = max(1, overlap - 2 * dead)
    i = np.arange(overlap, dtype=np.float64)
    t = np.clip((i - dead + 0.5) / rise, 0.0, 1.0)
    return (0.5 - 0.5 * np.cos(np.pi * t)).astype(np.float32)


def axis_window(tile: int, start: int, length: int, overlap: int) -> np.ndarray:
    """1-D window for a tile at ``start``: ramps only on the sides that have a neighbour."""
    w = np.ones(tile, dtype=np.float32)
    ramp = edge_ramp(min(overlap, tile // 2))
    if start > 0:
        w[: ramp.size] = ramp
    if start + tile < length:
        w[tile - ramp.size :] = np.minimum(w[tile - ramp.size :], ramp[::-1])
    return w


def axis_cover(tile: int, start: int, length: int, overlap: int) -> np.ndarray:
    """The tile's 1-D window placed on the whole axis (zeros elsewhere)."""
    out = np.zeros(length, dtype=np.float64)
    out[start : start + tile] = axis_window(tile, start, length, overlap)
    return out


def pad_to(arr: np.ndarray, h: int, w: int) -> np.ndarray:
    """Pad HxWxC to (h, w) by reflection (edge replication where the image is too small)."""
    ph, pw = h - arr.shape[0], w - arr.shape[1]
    if ph == 0 and pw == 0:
        return arr
    mode = "reflect" if ph < arr.shape[0] and pw < arr.shape[1] else "edge"
    return np.pad(arr, ((0, ph), (0, pw), (0, 0)), mode=mode)
