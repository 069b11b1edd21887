"""An inference-only copy of the U-Net with the work a trained network no longer needs removed.

Built by `fuse_unet(model)` from a `model.remover.network.UNet` in eval mode; the source model is never
touched (every weight here is a new tensor). What changes, and why it gives the same answer:

- BatchNorm in eval mode is an affine map per channel, so it is folded into the convolution
  before it (w·s, (b − mean)·s + beta with s = gamma / sqrt(var + eps)). That removes the 20 % of
  CPU time the separate BatchNorm passes took.
- Each ReLU / LeakyReLU(0.2) / Sigmoid after a convolution runs inside the convolution
  (oneDNN post-op, `torch.ops.mkldnn._convolution_pointwise`) instead of another pass over the
  feature map. Where that op is missing, plain conv + in-place activation is used.
- An attention gate computes relu(BN(Wg·g) + BN(Wx·x)). Both are 1×1 convolutions, so they
  are one 1×1 convolution over cat([g, x]); and the decoder concatenates exactly [g, x·psi], so
  that one concatenation is reused: x·psi is written in place into its second half.
- Self-attention: q, k and v are one 1×1 projection (a matmul on the channels-last layout), and
  the learnt gain gamma is folded into v (attention output is linear in v).
- The image and mask heads are one 1×1 projection.

Feature maps are kept channels-last (oneDNN's preferred layout for these convolutions). Results
equal the plain model's up to float rounding (max |Δ| ≈ 1e-6 on [0, 1] images; tests check it).
For a mask-guided network the output dict also carries ``raw_image`` (input + residual, before
the mask blend), which the tiled engine's hardened-mask output uses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class NotFusable(ValueError):
    """The model is not a U-Net this module knows how to fold (names the reason)."""


def _mkldnn_pointwise():
    """oneDNN's conv + post-op kernel, or None where this torch build lacks it."""
    try:
        op = torch.ops.mkldnn._convolution_pointwise
        return op if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):  # pragma: no cover - torch without mkldnn
        return None


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of one convolution equal to ``bn(conv(x))`` with ``bn`` in eval mode."""
    if bn.running_mean is None or bn.running_var is None:
        raise NotFusable(f"{bn} keeps no running statistics")
    s = (bn.weight if bn.affine else 1.0) / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    w = conv.weight * s.reshape(-1, 1, 1, 1)
    b = (bias - bn.running_mean) * s + (bn.bias if bn.affine else 0.0)
    return w.detach().clone(), b.detach().clone()


class _Conv(nn.Module):
    """A convolution (BatchNorm already folded) with its activation fused in."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, act: str, padding: int, use_mkldnn: bool):
        super().__init__()
        self.register_buffer("weight", weight.contiguous(memory_format=torch.channels_last))
        self.register_buffer("bias", bias.contiguous())
        self.act, self.padding = act, padding
        self._op = _mkldnn_pointwise() if use_mkldnn else None

    def forward(self, x):
        if self._op is not None and x.device.type == "cpu" and x.dtype == torch.float32:
            attr, scalars = ("leaky_relu", [0.2]) if self.act == "leaky_relu" else (self.act, [])
            p = [self.padding] * 2
            return self._op(x, self.weight, self.bias, p, [1, 1], [1, 1], 1, attr, scalars, "")
        y = F.conv2d(x, self.weight, self.bias, padding=self.padding)
        if self.act == "relu":
            return F.relu_(y)
        if self.act == "leaky_relu":
            return F.leaky_relu_(y, 0.2)
        return torch.sigmoid_(y)


def _double_conv(block: nn.Module, use_mkldnn: bool) -> nn.Sequential:
    seq = getattr(block, "block", None)
    kinds = [type(m) for m in seq] if isinstance(seq, nn.Sequential) else []
    if kinds != [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d, nn.BatchNorm2d, nn.LeakyReLU] or seq[5].negative_slope != 0.2:
        raise NotFusable(f"unexpected DoubleConv layout: {kinds}")
    return nn.Sequential(_Conv(*fold_batchnorm(seq[0], seq[1]), "relu", 1, use_mkldnn),
                         _Conv(*fold_batchnorm(seq[3], seq[4]), "leaky_relu", 1, use_mkldnn))


class _Gate(nn.Module):
    """Attention gate on z = cat([g, x]): z's second half becomes x·psi, in place."""

    def __init__(self, gate: nn.Module, use_mkldnn: bool):
        super().__init__()
        try:
            wg, bg = fold_batchnorm(gate.w_g[0], gate.w_g[1])
            wx, bx = fold_batchnorm(gate.w_x[0], gate.w_x[1])
            wp, bp = fold_batchnorm(gate.psi[0], gate.psi[1])
        except (AttributeError, IndexError, TypeError) as exc:
            raise NotFusable(f"unexpected AttentionGate layout: {exc}") from exc
        if not isinstance(gate.psi[2], nn.Sigmoid):
            raise NotFusable("attention gate psi does not end in a sigmoid")
        self.gate_ch = wg.shape[1]
        self.inter = _Conv(torch.cat([wg, wx], 1), bg + bx, "relu", 0, use_mkldnn)
        self.psi = _Conv(wp, bp, "sigmoid", 0, use_mkldnn)

    def forward(self, z):
        z[:, self.gate_ch :] *= self.psi(self.inter(z))
        return z


class FusedUNet(nn.Module):
    """Inference-only U-Net (see the module docstring); same call and outputs as `UNet`."""

    def __init__(self, model: nn.Module, use_mkldnn: bool = True):
        super().__init__()
        if model.training:
            raise NotFusable("model is in training mode (BatchNorm would use batch statistics)")
        need = ("encoders", "bottleneck", "attention", "ups", "gates", "decoders", "head", "pool", "config")
        missing = [n for n in need if not hasattr(model, n)]
        if missing:
            raise NotFusable(f"{type(model).__name__} lacks {missing}")
        if not isinstance(model.pool, nn.MaxPool2d) or model.pool.kernel_size not in (2, (2, 2)):
            raise NotFusable("pooling is not a 2×2 max-pool")
        self.config = dict(model.config)
        self.size_multiple = int(model.size_multiple)
        self.mask_guided = bool(self.config.get("mask_guided", False))
        with torch.no_grad():
            self.encoders = nn.ModuleList(_double_conv(e, use_mkldnn) for e in model.encoders)
            self.bottleneck = _double_conv(model.bottleneck, use_mkldnn)
            att = model.attention
            gamma = att.gamma.detach()
            self.qk_ch = int(att.qk_ch)
            self.register_buffer("qkv_w", torch.cat([att.q.weight, att.k.weight, att.v.weight * gamma]).flatten(1).clone())
            self.register_buffer("qkv_b", torch.cat([att.q.bias, att.k.bias, att.v.bias * gamma]).clone())
            for up in model.ups:
                if not isinstance(up, nn.ConvTranspose2d) or up.stride != (2, 2) or up.kernel_size != (2, 2):
                    raise NotFusable("upsampling is not a 2×2 stride-2 transposed convolution")
            self.ups = nn.ModuleList(_copy_up(u) for u in model.ups)
            self.gates = nn.ModuleList(_Gate(g, use_mkldnn) for g in model.gates)
            self.decoders = nn.ModuleList(_double_conv(d, use_mkldnn) for d in model.decoders)
            # a trunk whose heads were taken off (nn.Identity: a localiser's or restorer's) gives
            # only its features
            self.has_head = isinstance(model.head, nn.Conv2d)
            heads = [model.head] if self.has_head else []
            heads += [model.mask_out] if self.has_head and getattr(model, "mask_out", None) is not None else []
            self.out_ch = model.head.out_channels if self.has_head else 0
            if self.has_head:
                self.register_buffer("head_w", torch.cat([h.weight for h in heads]).flatten(1).clone())
                self.register_buffer("head_b", torch.cat([h.bias for h in heads]).clone())
            self.has_mask = len(heads) == 2

    def forward(self, x):
        B, C, H, W = x.shape
        m = self.size_multiple
        if H % m or W % m:
            raise ValueError(f"UNet input {H}x{W} is not a multiple of {m}; pad it first")
        if not self.has_head:
            raise NotFusable("this trunk has no heads: call features()")
        h = self.features(x)
        heads = F.linear(h.permute(0, 2, 3, 1), self.head_w, self.head_b).permute(0, 3, 1, 2)  # (B, out(+1), H, W)
        logits = heads[:, self.out_ch :] if self.has_mask else None
        return head_outputs(x, x + heads[:, : self.out_ch], logits, self.mask_guided)

    def features(self, x):
        """The decoder's last feature map (B, base, H, W), as ``UNet.features``; no size check."""
        B = x.shape[0]
        skips = []
        h = x
        for enc in self.encoders:
            h = enc(h)
            skips.append(h)
            h = F.max_pool2d(h, 2)
        h = self.bottleneck(h)
        _, c, hh, ww = h.shape
        t = h.permute(0, 2, 3, 1).reshape(B, hh * ww, c)  # (B, HW, C); free on channels-last
        qkv = F.linear(t, self.qkv_w, self.qkv_b).unsqueeze(1)
        q, k, v = qkv[..., : self.qk_ch], qkv[..., self.qk_ch : 2 * self.qk_ch], qkv[..., 2 * self.qk_ch :]
        t = t + F.scaled_dot_product_attention(q, k, v).squeeze(1)  # gamma is inside v
        h = t.reshape(B, hh, ww, c).permute(0, 3, 1, 2)  # (B, C, h, w) channels-last
        for up, gate, dec, skip in zip(self.ups, self.gates, self.decoders, reversed(skips), strict=True):
            h = up(h)
            h = dec(gate(torch.cat([h, skip], 1)))
        return h


def head_outputs(x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor | None, mask_guided: bool) -> dict:
    """The output dict of an inference copy: ``image`` (``y``, or for a mask-guided network the
    blend x·(1−m) + y·m), ``mask_logits`` and, when blended, ``raw_image`` (``y``)."""
    out = {"image": y}
    if logits is not None:
        out["mask_logits"] = logits
        if mask_guided:
            mask = torch.sigmoid(logits)
            out["raw_image"] = y
            out["image"] = x * (1 - mask) + y * mask
    return out


def _copy_up(up: nn.ConvTranspose2d) -> nn.ConvTranspose2d:
    new = nn.ConvTranspose2d(up.in_channels, up.out_channels, 2, stride=2, bias=up.bias is not None)
    new.load_state_dict(up.state_dict())
    return new.requires_grad_(False).to(up.weight.device)


def fuse_unet(model: nn.Module, use_mkldnn: bool = True) -> FusedUNet:
    """A folded, inference-only copy of ``model`` (a `UNet` in eval mode) on the model's device,
    channels-last. Raises `NotFusable` when the model's layout is not the one this knows."""
    fused = FusedUNet(model, use_mkldnn=use_mkldnn).eval()
    return fused.to(next(model.parameters()).device).to(memory_format=torch.channels_last)
