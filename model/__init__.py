"""PyTorch side of Unmark: network, losses, synthetic watermarks, datasets, training, inference, metrics, plots. Imports nothing of ours."""
