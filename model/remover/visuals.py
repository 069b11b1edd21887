"""The seed notebook's figures, drawn at the end of every training run on fixed test samples.

``draw_run_visuals(model, samples, out_dir)`` picks ``N_SAMPLES`` fixed samples of the run's test
set (the same ones every run: spread evenly over it), shrinks them to ``MAX_SIDE`` pixels (cheap
on a CPU) and writes into ``out_dir``:

- per sample: the watermarked | cleaned | clean row, the residual histogram, the local PSNR/SSIM
  maps and the watermark residual (against the true mask), gradient saliency, and the
  attention-gate maps, activations and decoder feature maps of each U-Net trunk; for a
  locate-then-restore remover, of the localiser's and the restorer's trunks, plus the
  localiser's mask, α and colour maps;
- once: each trunk's first-layer kernels;
- ``visuals.json``: the figures drawn (file, title, sample) and those skipped or failed, with why.

A figure that does not apply to the network (``model.remover.plots.NotApplicable``: attention-gate maps
of a network without gates) is skipped with a log line; one that fails is logged and listed,
and the rest are still drawn: a finished training run never fails for a figure.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model.remover import plots
from model.remover.evaluate import predict

N_SAMPLES = 2
MAX_SIDE = 192  # px: the samples' longer side for the figures


def pick_samples(dataset: Sequence[dict], n: int = N_SAMPLES) -> list[dict]:
    """``n`` items of ``dataset`` spread evenly over it (the first and the last of two)."""
    size = len(dataset)
    if size == 0 or n <= 0:
        return []
    idx = sorted({round(i * (size - 1) / max(n - 1, 1)) for i in range(min(n, size))})
    return [dataset[i] for i in idx]


def _shrink(sample: dict, max_side: int) -> dict[str, torch.Tensor]:
    """The sample's (C,H,W) tensors scaled (area) so the longer side is at most ``max_side``."""
    out = {k: v for k, v in sample.items() if isinstance(v, torch.Tensor) and v.ndim == 3}
    h, w = out["input"].shape[-2:]
    s = max_side / max(h, w)
    if s < 1:
        size = (max(16, round(h * s)), max(16, round(w * s)))
        out = {k: F.interpolate(v[None].float(), size=size, mode="area")[0] for k, v in out.items()}
    return out


def _hwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()


def _trunks(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The U-Nets whose insides are drawn, by figure-name prefix."""
    if hasattr(model, "localiser") and hasattr(model, "restorer"):
        return {"localiser-": model.localiser.trunk, "restorer-": model.restorer.trunk}
    return {"": model}


Figure = tuple[str, str, Callable[[Path], Path]]


def _sample_figures(model: torch.nn.Module, s: dict[str, torch.Tensor], harden_mask: bool) -> list[Figure]:
    marked, clean = _hwc(s["input"]), _hwc(s["clean"] if "clean" in s else s["target"])
    mask = s["mask"][0].numpy() if "mask" in s else None
    alpha = s["alpha"][0].numpy() if "alpha" in s else None
    cache: dict[str, np.ndarray] = {}

    def cleaned() -> np.ndarray:
        if "out" not in cache:
            device = next(model.parameters()).device
            with torch.no_grad():
                cache["out"] = _hwc(predict(model, s["input"][None].float().to(device), harden_mask=harden_mask)["image"][0])
        return cache["out"]

    figs: list[Figure] = [
        ("side_by_side", "watermarked | cleaned | clean",
         lambda p: plots.side_by_side({"watermarked": marked, "cleaned": cleaned(), "clean": clean}, p)),
        ("residual_histogram", "residual histogram (cleaned − clean)",
         lambda p: plots.residual_histogram(cleaned(), clean, p)),
        ("quality_maps", "local PSNR and SSIM maps", lambda p: plots.quality_maps(cleaned(), clean, p)),
        ("watermark_residual", "what the model removed, and the true mask",
         lambda p: plots.watermark_residual(marked, cleaned(), p, mask=mask)),
        ("gradient_saliency", "gradient saliency", lambda p: plots.gradient_saliency(model, marked, p)),
    ]
    if hasattr(model, "localiser"):
        figs.append(("localiser_maps", "localiser: mask, α and colour",
                     lambda p: plots.localiser_maps(model, marked, p, mask=mask, alpha=alpha)))
    for prefix, trunk in _trunks(model).items():
        part = f"{prefix.rstrip('-')}: " if prefix else ""
        figs += [
            (f"{prefix}attention_gate_maps", f"{part}attention-gate maps",
             lambda p, t=trunk: plots.attention_gate_maps(model, marked, p, trunk=t)),
            (f"{prefix}activations", f"{part}activations per level",
             lambda p, t=trunk: plots.activations(model, marked, p, trunk=t)),
            (f"{prefix}decoder_feature_maps", f"{part}decoder feature maps",
             lambda p, t=trunk: plots.decoder_feature_maps(model, marked, p, trunk=t)),
        ]
    return figs


def draw_run_visuals(model: torch.nn.Module, samples: Sequence[dict], out_dir: str | Path,
                     log: Callable[[str], None] | None = print, harden_mask: bool = False,
                     n_samples: int = N_SAMPLES, max_side: int = MAX_SIDE) -> list[str]:
    """Draw the figures (see the module docstring) into ``out_dir``; return the paths written.
    ``samples`` is the run's fixed test set (items as ``model.synth.pairs.WatermarkPairs`` gives them)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    say = log or (lambda _m: None)
    drawn: list[dict] = []
    skipped: list[dict] = []
    failed: list[dict] = []

    def draw(name: str, title: str, sample: int | None, fn: Callable[[Path], Path]) -> None:
        try:
            fn(out_dir / f"{name}.png")
        except plots.NotApplicable as exc:
            skipped.append({"figure": name, "reason": str(exc)})
            say(f"visuals: skipped {name}: {exc}")
        except Exception as exc:  # noqa: BLE001 - a figure never fails the run it illustrates
            failed.append({"figure": name, "reason": f"{type(exc).__name__}: {exc}"})
            say(f"visuals: {name} failed: {type(exc).__name__}: {exc}")
        else:
            drawn.append({"file": f"{name}.png", "title": title, "sample": sample})

    try:
        picked = [_shrink(s, max_side) for s in pick_samples(samples, n_samples)]
    except Exception as exc:  # noqa: BLE001 - no samples: the network figures are still drawn
        failed.append({"figure": "samples", "reason": f"{type(exc).__name__}: {exc}"})
        say(f"visuals: no test samples: {type(exc).__name__}: {exc}")
        picked = []
    was_training = model.training
    try:
        for i, s in enumerate(picked):
            for name, title, fn in _sample_figures(model, s, harden_mask):
                draw(f"s{i}-{name}", f"sample {i}: {title}", i, fn)
        for prefix, trunk in _trunks(model).items():
            draw(f"{prefix}first_layer_kernels", (f"{prefix.rstrip('-')}: " if prefix else "") + "first-layer kernels", None,
                 lambda p, t=trunk: plots.first_layer_kernels(t, p))
    finally:
        model.train(was_training)
    (out_dir / "visuals.json").write_text(json.dumps({"figures": drawn, "skipped": skipped, "failed": failed}, indent=1))
    say(f"visuals: {len(drawn)} figures in {out_dir}" + (f", {len(skipped)} skipped" if skipped else "")
        + (f", {len(failed)} failed" if failed else ""))
    return [str(out_dir / d["file"]) for d in drawn]
