"""The model registry: which remover or detector a step uses, kept as `models` rows over
checkpoint blobs. Every step that loads, registers or promotes a model goes through here.

- `find`: the promoted model of a kind, or a named version; None when there is none.
- `require`: `find`, raising `NoModel` (with the reason) when there is none.
- `checkpoint`: the checkpoint bytes of a found model.
- `CatalogModels`: the catalog as a ``model.api.ModelSource``, for ``Remover.load(version=,
  catalog=)`` and ``Detector.load`` in Python.
- `register`: store a checkpoint blob and its row, promoting it when asked.
- `register_shipped`: the pretrained remover in ``model/weights/`` becomes the promoted remover
  of a catalog that has none (``unmark init``, the demo); `register_shipped_detector` does the
  same for the shipped detector (``detector.pt``, the remover's localiser with its calibration).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from model.api import WEIGHTS_DIR
from model.detector import Calibration, detector_from_bytes, score_images
from model.remover.network import load_checkpoint
from storage import queries as q
from storage.blobs import BlobStore
from storage.db import Catalog

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


class NoModel(LookupError):
    """No model to use: none promoted, the named version is unknown, of another kind, or has no
    checkpoint blob."""


@dataclass(frozen=True)
class ModelRef:
    version: str
    kind: str
    checkpoint_key: str | None
    config: dict = field(default_factory=dict)


def find(catalog: Catalog, kind: str, version: str | None = None) -> ModelRef | None:
    """The model ``version`` (whatever its kind) or, without one, the promoted model of ``kind``."""
    with catalog.session() as s:
        m = q.get_model(s, version) if version else q.promoted_model(s, kind)
        if m is None:
            return None
        return ModelRef(m.version, m.kind, m.checkpoint_key, dict(m.config or {}))


def require(catalog: Catalog, kind: str, version: str | None = None) -> ModelRef:
    """`find`, checked: the model exists, is a ``kind`` and has a checkpoint blob."""
    ref = find(catalog, kind, version)
    if ref is None:
        raise NoModel(f"no {kind} {version!r} in the catalog" if version
                      else f"no promoted {kind}: run `unmark {'train' if kind == 'remover' else 'triage'}` first")
    if ref.kind != kind:
        raise NoModel(f"model {ref.version!r} is a {ref.kind}, not a {kind}")
    if not ref.checkpoint_key:
        raise NoModel(f"{kind} {ref.version!r} has no checkpoint blob")
    return ref


def checkpoint(blobs: BlobStore, ref: ModelRef) -> bytes:
    return blobs.get(ref.checkpoint_key)


def load_remover(catalog: Catalog, blobs: BlobStore, version: str | None = None, map_location="cpu"):
    """(its ref, its network in eval mode) of the promoted remover, or of ``version``: the one
    loader every step uses (`NoModel` when there is none)."""
    ref = require(catalog, "remover", version)
    model, _ = load_checkpoint(checkpoint(blobs, ref), map_location=map_location)
    return ref, model


class LoadedDetector:
    """A detector network with its version, calibration and the scales it is scored at."""

    def __init__(self, model, version: str, calibration: Calibration, scales: Sequence[int]):
        self.model, self.version, self.calibration, self.scales = model, version, calibration, tuple(scales)

    def score(self, images: Sequence) -> np.ndarray:
        return score_images(self.model, images, scales=self.scales)


def load_detector(catalog: Catalog, blobs: BlobStore) -> LoadedDetector | None:
    """The promoted detector with its calibration, or None when there is none yet: the one
    loader triage, clean and clean-files use."""
    ref = find(catalog, "detector")
    if ref is None:
        return None
    model, _ = detector_from_bytes(checkpoint(blobs, ref))
    # a detector is always scored at the scales it was calibrated at (two, before they were recorded)
    return LoadedDetector(model, ref.version, Calibration(**ref.config["calibration"]),
                          ref.config.get("scales", (384, 768)))


class CatalogModels:
    """A catalog and its blob store as a ``model.api.ModelSource``: ``model_checkpoint(kind,
    version)`` is `require` then `checkpoint` (`NoModel`, a ``LookupError``, with the reason)."""

    def __init__(self, catalog: Catalog, blobs: BlobStore):
        self.catalog, self.blobs = catalog, blobs
        self._close = None

    @classmethod
    def open(cls, settings=None) -> CatalogModels:  # a pipeline.config.Settings
        """The catalog and blobs of ``settings`` (default: the environment's, ``UNMARK_HOME``…);
        use it as a context manager, or ``close`` it."""
        from pipeline.config import load_settings
        from pipeline.workspace import open_workspace

        stack = contextlib.ExitStack()
        models = cls(*stack.enter_context(open_workspace(settings or load_settings())))
        models._close = stack.close
        return models

    def model_checkpoint(self, kind: str, version: str | None = None) -> bytes:
        return checkpoint(self.blobs, require(self.catalog, kind, version))

    def close(self) -> None:
        if self._close is not None:
            self._close()
            self._close = None

    def __enter__(self) -> CatalogModels:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def register(session: Session, blobs: BlobStore, version: str, kind: str, checkpoint_bytes: bytes,
             config: dict, metrics: dict, promote: bool) -> str:
    """Store the checkpoint blob and the model's row in ``session``; returns the blob key."""
    _, key = blobs.put(checkpoint_bytes)
    q.register_model(session, version, kind, key, config=config, metrics=metrics)
    if promote:
        q.promote_model(session, version)
    return key


def _register_once(catalog: Catalog, blobs: BlobStore, version: str, kind: str, data: bytes, config: dict,
                   metrics: dict) -> dict:
    """Register and promote ``version`` (or promote it again when its row exists already)."""
    with catalog.write() as s:
        if q.get_model(s, version) is None:
            key = register(s, blobs, version, kind, data, config=config, metrics=metrics, promote=True)
        else:
            q.promote_model(s, version)
            key = q.get_model(s, version).checkpoint_key
    return {"version": version, "checkpoint": key}


SHIPPED_RUN = "remover-run"  # beside remover.pt: its run's history and figures (the report's model section)


def shipped_remover_version(sha256: str) -> str:
    """The catalog version of the shipped remover whose weights hash to ``sha256``."""
    return "remover-shipped-" + sha256[:12]


def register_shipped(catalog: Catalog, blobs: BlobStore, weights_dir: str | Path | None = None) -> dict | None:
    """Register ``weights_dir/remover.pt`` as the promoted remover when the catalog promotes none.

    Returns ``{"version", "checkpoint"}`` when it registered one, else None (a remover is already
    promoted, or no weights ship). A file that is not an Unmark checkpoint is a clear error.
    """
    path = Path(weights_dir or WEIGHTS_DIR) / "remover.pt"
    if find(catalog, "remover") is not None or not path.exists():
        return None
    data = path.read_bytes()
    try:
        _, extra = load_checkpoint(data)
    except Exception as exc:  # a damaged or foreign file: say which, register nothing
        raise ValueError(f"shipped weights {path} are not a loadable remover checkpoint: {exc}") from exc
    version = shipped_remover_version(hashlib.sha256(data).hexdigest())
    config = {**json.loads(extra.get("train_config", "{}")), "shipped": path.name}
    metrics = json.loads(extra.get("metrics_json", "{}"))
    return _register_once(catalog, blobs, version, "remover", data, config, metrics)


def register_shipped_detector(catalog: Catalog, blobs: BlobStore, weights_dir: str | Path | None = None
                              ) -> dict | None:
    """Register ``weights_dir/detector.pt`` as the promoted detector when the catalog promotes none.

    Returns ``{"version", "checkpoint"}`` when it registered one, else None (a detector is already
    promoted, or none ships). A file that is not a calibrated detector checkpoint is a clear error.
    """
    from model.detector import detector_from_bytes

    path = Path(weights_dir or WEIGHTS_DIR) / "detector.pt"
    if find(catalog, "detector") is not None or not path.exists():
        return None
    data = path.read_bytes()
    try:
        model, extra = detector_from_bytes(data)
        calibration = dict(extra["calibration"])
    except Exception as exc:  # a damaged or foreign file, or one without thresholds: register nothing
        raise ValueError(f"shipped weights {path} are not a calibrated detector checkpoint: "
                         f"{type(exc).__name__}: {exc}") from exc
    version = "detector-shipped-" + hashlib.sha256(data).hexdigest()[:12]
    config = {**model.config, "calibration": calibration, "scales": list(extra.get("scales", [])),
              "shipped": path.name}
    metrics = dict(extra.get("metrics", {}))
    if "roc_auc" in metrics.get("test", {}):  # the held-out figure summaries show
        metrics["roc_auc"] = metrics["test"]["roc_auc"]
    return _register_once(catalog, blobs, version, "detector", data, config, metrics)
