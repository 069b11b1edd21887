"""From a predicted mark probability to the weights that blend a cleaned output into its input.

A hardened output is ``input·(1 − w) + prediction·w``. ``MaskRule`` makes ``w`` from the
probability map ``p`` in three steps, each one a user control (``--threshold``, ``--dilate``,
``--feather``):

1. ``p > threshold``: the hard mask;
2. dilated by ``dilate`` pixels (a square kernel of side ``2·dilate + 1``), so a mark's soft rim
   is taken as well;
3. feathered over ``feather`` pixels outside it: ``w = 1 − d / (feather + 1)`` at Euclidean
   distance ``d`` from the dilated mask, clipped at 0, so the cleaned region fades into the input
   instead of ending at a hard edge.

Where ``w`` is 0 the output is the input, bit for bit. The default rule (0.5, 1, 0) is the one
the engine has always used for a hardened mask (``model.remover.infer.Cleaner``).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class MaskRule:
    """``threshold`` in (0, 1); ``dilate`` and ``feather`` in whole pixels, at least 0."""

    threshold: float = 0.5
    dilate: int = 1
    feather: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < float(self.threshold) < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        for name in ("dilate", "feather"):
            v = getattr(self, name)
            if isinstance(v, bool) or not float(v).is_integer() or v < 0:
                raise ValueError(f"{name} must be a whole number of pixels >= 0, got {v}")

    @classmethod
    def given(cls, threshold: float | None = None, dilate: int | None = None, feather: int | None = None
              ) -> MaskRule | None:
        """The rule a user's options name, each unset one at its default; None when none is set
        (the model's own output rule then applies)."""
        set_ = {k: v for k, v in (("threshold", threshold), ("dilate", dilate), ("feather", feather)) if v is not None}
        return cls(**set_) if set_ else None

    def hard(self, prob: np.ndarray) -> np.ndarray:
        """Steps 1 and 2: the thresholded, dilated mask (bool HxW)."""
        mask = (np.asarray(prob) > self.threshold).astype(np.uint8)
        d = int(self.dilate)
        if d and mask.any():
            mask = cv2.dilate(mask, np.ones((2 * d + 1, 2 * d + 1), np.uint8))
        return mask.astype(bool)

    def weights(self, prob: np.ndarray) -> np.ndarray:
        """All three steps: blend weights (float32 HxW in [0, 1]; 1 inside the dilated mask)."""
        hard = self.hard(prob)
        f = int(self.feather)
        if not f or not hard.any():
            return hard.astype(np.float32)
        # distance of every pixel outside the mask to the nearest mask pixel (0 inside)
        dist = cv2.distanceTransform((~hard).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        return np.clip(1.0 - dist / (f + 1.0), 0.0, 1.0).astype(np.float32)

    def as_metrics(self) -> dict[str, float | int]:
        """The rule as a cleaning's metrics record it."""
        return {"mask_threshold": float(self.threshold), "mask_dilate": int(self.dilate),
                "mask_feather": int(self.feather)}
