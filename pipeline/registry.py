"""The model registry's shipped entries: the pretrained weights in ``model/weights/`` become the
catalog's promoted models on a home that has none (``unmark init``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from model.network import load_checkpoint
from pipeline.pretrain import WEIGHTS_DIR
from storage import BlobStore
from storage import queries as q
from storage.db import Catalog


def register_shipped(catalog: Catalog, blobs: BlobStore, weights_dir: str | Path = WEIGHTS_DIR) -> dict | None:
    """Register ``weights_dir/remover.pt`` as the promoted remover when the catalog promotes none.

    Returns ``{"version", "checkpoint"}`` when it registered one, else None (a remover is already
    promoted, or no weights ship). A file that is not an Unmark checkpoint is a clear error.
    """
    path = Path(weights_dir) / "remover.pt"
    with catalog.session() as s:
        if q.promoted_model(s, "remover") is not None or not path.exists():
            return None
    data = path.read_bytes()
    try:
        _, extra = load_checkpoint(data)
    except Exception as exc:  # a damaged or foreign file: say which, register nothing
        raise ValueError(f"shipped weights {path} are not a loadable remover checkpoint: {exc}") from exc
    version = "remover-shipped-" + hashlib.sha256(data).hexdigest()[:12]
    config = json.loads(extra.get("train_config", "{}"))
    metrics = json.loads(extra.get("metrics_json", "{}"))
    _, key = blobs.put(data)
    with catalog.write() as s:
        if q.get_model(s, version) is None:
            q.register_model(s, version, "remover", key, config={**config, "shipped": str(path.name)},
                             metrics=metrics)
        q.promote_model(s, version)
    return {"version": version, "checkpoint": key}
