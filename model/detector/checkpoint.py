"""Detector checkpoints as bytes or files: a cell-grid ``WatermarkDetector`` or a
``LocaliserDetector`` (its config says ``kind: localiser``), with free-form ``extra`` (version,
calibration, scales, provenance)."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from model.detector.cells import WatermarkDetector
from model.detector.localiser import LocaliserDetector


def detector_to_bytes(model: nn.Module, half: bool = False, **extra) -> bytes:
    """The checkpoint of ``model`` (fp16 tensors when ``half``: they load back as float32)."""
    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save({"config": model.config, "state_dict": state, "extra": extra}, buf)
    return buf.getvalue()


def detector_from_bytes(data: bytes) -> tuple[nn.Module, dict]:
    ck = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    config = dict(ck["config"])
    cls = LocaliserDetector if config.get("kind") == "localiser" else WatermarkDetector
    model = cls(**config)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ck["state_dict"].items()})
    model.eval()
    return model, ck.get("extra", {})


def save_detector(model: nn.Module, path: str | os.PathLike, half: bool = False, **extra) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
    with os.fdopen(fd, "wb") as fh:
        fh.write(detector_to_bytes(model, half=half, **extra))
    os.replace(tmp, path)
    return path
