"""model/device.py: where a network runs and in which dtype, and the autocast each precision runs under."""

from __future__ import annotations

import contextlib

import pytest
import torch

from model.device import autocast, resolve_device, resolve_precision


def test_resolve_device_passes_a_device_through_and_picks_one_for_auto():
    cpu = torch.device("cpu")
    assert resolve_device(cpu) is cpu
    assert resolve_device("cpu") == cpu
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_resolve_precision_keeps_an_explicit_choice_and_rejects_an_unknown_one():
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    assert resolve_precision("auto", torch.device("cpu")) in ("fp32", "bf16")
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("int4", torch.device("cpu"))


def test_autocast_is_a_no_op_in_fp32_and_casts_in_bf16():
    x = torch.ones(2, 2)
    with autocast("cpu", "fp32") as ctx:
        assert (x @ x).dtype == torch.float32
    assert isinstance(autocast("cpu", "fp32"), contextlib.nullcontext)
    assert ctx is None
    with autocast(torch.device("cpu"), "bf16"):
        assert (x @ x).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="fp32, bf16 or fp16"):
        autocast("cpu", "auto")
