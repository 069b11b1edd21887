"""model/remover/masks.py: threshold, dilation and feather turn a probability map into blend weights of
known values, the default rule is the engine's old one, and bad values are clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.remover.masks import MaskRule


def _dot(n: int = 15, p: float = 0.9) -> np.ndarray:
    prob = np.zeros((n, n), np.float32)
    prob[n // 2, n // 2] = p
    return prob


def test_threshold_dilate_and_feather_give_known_weights():
    c = 7
    assert not MaskRule(threshold=0.95).hard(_dot()).any()
    assert MaskRule(dilate=0).hard(_dot()).sum() == 1
    hard = MaskRule(dilate=2).hard(_dot())
    assert hard.sum() == 25 and hard[c - 2 : c + 3, c - 2 : c + 3].all()
    w = MaskRule(dilate=1, feather=2).weights(_dot())
    assert w.dtype == np.float32 and w.shape == (15, 15)
    assert (w[c - 1 : c + 2, c - 1 : c + 2] == 1).all()
    # along the row: distance 1, 2 and 3 outside the 3x3 block
    assert w[c, c + 2] == pytest.approx(2 / 3) and w[c, c + 3] == pytest.approx(1 / 3) and w[c, c + 4] == 0
    assert ((w > 0) & (w < 1)).sum() > 0 and w[0, 0] == 0
    assert MaskRule(feather=3).weights(np.zeros((4, 4), np.float32)).sum() == 0  # nothing to feather
    assert MaskRule().as_metrics() == {"mask_threshold": 0.5, "mask_dilate": 1, "mask_feather": 0}


def test_default_rule_is_the_engines_old_hardening():
    torch.set_num_threads(1)
    prob = np.random.default_rng(0).random((33, 41)).astype(np.float32) ** 3
    old = F.max_pool2d((torch.from_numpy(prob) > 0.5).float()[None, None], 3, stride=1, padding=1)[0, 0]
    assert np.array_equal(MaskRule().weights(prob), old.numpy())


def test_given_options_fill_defaults_and_bad_values_are_errors():
    assert MaskRule.given() is None
    assert MaskRule.given(feather=4) == MaskRule(0.5, 1, 4)
    assert MaskRule.given(threshold=0.3) == MaskRule(0.3, 1, 0)
    for kw, word in (({"threshold": 1.0}, "threshold"), ({"threshold": 0}, "threshold"),
                     ({"dilate": -1}, "dilate"), ({"feather": 1.5}, "feather")):
        with pytest.raises(ValueError, match=word):
            MaskRule(**kw)
