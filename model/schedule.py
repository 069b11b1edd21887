"""The one-cycle learning-rate curve as a plain function of progress, shared by the remover's
wall-clock schedule (``model.remover.train``) and the detector's (``model.detector``) without either
importing the other's dependencies."""

from __future__ import annotations

import math

__all__ = ["one_cycle_factor"]


def one_cycle_factor(progress: float, pct_start: float, div_factor: float, final_div_factor: float) -> float:
    """The learning rate of torch's ``OneCycleLR`` (cosine annealing) as a fraction of ``max_lr``,
    at ``progress`` in [0, 1] of the cycle: up from ``1/div`` to 1 over ``pct_start``, then down
    to ``1/(div·final_div)``."""
    p = min(max(progress, 0.0), 1.0)
    start, peak, end = 1.0 / div_factor, 1.0, 1.0 / (div_factor * final_div_factor)

    def cos(a: float, b: float, t: float) -> float:
        return b + (a - b) / 2.0 * (math.cos(math.pi * t) + 1)

    if p <= pct_start:
        return cos(start, peak, p / pct_start if pct_start > 0 else 1.0)
    return cos(peak, end, (p - pct_start) / (1 - pct_start))
