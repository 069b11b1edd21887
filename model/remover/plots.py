"""The seed's diagnostic figures, each written to a PNG (matplotlib's Agg canvas, no pyplot state).

Image figures take numpy images HxWx3 (uint8, or float in [0, 1]):
    residual_histogram, quality_maps (local PSNR and SSIM), side_by_side, watermark_residual
Run figures take the training history (one dict per epoch, as `model.remover.train` writes it):
    training_curves (loss terms, PSNR, SSIM), lr_schedule
Network figures take a remover and one image, and read its insides through forward hooks:
    attention_gate_maps, activations (every level), decoder_feature_maps, first_layer_kernels,
    gradient_saliency, and for a locate-then-restore remover localiser_maps (its mask, α and
    colour over the reduced view). ``trunk`` names the U-Net inside the remover to read (e.g.
    a ``LocateRestore``'s ``model.localiser.trunk``); the image still goes through the whole
    remover. A network without the part a figure reads raises ``NotApplicable``.

Every function returns the path it wrote.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from model.metrics import local_psnr_map, psnr, ssim, ssim_map
from model.remover.losses import TERMS


class NotApplicable(ValueError):
    """The figure reads a part (attention gates, encoder levels) that this network does not have."""


def _unet(net, figure: str, *parts: str):
    missing = [p for p in parts if not hasattr(net, p)]
    if missing:
        raise NotApplicable(f"{figure}: {type(net).__name__} has no {', '.join(missing)}")
    if any(len(getattr(net, p)) == 0 for p in parts if isinstance(getattr(net, p), torch.nn.ModuleList)):
        raise NotApplicable(f"{figure}: {type(net).__name__} has no {'/'.join(parts)}")
    return net


def _float(img) -> np.ndarray:
    img = np.asarray(img)
    return img.astype(np.float64) / 255.0 if img.dtype == np.uint8 else img.astype(np.float64)


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def _grid(n: int, cols: int, w: float = 2.4, h: float = 2.4) -> tuple[Figure, np.ndarray]:
    rows = max(1, -(-n // cols))
    fig = Figure(figsize=(w * cols, h * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax in axes:
        ax.axis("off")
    return fig, axes


# --- image figures -------------------------------------------------------------------------------

def residual_histogram(pred, target, path, bins: int = 101) -> Path:
    """Histogram of pred − target per channel (log count): a narrow spike at 0 is a good model."""
    r = _float(pred) - _float(target)
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    lim = max(float(np.abs(r).max()), 1e-3)
    for c, colour in enumerate("rgb"):
        ax.hist(r[..., c].ravel(), bins=bins, range=(-lim, lim), histtype="step", color=colour, log=True,
                label=f"{colour.upper()}  mean {r[..., c].mean():+.4f}  std {r[..., c].std():.4f}")
    ax.set_xlabel("residual (prediction − target)")
    ax.set_ylabel("pixels")
    ax.legend(fontsize=7)
    ax.set_title(f"residuals, PSNR {psnr(_float(pred), _float(target)):.2f} dB")
    return _save(fig, path)


def quality_maps(pred, target, path, window: int = 16) -> Path:
    """Where the image is good and bad: local PSNR (window×window) and the SSIM map, side by side."""
    p, t = _float(pred), _float(target)
    lp, sm = local_psnr_map(p, t, window), ssim_map(p, t)
    fig = Figure(figsize=(10, 4))
    a, b = fig.subplots(1, 2)
    im = a.imshow(lp, cmap="magma", vmin=min(10.0, float(lp.min())), vmax=min(60.0, max(float(lp.max()), 11.0)))
    a.set_title(f"local PSNR ({window}px), mean {psnr(p, t):.2f} dB")
    fig.colorbar(im, ax=a, fraction=0.046)
    im = b.imshow(sm, cmap="viridis", vmin=min(0.0, float(sm.min())), vmax=1)
    b.set_title(f"SSIM map, mean {ssim(p, t):.4f}")
    fig.colorbar(im, ax=b, fraction=0.046)
    for ax in (a, b):
        ax.axis("off")
    return _save(fig, path)


def side_by_side(images: dict[str, np.ndarray], path) -> Path:
    """Named images in one row (e.g. watermarked | cleaned | clean target), with their sizes."""
    fig, axes = _grid(len(images), len(images), 4, 4)
    for ax, (name, img) in zip(axes, images.items(), strict=False):
        ax.imshow(np.clip(_float(img), 0, 1))
        ax.set_title(f"{name} {img.shape[1]}×{img.shape[0]}", fontsize=9)
    return _save(fig, path)


def watermark_residual(watermarked, cleaned, path, mask=None) -> Path:
    """What the model took away: |watermarked − cleaned|, next to the true mask when known."""
    diff = np.abs(_float(watermarked) - _float(cleaned)).max(axis=2)
    n = 3 if mask is None else 4
    fig, axes = _grid(n, n, 3.5, 3.5)
    axes[0].imshow(np.clip(_float(watermarked), 0, 1))
    axes[0].set_title("watermarked")
    axes[1].imshow(np.clip(_float(cleaned), 0, 1))
    axes[1].set_title("cleaned")
    im = axes[2].imshow(diff, cmap="inferno", vmin=0, vmax=max(float(diff.max()), 1e-3))
    axes[2].set_title(f"removed |Δ|, {100 * (diff > 2 / 255).mean():.1f}% px changed")
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    if mask is not None:
        m = np.asarray(mask, dtype=float).squeeze()
        axes[3].imshow(m, cmap="gray", vmin=0, vmax=1)
        axes[3].set_title(f"true mask ({100 * (m > 0.5).mean():.1f}%)")
    return _save(fig, path)


# --- run figures ---------------------------------------------------------------------------------

def training_curves(history: Sequence[dict], path) -> Path:
    """Three panels over epochs: every loss term (log scale), PSNR, SSIM (all `*psnr` and
    `val_*ssim*` columns of the history)."""
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(history)]
    keys = list(dict.fromkeys(k for row in history for k in row))

    def series(k):
        return [row.get(k) if row.get(k) is not None else np.nan for row in history]

    fig = Figure(figsize=(14, 4))
    a, b, c = fig.subplots(1, 3)
    for k in [t for t in (*TERMS, "total") if t in keys]:
        a.plot(epochs, series(k), marker=".", label=k, lw=2 if k == "total" else 1)
    a.set_yscale("log")
    a.set_title("loss terms (unweighted)")
    for ax, pick, title in ((b, lambda k: "psnr" in k, "PSNR (dB)"),
                            (c, lambda k: "ssim" in k and k != "ssim", "SSIM")):
        for k in filter(pick, keys):
            ax.plot(epochs, series(k), marker=".", label=k)
        ax.set_title(title)
    for ax in (a, b, c):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return _save(fig, path)


def lr_schedule(lrs, path) -> Path:
    """The learning rate per step (a sequence of floats) or per epoch (history rows with "lr")."""
    if len(lrs) and isinstance(lrs[0], dict):
        x = [row.get("epoch", i + 1) for i, row in enumerate(lrs)]
        y = [row["lr"] for row in lrs]
        xlabel = "epoch"
    else:
        x, y, xlabel = list(range(len(lrs))), list(lrs), "step"
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.plot(x, y)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("learning rate")
    ax.set_title(f"LR schedule: peak {max(y):.2e}, last {y[-1]:.2e}")
    ax.grid(alpha=0.3)
    return _save(fig, path)


# --- network figures -----------------------------------------------------------------------------

def _batch(model, image) -> tuple[torch.Tensor, tuple[int, int]]:
    """One image as a (1, 3, H', W') float tensor on the model's device, reflect-padded to the
    network's size multiple; returns the original (H, W) too."""
    x = torch.as_tensor(_float(image), dtype=torch.float32).permute(2, 0, 1)[None]
    h, w = x.shape[-2:]
    m = model.size_multiple
    x = F.pad(x, (0, -w % m, 0, -h % m), mode="reflect" if min(h, w) > m else "replicate")
    return x.to(next(model.parameters()).device), (h, w)


@contextlib.contextmanager
def _hooks(modules: dict[str, torch.nn.Module]):
    """Record each module's forward output (detached, float, CPU) under its name."""
    seen: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda _m, _i, out, name=name: seen.__setitem__(name, out.detach().float().cpu()))
               for name, m in modules.items()]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def _whole_forward(model):
    """``model`` in eval mode for the figure; a locate-then-restore network restores the whole image
    with its graph (at inference it restores only the marked box, without grad), so every part is
    drawn and gradients reach the input."""
    was_training = model.training
    everywhere = getattr(model, "restore_everywhere", None)
    model.eval()
    if everywhere is not None:
        model.restore_everywhere = True
    try:
        yield model
    finally:
        model.train(was_training)
        if everywhere is not None:
            model.restore_everywhere = everywhere


def _run(model, image, modules):
    x, hw = _batch(model, image)
    with _whole_forward(model), _hooks(modules) as seen, torch.no_grad():
        model(x)
    return x, hw, seen


def _level_names(model) -> dict[str, torch.nn.Module]:
    n = len(model.encoders)
    mods = {f"enc{i} ({model.encoders[i].block[0].out_channels}ch, 1/{2**i})": e for i, e in enumerate(model.encoders)}
    mods[f"bottleneck+attn (1/{2**n})"] = model.attention
    for j, d in enumerate(model.decoders):
        mods[f"dec{n - 1 - j} ({d.block[0].out_channels}ch, 1/{2 ** (n - 1 - j)})"] = d
    return mods


def attention_gate_maps(model, image, path, trunk=None) -> Path:
    """The attention coefficient of every skip connection's gate, upsampled over the image."""
    net = _unet(model if trunk is None else trunk, "attention gate maps", "gates")
    gates = {f"gate {i} (1/{2**i})": net.gates[len(net.gates) - 1 - i].psi for i in range(len(net.gates))}
    x, (h, w), seen = _run(model, image, gates)
    fig, axes = _grid(len(gates) + 1, len(gates) + 1, 3, 3)
    axes[0].imshow(np.clip(_float(image), 0, 1))
    axes[0].set_title("input")
    for ax, (name, a) in zip(axes[1:], seen.items(), strict=True):
        a = F.interpolate(a, size=x.shape[-2:], mode="nearest")[0, 0, :h, :w].numpy()
        im = ax.imshow(a, cmap="jet", vmin=0, vmax=1)
        ax.set_title(f"{name}\nmean {a.mean():.2f}", fontsize=8)
    fig.colorbar(im, ax=list(axes[1:]), fraction=0.02)
    return _save(fig, path)


def activations(model, image, path, trunk=None) -> Path:
    """Mean |activation| over channels at every level, encoder to decoder."""
    levels = _level_names(_unet(model if trunk is None else trunk, "activations", "encoders", "decoders",
                                "attention"))
    _, _, seen = _run(model, image, levels)
    fig, axes = _grid(len(seen) + 1, min(len(seen) + 1, 5), 2.8, 2.8)
    axes[0].imshow(np.clip(_float(image), 0, 1))
    axes[0].set_title("input", fontsize=8)
    for ax, (name, a) in zip(axes[1 : len(seen) + 1], seen.items(), strict=True):
        ax.imshow(a[0].abs().mean(0).numpy(), cmap="viridis")
        ax.set_title(name, fontsize=7)
    return _save(fig, path)


def decoder_feature_maps(model, image, path, channels: int = 8, trunk=None) -> Path:
    """The first `channels` feature maps of each decoder level (rows: deepest to full size),
    the channels ordered by activation energy."""
    net = _unet(model if trunk is None else trunk, "decoder feature maps", "decoders")
    n = len(net.decoders)
    decs = {f"dec{n - 1 - j}": d for j, d in enumerate(net.decoders)}
    _, _, seen = _run(model, image, decs)
    k = min(channels, min(a.shape[1] for a in seen.values()))
    fig = Figure(figsize=(1.8 * k, 1.9 * n))
    axes = fig.subplots(n, k, squeeze=False)
    for r, (name, a) in enumerate(seen.items()):
        a = a[0]
        order = a.pow(2).mean((1, 2)).argsort(descending=True)[:k]
        for col, ch in enumerate(order.tolist()):
            ax = axes[r, col]
            ax.imshow(a[ch].numpy(), cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name} c{ch}", fontsize=6)
    return _save(fig, path)


def first_layer_kernels(model, path) -> Path:
    """The first conv's 3×3 RGB kernels, each min–max scaled to show its colour/orientation."""
    wt = _unet(model, "first-layer kernels", "encoders").encoders[0].block[0].weight.detach().float().cpu()  # (out, in, 3, 3)
    n = wt.shape[0]
    fig, axes = _grid(n, min(n, 8), 1.2, 1.2)
    for i, ax in enumerate(axes[:n]):
        k = wt[i]
        k = k[:3] if k.shape[0] >= 3 else k[:1]  # a trunk fed more than RGB: its first three inputs
        k = (k - k.min()) / (k.max() - k.min() + 1e-12)
        ax.imshow(k.permute(1, 2, 0).numpy() if k.shape[0] == 3 else k[0].numpy(), interpolation="nearest")
        ax.set_title(str(i), fontsize=6)
    fig.suptitle(f"first-layer kernels {tuple(wt.shape)}", fontsize=9)
    return _save(fig, path)


def gradient_saliency(model, image, path) -> Path:
    """|∂ objective / ∂ input| (max over colour channels): which pixels drive the network's
    decision. The objective is the predicted mask's total mass with a mask head, else the total
    change the network makes to the image."""
    x, (h, w) = _batch(model, image)
    x.requires_grad_(True)
    with _whole_forward(model):
        out = model(x)
        if "mask_logits" in out:
            objective, what = torch.sigmoid(out["mask_logits"]).sum(), "predicted mask mass"
        else:
            objective, what = (out["image"] - x).abs().sum(), "total change"
        (grad,) = torch.autograd.grad(objective, x)
    sal = grad[0].abs().amax(0)[:h, :w].cpu().numpy()
    fig, axes = _grid(3, 3, 3.5, 3.5)
    axes[0].imshow(np.clip(_float(image), 0, 1))
    axes[0].set_title("input")
    im = axes[1].imshow(sal, cmap="hot")
    axes[1].set_title(f"saliency of {what}", fontsize=8)
    fig.colorbar(im, ax=axes[1], fraction=0.046)
    axes[2].imshow(np.clip(_float(image), 0, 1))
    axes[2].imshow(sal / (sal.max() + 1e-12), cmap="hot", alpha=0.6)
    axes[2].set_title("overlay")
    return _save(fig, path)


def localiser_maps(model, image, path, mask=None, alpha=None) -> Path:
    """A locate-then-restore remover's localiser at its reduced view: the mark probability, its
    opacity α and its colour W (shown where the probability is over 0.5), next to the true mask
    and α when known (HxW arrays in [0, 1], at the image's size)."""
    if not hasattr(model, "localiser"):
        raise NotApplicable(f"localiser maps: {type(model).__name__} has no localiser")
    x, hw = _batch(model, image)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        model.train(was_training)
    prob = torch.sigmoid(out["coarse_logits"])[0, 0].float().cpu().numpy()
    a = out["alpha_view"][0, 0].float().cpu().numpy()
    colour = out["colour_view"][0].float().permute(1, 2, 0).cpu().numpy()
    shown = np.where((prob > 0.5)[..., None], colour, 0.5)
    truth = {k: np.asarray(v, dtype=float).squeeze() for k, v in (("true mask", mask), ("true α", alpha)) if v is not None}
    fig, axes = _grid(4 + len(truth), 4 + len(truth), 3, 3)
    axes[0].imshow(np.clip(_float(image), 0, 1))
    axes[0].set_title(f"input {hw[1]}×{hw[0]}", fontsize=8)
    im = axes[1].imshow(prob, cmap="magma", vmin=0, vmax=1)
    axes[1].set_title(f"mark probability {prob.shape[1]}×{prob.shape[0]}\n{100 * (prob > 0.5).mean():.1f}% over 0.5", fontsize=8)
    fig.colorbar(im, ax=axes[1], fraction=0.046)
    im = axes[2].imshow(a, cmap="viridis", vmin=0, vmax=1)
    axes[2].set_title(f"opacity α, mean {a.mean():.2f}", fontsize=8)
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    axes[3].imshow(np.clip(shown, 0, 1))
    axes[3].set_title("colour W where p > 0.5", fontsize=8)
    for ax, (name, t) in zip(axes[4:], truth.items(), strict=True):
        ax.imshow(t, cmap="gray", vmin=0, vmax=1)
        ax.set_title(name, fontsize=8)
    return _save(fig, path)
