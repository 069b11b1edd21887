"""The watermark remover: the seed's heterogeneous U-Net, in one file.

Read top to bottom: `DoubleConv` (the block every level uses), `AttentionGate` (filters each skip
connection by what the decoder is looking for), `SelfAttention` (global context at the bottleneck),
then `UNet`, which composes them once. Checkpoint helpers sit at the end.

Shapes below are for an input of (B, 3, H, W) at the default width (base=32, depth=4):

    encoder   32 @ H      64 @ H/2    128 @ H/4    256 @ H/8
    bottleneck                                                  256 @ H/16 + self-attention
    decoder   32 @ H  ◀── 32 @ H/2 ◀── 64 @ H/4 ◀── 128 @ H/8 ◀──┘
              each level: ConvTranspose2d to half the channels at twice the size, gate the
              encoder's skip with it, concatenate both, DoubleConv
    heads     image (3 @ H) = input + residual;  optional mask logits (1 @ H)

The bottleneck keeps the deepest encoder width instead of doubling it; that is what lands the
network at about 3.6 M trainable parameters (3,541,728; doubling the bottleneck's width would more than double that).
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


class DoubleConv(nn.Module):
    """conv-BN-ReLU then conv-BN-LeakyReLU: the seed's mixed activations in one block."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.LeakyReLU(0.2, inplace=True),
        )

    def forward(self, x):
        return self.block(x)


class AttentionGate(nn.Module):
    """Additive attention (Oktay et al., Attention U-Net) on a skip connection.

    The decoder's upsampled features `g` decide, pixel by pixel, how much of the encoder's skip
    features `x` to let through. `psi` outputs that (B, 1, H, W) map in [0, 1]; plots read it with
    a forward hook on `gate.psi`.
    """

    def __init__(self, gate_ch: int, skip_ch: int, inter_ch: int):
        super().__init__()
        self.w_g = nn.Sequential(nn.Conv2d(gate_ch, inter_ch, 1, bias=False), nn.BatchNorm2d(inter_ch))
        self.w_x = nn.Sequential(nn.Conv2d(skip_ch, inter_ch, 1, bias=False), nn.BatchNorm2d(inter_ch))
        self.psi = nn.Sequential(nn.Conv2d(inter_ch, 1, 1), nn.BatchNorm2d(1), nn.Sigmoid())

    def forward(self, g, x):
        a = F.relu(self.w_g(g) + self.w_x(x))  # (B, inter, H, W)
        return x * self.psi(a)  # (B, skip_ch, H, W)


class SelfAttention(nn.Module):
    """Single-head self-attention over the bottleneck's pixels (SAGAN style, learnt residual gain).

    `gamma` starts at zero, so the block starts as the identity and learns how much global context
    to mix in. Runs through `scaled_dot_product_attention`, which picks a fused kernel where one exists.
    """

    def __init__(self, ch: int):
        super().__init__()
        self.qk_ch = max(ch // 8, 1)
        self.q = nn.Conv2d(ch, self.qk_ch, 1)
        self.k = nn.Conv2d(ch, self.qk_ch, 1)
        self.v = nn.Conv2d(ch, ch, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        B, C, H, W = x.shape
        q = self.q(x).flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, HW, C/8)
        k = self.k(x).flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, HW, C/8)
        v = self.v(x).flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, HW, C)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, 1, HW, C)
        y = y.squeeze(1).transpose(1, 2).reshape(B, C, H, W)
        return x + self.gamma * y


class UNet(nn.Module):
    """Heterogeneous U-Net: DoubleConv levels, attention-gated skips, ConvTranspose2d upsampling,
    self-attention at the bottleneck.

    forward(x) takes (B, in_ch, H, W) in [0, 1], H and W divisible by `size_multiple`, and returns
    {"image": (B, out_ch, H, W)} plus {"mask_logits": (B, 1, H, W)} when the mask head is on.

    The image head predicts a residual added to the input (its weights start at zero, so an
    untrained network returns its input: the right first guess when most pixels carry no mark).
    With `mask_guided`, the output is x·(1−m) + y·m with m = sigmoid(mask logits): pixels the mask
    calls clean are copied from the input. `mask_guided` implies `mask_head`.
    """

    def __init__(self, in_ch=3, out_ch=3, base=32, depth=4, mask_head=False, mask_guided=False):
        super().__init__()
        if depth < 1 or base < 2:
            raise ValueError(f"UNet needs depth >= 1 and base >= 2, got depth={depth}, base={base}")
        if mask_guided and in_ch != out_ch:
            raise ValueError("mask-guided output blends input and output, so in_ch must equal out_ch")
        mask_head = bool(mask_head or mask_guided)
        self.config = dict(in_ch=in_ch, out_ch=out_ch, base=base, depth=depth,
                           mask_head=mask_head, mask_guided=bool(mask_guided))
        self.size_multiple = 2**depth
        widths = [base * 2**i for i in range(depth)]  # 32, 64, 128, 256

        self.encoders = nn.ModuleList()
        ch = in_ch
        for w in widths:
            self.encoders.append(DoubleConv(ch, w))
            ch = w
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(ch, ch)
        self.attention = SelfAttention(ch)

        # decoder level i mirrors encoder level i, deepest first
        self.ups = nn.ModuleList()
        self.gates = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in reversed(range(depth)):
            skip = widths[i]
            out = widths[i - 1] if i > 0 else widths[0]
            self.ups.append(nn.ConvTranspose2d(ch, ch // 2, 2, stride=2))  # (ch, h, w) -> (ch/2, 2h, 2w)
            self.gates.append(AttentionGate(ch // 2, skip, skip))
            self.decoders.append(DoubleConv(ch // 2 + skip, out))
            ch = out

        self.head = nn.Conv2d(ch, out_ch, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.mask_out = nn.Conv2d(ch, 1, 1) if mask_head else None

    def features(self, x):
        """The decoder's last feature map (B, base, H, W), which the heads read; no size check."""
        skips = []
        h = x
        for enc in self.encoders:
            h = enc(h)
            skips.append(h)
            h = self.pool(h)
        h = self.attention(self.bottleneck(h))  # (B, 8·base, H/16, W/16)
        for up, gate, dec, skip in zip(self.ups, self.gates, self.decoders, reversed(skips), strict=True):
            h = up(h)  # (B, ch/2, 2h, 2w)
            h = dec(torch.cat([h, gate(h, skip)], dim=1))
        return h

    @property
    def mask_head(self) -> bool:
        return self.config["mask_head"]

    @property
    def mask_guided(self) -> bool:
        return self.config["mask_guided"]

    def forward(self, x):
        B, C, H, W = x.shape
        m = self.size_multiple
        if H % m or W % m:
            raise ValueError(f"UNet input {H}x{W} is not a multiple of {m}; pad it first")
        h = self.features(x)
        y = x + self.head(h)  # (B, out_ch, H, W)
        out = {"image": y}
        if self.mask_out is not None:
            logits = self.mask_out(h)  # (B, 1, H, W)
            out["mask_logits"] = logits
            if self.mask_guided:
                mask = torch.sigmoid(logits)
                out["image"] = x * (1 - mask) + y * mask
        return out


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def build_model(config: dict) -> nn.Module:
    """Rebuild a remover from `model.config` (the dict stored in every checkpoint): a UNet, or
    with ``arch="locate-restore"`` a ``model.remover.locate.LocateRestore``."""
    if config.get("arch") == "locate-restore":
        from model.remover.locate import LocateRestore  # (model.remover.locate builds on this module)

        return LocateRestore(**config)
    return UNet(**config)


def save_checkpoint(model: UNet, path, **extra) -> Path:
    """Write the model's config and weights (plus `extra`: plain Python values and tensors) to
    `path` atomically: a temp file in the same folder, fsynced, then renamed over the target, so a
    kill mid-write leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = {"format": "unmark-unet/1", "config": dict(model.config), "state_dict": state, "extra": extra}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path_or_bytes, map_location="cpu") -> tuple[UNet, dict]:
    """Load a checkpoint written by `save_checkpoint` from a path or from its bytes (a blob).
    Returns (model in eval mode, on `map_location` when that names a device; extra). Loads with
    `weights_only=True`: a checkpoint is data, never code."""
    is_bytes = isinstance(path_or_bytes, bytes | bytearray | memoryview)
    src = io.BytesIO(path_or_bytes) if is_bytes else path_or_bytes
    payload = torch.load(src, map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != "unmark-unet/1":
        raise ValueError(f"not an Unmark UNet checkpoint: {'<bytes>' if is_bytes else path_or_bytes}")
    model = build_model(payload["config"])
    model.load_state_dict(payload["state_dict"])
    if isinstance(map_location, str | torch.device):
        model.to(map_location)
    model.eval()
    return model, payload.get("extra", {})
