"""PyTorch side of Unmark. Imports nothing of ours.

- ``model.synth``: synthetic watermarks and the training pairs made with them.
- ``model.remover``: the remover's networks, training, evaluation and tiled inference.
- ``model.detector``: the watermark detector that scores images for triage.
- ``model.device``, ``model.metrics``, ``model.schedule``: device and precision, image-quality
  metrics, the learning-rate schedule, shared by the remover and the detector.

``from model import Remover, Detector`` cleans or scores one image (``model.api``)."""


def __getattr__(name: str):  # the API loads torch only when asked for
    if name in ("Remover", "Detector"):
        from model import api

        return getattr(api, name)
    raise AttributeError(name)
