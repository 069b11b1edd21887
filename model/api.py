"""Clean one image in Python, with no catalog, database or Prefect::

    from model import Remover
    out, mask = Remover.load().clean(pil_or_array)   # the shipped weights
    out, mask = Remover.load("run/best.pt").clean(array, threshold=0.5, dilate=2)

``Remover.load()`` takes ``model/weights/remover.pt`` (fp16 weights, loaded as float32) or any
Unmark remover checkpoint path or bytes. ``clean`` runs the tiled inference engine
(``model.infer.Cleaner``) at the image's own size and returns the output (uint8 HxWx3) and the
mask it used (bool HxW). Outside the mask the output is the input, bit for bit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from model.infer import Cleaner
from model.network import load_checkpoint

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


class Remover:
    """A loaded remover network and the inference engine that runs it."""

    def __init__(self, network: torch.nn.Module, config: dict | None = None, device: str = "auto"):
        self.network = network
        self.config = dict(config or {})
        self._cleaner = Cleaner(network, device=device, harden_mask=False, tile=512, overlap=64)

    @classmethod
    def load(cls, source: str | os.PathLike | bytes | None = None, device: str = "auto") -> Remover:
        """The shipped remover (``source`` None), or the checkpoint at ``source`` (a path or bytes)."""
        if source is None:
            source = WEIGHTS_DIR / "remover.pt"
        if not isinstance(source, bytes) and not Path(source).is_file():
            raise FileNotFoundError(f"no remover checkpoint at {source}")
        network, extra = load_checkpoint(source)
        network.float()
        config = json.loads(extra.get("train_config", "{}"))
        return cls(network, config, device=device)

    def clean(self, image: Image.Image | np.ndarray, threshold: float = 0.5, dilate: int = 1
              ) -> tuple[np.ndarray, np.ndarray]:
        """(cleaned uint8 HxWx3, mask bool HxW) for one RGB image (PIL or uint8 array; greyscale
        and RGBA are converted). Pixels where the predicted mask probability is at most
        ``threshold`` (after dilating the mask by ``dilate`` pixels) are copied from the input."""
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        if dilate < 0:
            raise ValueError(f"dilate must be >= 0, got {dilate}")
        rgb = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else _as_rgb(image)
        res = self._cleaner.clean([rgb])[0]
        if res.mask is None:
            return res.image, np.ones(rgb.shape[:2], bool)
        mask = (res.mask > threshold).astype(np.uint8)
        if dilate:
            mask = cv2.dilate(mask, np.ones((2 * dilate + 1, 2 * dilate + 1), np.uint8))
        out = rgb.copy()
        keep = mask.astype(bool)
        out[keep] = res.image[keep]
        return out, keep


def _as_rgb(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image array, got {arr.dtype}")
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        return np.ascontiguousarray(arr[..., :3])
    raise ValueError(f"expected an HxW or HxWx3/4 image, got shape {arr.shape}")
