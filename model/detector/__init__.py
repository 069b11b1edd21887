"""Watermark detectors for triage: a whole image in, the probability that it carries a mark out.

- ``localiser``: ``LocaliserDetector``, the shipped locate-then-restore remover's localiser, scored
  at its one reduced view (so a score means the same at any photo size); fine-tuned on a pool by
  ``train_localiser_detector``. This is the detector that ships (``model/weights/detector.pt``).
- ``cells``: ``WatermarkDetector``, a small CNN mapping an image to a grid of cell logits, scored
  at ``SCORE_SCALES``; ``score_images`` scores either kind.
- ``training``: the cell detector's self-supervised training (pairs, hard-negative mining).
- ``calibration``: triage's two thresholds (``calibrate``) and the metrics (ROC-AUC, accuracy).
- ``checkpoint``: either kind to and from bytes or files.
"""

from model.detector.calibration import (
    Calibration,
    best_accuracy_threshold,
    calibrate,
    detection_metrics,
    roc_auc,
)
from model.detector.cells import CELL, SCORE_SCALES, WatermarkDetector, prepare, score_images, top_mean
from model.detector.checkpoint import detector_from_bytes, detector_to_bytes, save_detector
from model.detector.localiser import LocaliserDetector, clean_and_marked, train_localiser_detector
from model.detector.training import (
    DetectorTrainConfig,
    HardCell,
    build_validation_set,
    hard_window,
    make_image,
    make_pair,
    mine_hard_cells,
    random_view,
    recolour,
    train_detector,
)

__all__ = ["CELL", "SCORE_SCALES", "Calibration", "DetectorTrainConfig", "HardCell", "LocaliserDetector",
           "WatermarkDetector", "best_accuracy_threshold", "build_validation_set", "calibrate", "clean_and_marked", "detection_metrics",
           "detector_from_bytes", "detector_to_bytes", "hard_window", "make_image", "make_pair", "mine_hard_cells",
           "prepare", "random_view", "recolour", "roc_auc", "save_detector", "score_images", "top_mean",
           "train_detector", "train_localiser_detector"]
