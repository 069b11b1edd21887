"""PyTorch side of Unmark: network, losses, synthetic watermarks, datasets, training, inference, metrics, plots. Imports nothing of ours.

``from model import Remover, Detector`` cleans or scores one image (``model.api``)."""


def __getattr__(name: str):  # the API loads torch only when asked for
    if name in ("Remover", "Detector"):
        from model import api

        return getattr(api, name)
    raise AttributeError(name)
