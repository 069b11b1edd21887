"""``Remover.load`` / ``Detector.load`` by catalog version, through ``pipeline.registry.CatalogModels``
(the catalog as a ``model.api.ModelSource``), on a real SQLite catalog and blob store."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import Detector, Remover
from model.api import WEIGHTS_DIR
from pipeline.registry import CatalogModels, NoModel, register


def _register(catalog, blobs, version, kind, path, promote):
    with catalog.write() as s:
        register(s, blobs, version, kind, path.read_bytes(), config={}, metrics={}, promote=promote)


def test_load_a_catalog_version_the_promoted_one_and_clear_errors(settings, catalog, blobs):
    torch.set_num_threads(1)
    _register(catalog, blobs, "remover-a", "remover", WEIGHTS_DIR / "remover.pt", promote=False)
    _register(catalog, blobs, "remover-b", "remover", WEIGHTS_DIR / "remover.pt", promote=True)
    _register(catalog, blobs, "detector-a", "detector", WEIGHTS_DIR / "detector.pt", promote=True)
    models = CatalogModels(catalog, blobs)
    image = np.full((48, 64, 3), 120, np.uint8)

    named = Remover.load(version="remover-a", catalog=models, device="cpu")
    shipped = Remover.load(device="cpu")
    assert named.config == shipped.config and named.config["arch"] == "locate-restore"
    out, mask = named.clean(image)
    assert out.shape == image.shape and mask.shape == image.shape[:2]
    assert Remover.load(catalog=models, device="cpu").config == shipped.config  # the promoted one
    det = Detector.load(catalog=models, device="cpu")
    assert det.calibration == Detector.load(device="cpu").calibration and 0 <= det.score(image) <= 1

    with pytest.raises(LookupError, match="no remover 'nope' in the catalog"):
        Remover.load(version="nope", catalog=models)
    with pytest.raises(NoModel, match="'detector-a' is a detector, not a remover"):
        Remover.load(version="detector-a", catalog=models)
    with pytest.raises(NoModel, match="'remover-b' is a remover, not a detector"):
        Detector.load(version="remover-b", catalog=models)
    with pytest.raises(ValueError, match="pass catalog= as well"):
        Remover.load(version="remover-a")
    with pytest.raises(ValueError, match="not both"):
        Detector.load(WEIGHTS_DIR / "detector.pt", catalog=models)
    with pytest.raises(TypeError, match="takes a ModelSource"):
        Remover.load(version="remover-a", catalog=catalog)  # the bare catalog has no blobs


def test_catalog_models_open_reads_the_settings_catalog_and_a_catalog_without_models(settings, catalog, blobs):
    with CatalogModels.open(settings) as models:
        with pytest.raises(NoModel, match="no promoted detector"):
            Detector.load(catalog=models)
    _register(catalog, blobs, "detector-a", "detector", WEIGHTS_DIR / "detector.pt", promote=True)
    with CatalogModels.open(settings) as models:
        assert Detector.load(version="detector-a", catalog=models, device="cpu").threshold is not None
