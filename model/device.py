"""Device and precision: the one place that decides where a network runs and in which dtype.

- `resolve_device`: ``auto`` → CUDA when available, else the CPU.
- `native_bf16`: whether bf16 autocast makes a device faster (a CUDA GPU with bf16, or a CPU
  with AVX512-BF16 or AMX).
- `resolve_precision`: ``auto`` → bf16 or fp16 on CUDA, bf16 on a CPU that does it natively,
  fp32 elsewhere.
- `autocast`: the autocast context a resolved precision runs under.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    return frozenset(word for line in text.splitlines() if line.startswith("flags") for word in line.split())


def native_bf16(device: str | torch.device) -> bool:
    """Whether bf16 autocast makes this device faster: a CUDA GPU with bf16, or a CPU with
    AVX512-BF16 or AMX. Elsewhere the CPU emulates bf16 and a conv runs ~5× slower than in float32
    (measured on an AVX-512 Xeon without BF16), so callers should stay in float32 there."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if device.type == "cpu" and native_bf16(device) else "fp32"


def same_shape_batches(items: list[tuple[int, torch.Tensor]], batch_size: int, device: torch.device | str
                       ) -> Iterator[tuple[list[int], torch.Tensor]]:
    """``(index, tensor)`` pairs grouped by tensor shape into stacked batches of at most
    ``batch_size`` on ``device``: (the indices, the batch)."""
    groups: dict[tuple[int, ...], list[tuple[int, torch.Tensor]]] = {}
    for i, t in items:
        groups.setdefault(tuple(t.shape), []).append((i, t))
    for group in groups.values():
        for k in range(0, len(group), batch_size):
            chunk = group[k : k + batch_size]
            yield [i for i, _ in chunk], torch.stack([t for _, t in chunk]).to(device)


def autocast(device: str | torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast a resolved ``precision`` runs under on ``device``: bf16 or fp16 autocast, and
    for ``fp32`` a context that changes nothing."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in ("bf16", "fp16"):
        raise ValueError(f"precision must be fp32, bf16 or fp16, not {precision!r}")
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
