"""Clean or score one image in Python, with no catalog, database or Prefect::

    from model import Detector, Remover
    out, mask = Remover.load().clean(pil_or_array)   # the shipped weights
    out, mask = Remover.load("run/best.pt").clean(array, threshold=0.5, dilate=2, feather=4)
    score = Detector.load("detector.pt").score(pil_or_array)   # watermark probability in [0, 1]

``Remover.load()`` takes ``model/weights/remover.pt`` (fp16 weights, loaded as float32) or any
Unmark remover checkpoint path or bytes. ``clean`` runs the tiled inference engine
(``model.remover.infer.Cleaner``) at the image's own size and returns the output (uint8 HxWx3) and the
mask it used (bool HxW). Outside the mask the output is the input, bit for bit: the network's
prediction is taken where the mask is, blended into the input over the feather.

``Detector.load()`` takes ``model/weights/detector.pt`` (the shipped detector: the shipped
remover's localiser, ``model.detector.LocaliserDetector``) or any detector checkpoint path or
bytes (``model.detector.save_detector``); ``score`` is the probability that an image carries a
mark, scored as triage scores it (at the checkpoint's ``scales`` when it records them).
``calibration`` holds the checkpoint's triage thresholds (``low``/``high``), if any, and
``threshold`` its best-accuracy single threshold, if any.

A model of a catalog: ``load(version=..., catalog=models)`` (``version`` None: the catalog's
promoted one), where ``models`` is any ``ModelSource``. ``model`` never imports the catalog;
``pipeline.registry.CatalogModels`` is the source over Unmark's catalog and blob store::

    from pipeline.registry import CatalogModels
    with CatalogModels.open() as models:          # the catalog of UNMARK_HOME (or UNMARK_CATALOG_URL)
        remover = Remover.load(version="remover-20261203-101500", catalog=models)
        detector = Detector.load(catalog=models)  # the promoted detector
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from model.detector import SCORE_SCALES, detector_from_bytes, score_images
from model.device import resolve_device
from model.remover.infer import Cleaner
from model.remover.masks import MaskRule
from model.remover.network import load_checkpoint

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


class ModelSource(Protocol):
    """Where ``load(version=..., catalog=...)`` takes a model's checkpoint from."""

    def model_checkpoint(self, kind: str, version: str | None = None) -> bytes:
        """The checkpoint bytes of model ``version`` (None: the promoted one) of ``kind``
        ("remover" or "detector"); a ``LookupError`` naming the reason when there is none, or
        when ``version`` is of another kind."""
        ...


def _source(kind: str, source, version: str | None, catalog: ModelSource | None):
    """What ``load`` reads: ``source`` (None: the shipped weights) or ``catalog``'s ``version``."""
    if catalog is None:
        if version is not None:
            raise ValueError(f"version {version!r} names a catalog model: pass catalog= as well "
                             "(pipeline.registry.CatalogModels)")
        return source
    if source is not None:
        raise ValueError("pass a checkpoint (source) or a catalog model (catalog=, version=), not both")
    if not callable(getattr(catalog, "model_checkpoint", None)):
        raise TypeError(f"catalog= takes a ModelSource (a model_checkpoint(kind, version) method), "
                        f"not {type(catalog).__name__}")
    return catalog.model_checkpoint(kind, None if version is None else str(version))

class Remover:
    """A loaded remover network and the inference engine that runs it."""

    def __init__(self, network: torch.nn.Module, config: dict | None = None, device: str = "auto"):
        self.network = network
        self.config = dict(config or {})
        self._cleaner = Cleaner(network, device=device, harden_mask=True, tile=512, overlap=64)

    @classmethod
    def load(cls, source: str | os.PathLike | bytes | None = None, device: str = "auto", *,
             version: str | None = None, catalog: ModelSource | None = None) -> Remover:
        """The shipped remover (``source`` None), the checkpoint at ``source`` (a path or bytes), or
        ``catalog``'s remover ``version`` (None: its promoted one)."""
        source = _source("remover", source, version, catalog)
        if source is None:
            source = WEIGHTS_DIR / "remover.pt"
        if not isinstance(source, bytes) and not Path(source).is_file():
            raise FileNotFoundError(f"no remover checkpoint at {source}")
        network, extra = load_checkpoint(source)
        network.float()
        config = json.loads(extra.get("train_config", "{}"))
        return cls(network, config, device=device)

    def clean(self, image: Image.Image | np.ndarray, threshold: float = 0.5, dilate: int = 1, feather: int = 0
              ) -> tuple[np.ndarray, np.ndarray]:
        """(cleaned uint8 HxWx3, mask bool HxW) for one RGB image (PIL or uint8 array; greyscale
        and RGBA are converted). The mask is the predicted probability above ``threshold``,
        dilated by ``dilate`` pixels; ``feather`` pixels outside it blend the cleaned output into
        the input (``model.masks.MaskRule``). Pixels outside the returned mask (the dilated and
        feathered region) are copied from the input."""
        rule = MaskRule(threshold, dilate, feather)
        rgb = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else _as_rgb(image)
        self._cleaner.mask_rule = rule
        res = self._cleaner.clean([rgb])[0]
        if res.weights is None:  # a network without a mask head changes the whole image
            return res.image, np.ones(rgb.shape[:2], bool)
        return res.image, res.weights > 0

class Detector:
    """A loaded watermark detector (``model.detector.WatermarkDetector``)."""

    def __init__(self, network: torch.nn.Module, scales=SCORE_SCALES, calibration: dict | None = None,
                 device: str = "auto"):
        self.network = network.eval()
        self.scales = tuple(int(s) for s in scales)
        self.calibration = dict(calibration) if calibration else None
        self.threshold: float | None = None
        self.device = resolve_device(device)
        self.network.to(self.device)

    @classmethod
    def load(cls, source: str | os.PathLike | bytes | None = None, device: str = "auto", *,
             version: str | None = None, catalog: ModelSource | None = None) -> Detector:
        """The shipped detector (``source`` None), the checkpoint at ``source`` (a path or bytes), or
        ``catalog``'s detector ``version`` (None: its promoted one)."""
        source = _source("detector", source, version, catalog)
        if source is None:
            source = WEIGHTS_DIR / "detector.pt"
            if not source.is_file():
                raise FileNotFoundError(f"no detector ships in {WEIGHTS_DIR}: pass the path of a detector "
                                        "checkpoint (model.detector.save_detector)")
        if not isinstance(source, bytes):
            if not Path(source).is_file():
                raise FileNotFoundError(f"no detector checkpoint at {source}")
            source = Path(source).read_bytes()
        try:
            network, extra = detector_from_bytes(source)
        except Exception as exc:  # a remover, a damaged or foreign file: say so
            raise ValueError(f"not a detector checkpoint: {type(exc).__name__}: {exc}") from exc
        det = cls(network, extra.get("scales", SCORE_SCALES), extra.get("calibration"), device=device)
        det.threshold = extra.get("threshold")
        return det

    def score(self, image: Image.Image | np.ndarray) -> float:
        """The probability (0-1) that one RGB image (PIL or uint8 array; grey and RGBA converted)
        carries a watermark."""
        return float(self.score_many([image])[0])

    def score_many(self, images: list[Image.Image | np.ndarray]) -> np.ndarray:
        """``score`` of each image, batched."""
        rgb = [np.asarray(im.convert("RGB")) if isinstance(im, Image.Image) else _as_rgb(im) for im in images]
        with torch.inference_mode():
            return score_images(self.network, rgb, scales=self.scales, device=self.device)

def _as_rgb(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image array, got {arr.dtype}")
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        return np.ascontiguousarray(arr[..., :3])
    raise ValueError(f"expected an HxW or HxWx3/4 image, got shape {arr.shape}")
