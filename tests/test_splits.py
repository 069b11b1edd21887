"""One split-by-hash rule on both sides of the layering: the catalog's (``storage.queries.split_for``,
which places triaged images) and the model side's (``model.synth.pairs.split_paths``, which splits
the shipped models' training photos) put every file in the same split. ``model`` and ``storage``
may not import each other, so the rule is written twice and this test keeps the two one rule."""

from __future__ import annotations

import hashlib

import numpy as np

from model.synth.pairs import split_paths
from storage.queries import split_for


def test_the_catalog_and_the_model_side_split_every_file_alike(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(300):  # enough that no split is empty (split_paths moves files only then)
        p = tmp_path / f"{i}.bin"
        p.write_bytes(rng.bytes(64))
        paths.append(p)
    train, val, test = split_paths(paths)
    assert train and val and test
    by_split = {**dict.fromkeys(train, "train"), **dict.fromkeys(val, "val"), **dict.fromkeys(test, "test")}
    for p in paths:
        assert by_split[str(p)] == split_for(hashlib.sha256(p.read_bytes()).hexdigest()), p
    for fractions in ((0.5, 0.25, 0.25), (0.8, 0.1, 0.1)):
        tr, va, te = split_paths(paths, fractions)
        got = {**dict.fromkeys(tr, "train"), **dict.fromkeys(va, "val"), **dict.fromkeys(te, "test")}
        assert all(got[str(p)] == split_for(hashlib.sha256(p.read_bytes()).hexdigest(), fractions) for p in paths)
