"""``unmark evaluate``: score a registered remover on a public benchmark protocol.

Only ``swcnn`` exists (``model.remover.evaluate.swcnn_protocol``, the test of Tian et al. 2024). The model
is the promoted remover unless a version is named; its checkpoint comes from the blob store and its
evaluation settings (the hardened mask) from the config it was registered with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from model.device import resolve_device
from model.remover.evaluate import SWCNN_ALPHAS, SWCNN_PAPER_PSNR, swcnn_protocol
from pipeline import registry
from pipeline.config import Settings
from storage import BlobStore, Catalog

PROTOCOLS = ("swcnn",)


def parse_alphas(text: str | None) -> tuple[float, ...]:
    """``"0.3,0.5"`` -> ``(0.3, 0.5)``; each in (0, 1]."""
    if not text:
        return SWCNN_ALPHAS
    alphas = tuple(float(a) for a in text.split(",") if a.strip())
    bad = [a for a in alphas if not 0 < a <= 1]
    if bad or not alphas:
        raise ValueError(f"opacities must lie in (0, 1], got {text!r}")
    return alphas


def evaluate(
    catalog: Catalog,
    blobs: BlobStore,
    settings: Settings,
    images: str | Path,
    logos: str | Path,
    protocol: str = "swcnn",
    alphas: Sequence[float] = SWCNN_ALPHAS,
    model_version: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """``{"protocol", "model", "images", "logos", "alpha": {"0.3": {"input_psnr", "psnr",
    "input_ssim", "ssim", "paper_psnr"}, ...}, "seconds"}`` for the chosen remover."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}: {', '.join(PROTOCOLS)}")
    device = resolve_device(settings.models.device)
    ref, model = registry.load_remover(catalog, blobs, model_version, map_location=device)
    version, config = ref.version, ref.config
    result = swcnn_protocol(model, images, logos, alphas=alphas, device=device,
                            harden_mask=bool(config.get("harden_mask", False)), progress=progress)
    for a, row in result["alpha"].items():
        row["paper_psnr"] = SWCNN_PAPER_PSNR.get(a)
    return {"protocol": protocol, "model": version, **{k: v for k, v in result.items() if k != "protocol"}}
