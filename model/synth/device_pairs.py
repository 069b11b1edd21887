"""Watermarked pairs made on the training device from a pre-rendered mark bank.

On a lent GPU the network's step is a few milliseconds, and drawing marks on the CPU (fonts,
icons, warps, JPEG) cannot keep up: on an H100 the seed network's step took 23 ms while six loader
processes drew ~145 pairs a second. So, for a device run, the CPU only decodes and crops clean
photos, and the marks are made on the device:

1. ``MarkBank.build``: the renderer draws ``n`` marks once, each as a premultiplied RGBA layer on a
   canvas (``WatermarkRenderer.layer``, without the under-mark adjustment, which belongs to the
   photo it was drawn for), kept as one fp16 tensor (n, 4, S, S) on the device.
2. ``MarkBank.composite``: for a batch of clean crops (B,3,H,W) in [0, 1], each sample takes a
   random bank layer through a random affine warp (scale, rotation, translation: kornia's
   ``warp_affine``), an opacity gain, and sometimes a flat recolouring; then
   ``I = clean·(1 − A) + P`` (P the premultiplied colour), exactly as the CPU renderer composites,
   so α = A and W = P/A are known per pixel. Re-encoding artefacts follow: differentiable JPEG
   (kornia) on part of the batch and Gaussian noise on another part.

The output has the keys of ``model.synth.pairs.WatermarkPairs`` batches (``input``, ``target``, ``mask``,
``clean``, ``alpha``, ``colour``), so the training loop takes either.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from kornia.enhance import jpeg_codec_differentiable
from kornia.geometry.transform import warp_affine

from model.synth.renderer import FAMILIES, WatermarkRenderer

MIN_DIFF = 2 / 255  # a pixel is in the mask when the mark changed it by at least this much


class MarkBank:
    """``layers``: (n, 4, S, S) premultiplied RGBA marks (fp16, on ``layers.device``)."""

    def __init__(self, layers: torch.Tensor, families: list[str]):
        if layers.ndim != 4 or layers.shape[1] != 4:
            raise ValueError(f"a mark bank is (n, 4, S, S), got {tuple(layers.shape)}")
        if len(layers) == 0:
            raise ValueError("a mark bank needs at least one mark")
        self.layers = layers
        self.families = families

    def __len__(self) -> int:
        return len(self.layers)

    @classmethod
    def build(cls, renderer: WatermarkRenderer, n: int, size: int = 256, seed: int = 0,
              device: str | torch.device = "cpu") -> MarkBank:
        """Draw ``n`` marks of the renderer's families on ``size``² canvases. Each is drawn for a
        random flat-and-noise backdrop (the renderer picks contrasting colours from it), and marks
        that came out invisible are redrawn."""
        rng = np.random.default_rng(seed)
        out = np.zeros((n, 4, size, size), np.float16)
        fams = []
        for i in range(n):
            family = str(rng.choice(renderer.families, p=renderer._weights))
            for _attempt in range(6):
                backdrop = np.clip(rng.normal(rng.uniform(30, 225, 3), 20, (size, size, 3)), 0, 255).astype(np.uint8)
                layer, _ = renderer.layer(backdrop, rng, family, adjust_under=False)
                if float((layer[..., 3] > 0.02).mean()) >= renderer.min_mask_fraction:
                    break
            out[i] = layer.transpose(2, 0, 1)
            fams.append(family)
        return cls(torch.from_numpy(out).to(device), fams)

    def composite(self, clean: torch.Tensor, generator: torch.Generator | None = None,
                  jpeg_p: float = 0.35, noise_p: float = 0.25, clean_share: float = 0.0) -> dict[str, torch.Tensor]:
        """Watermark a batch of clean crops (B,3,H,W) in [0, 1] on their device; a ``clean_share``
        of them stays unmarked (empty mask, α = 0), through the same JPEG and noise."""
        B, _, H, W = clean.shape
        dev = clean.device
        g = generator

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=g).to(dev)

        idx = torch.randint(len(self), (B,), generator=g).to(self.layers.device)
        layers = self.layers[idx].to(dev, torch.float32)  # (B,4,S,S)
        S = layers.shape[-1]
        # affine: bank canvas → crop, scaled about its centre, rotated, shifted
        scale = (0.5 + rand(B)) * (min(H, W) / S)  # 0.5–1.5 of the canvas fitted to the crop
        angle = torch.where(rand(B) < 0.3, (rand(B) - 0.5) * (math.pi / 4.5), torch.zeros(B, device=dev))
        shift_x = (rand(B) - 0.5) * W * 0.8
        shift_y = (rand(B) - 0.5) * H * 0.8
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        cx, cy = (S - 1) / 2, (S - 1) / 2
        tx = (W - 1) / 2 + shift_x - (cos * cx - sin * cy)
        ty = (H - 1) / 2 + shift_y - (sin * cx + cos * cy)
        M = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)  # (B,2,3)
        warped = warp_affine(layers, M, dsize=(H, W), mode="bilinear", padding_mode="zeros", align_corners=True)
        a = warped[:, 3:4].clamp(0, 1)
        p = warped[:, :3].clamp(min=0)
        gain = (0.5 + 0.7 * rand(B)).view(B, 1, 1, 1)  # opacity gain, α kept ≤ 1
        gain = torch.where((rand(B) < clean_share).view(B, 1, 1, 1), torch.zeros_like(gain), gain)
        a_new = (a * gain).clamp(max=1.0)
        p = p * (a_new / a.clamp_min(1e-6))
        a = a_new
        colour = (p / a.clamp_min(1e-6)).clamp(0, 1)
        recolour = (rand(B) < 0.3).view(B, 1, 1, 1)  # a flat recolouring of the whole mark
        flat = rand(B, 3, 1, 1)
        colour = torch.where(recolour, flat.expand_as(colour), colour)
        p = colour * a
        marked = clean * (1 - a) + p
        mask = ((marked - clean).abs().amax(1, keepdim=True) >= MIN_DIFF).float()
        alpha, colour = a * mask, colour * mask
        inp = torch.where(mask.bool(), marked, clean)  # unmarked pixels stay the clean ones, exactly
        jpeg = rand(B) < jpeg_p
        if jpeg.any():
            q = 50 + 45 * rand(int(jpeg.sum()))
            sub = inp[jpeg]
            ph, pw = (-H) % 16, (-W) % 16  # kornia's JPEG wants multiples of 16
            padded = torch.nn.functional.pad(sub, (0, pw, 0, ph), mode="replicate") if ph or pw else sub
            inp = inp.clone()
            inp[jpeg] = jpeg_codec_differentiable(padded, q)[..., :H, :W].clamp(0, 1)
        noisy = (rand(B) < noise_p).view(B, 1, 1, 1)
        sigma = (0.004 + 0.016 * rand(B)).view(B, 1, 1, 1)
        noise = torch.randn(inp.shape, generator=g).to(dev) * sigma
        inp = torch.where(noisy, (inp + noise).clamp(0, 1), inp)
        return {"input": inp, "target": clean, "mask": mask, "clean": clean, "alpha": alpha, "colour": colour}


__all__ = ["FAMILIES", "MIN_DIFF", "MarkBank"]
