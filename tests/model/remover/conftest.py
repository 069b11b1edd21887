"""Fixtures shared by the remover's tests."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def trained_tiny(tmp_path):
    """(network, image): the tiny profile trained briefly on four real photos (skimage's), so the
    BatchNorm statistics and weights are the ones training produces, and the first photo (uint8).
    Not mask-guided: its output is input + residual everywhere, so precision shows in every pixel."""
    import skimage.data as sd
    import torch
    from PIL import Image

    from model.remover.network import load_checkpoint
    from model.remover.train import profile_config, train

    torch.set_num_threads(1)
    paths = []
    for i, a in enumerate([sd.astronaut(), sd.chelsea(), sd.coffee(), sd.rocket()]):
        im = Image.fromarray(a).convert("RGB")
        im.thumbnail((128, 128))
        paths.append(tmp_path / f"{i}.png")
        im.save(paths[-1])
    cfg = profile_config("tiny", epochs=3, steps_per_epoch=4, mask_guided=False, lr=2e-2)
    train(paths[:2], paths[2:3], paths[3:4], cfg, tmp_path / "run", log=None)
    net, _ = load_checkpoint(tmp_path / "run" / "best.pt")
    return net, np.asarray(Image.open(paths[0]))
