"""PyTorch side of Unmark: network, losses, synthetic watermarks, datasets, training, inference, metrics, plots. Imports nothing of ours.

``from model import Remover`` cleans one image with the shipped weights (``model.api``)."""


def __getattr__(name: str):  # the API loads torch only when asked for
    if name == "Remover":
        from model.api import Remover

        return Remover
    raise AttributeError(name)
