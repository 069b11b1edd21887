"""The remover's loss: the seed's five image terms plus two for the optional mask head.

    total = l1·masked L1 + perceptual·VGG16-relu3_3 L1 + lab·LAB L1 + ssim·(1 − SSIM)
          + edge·Laplacian L1 + mask_bce·BCE(mask logits) + mask_dice·Dice(mask logits)

Every weight is an argument; a term whose weight is 0 is not computed. The perceptual term runs a
frozen VGG16 truncated after relu3_3 (`features[:16]`, 1,735,488 parameters; the 138 M-parameter
classifier is never built). Its weights come from torchvision's ImageNet file in the torch hub
cache (never downloaded here), from a seeded random init, or the term is off.
"""

from __future__ import annotations

import logging
from pathlib import Path

import kornia
import torch
import torch.nn as nn
import torch.nn.functional as F

from model.device import native_bf16

log = logging.getLogger(__name__)

VGG16_FILE = "vgg16-397923af.pth"  # torchvision's VGG16_Weights.IMAGENET1K_V1
VGG_CHOICES = ("imagenet", "random", "off")  # the perceptual term's VGG16 weights (TrainConfig.perceptual)
TERMS = ("l1", "perceptual", "lab", "ssim", "edge", "mask_bce", "mask_dice")  # names in RemovalLoss's dict
# The default weight of each term (the seed notebook's five, then the mask head's two): the one home
# of these numbers. RemovalLoss's defaults, TrainConfig's and the CPU profiles' come from it.
DEFAULT_LOSS = {"l1": 1.0, "perceptual": 0.3, "lab": 0.3, "ssim": 0.4, "edge": 0.1, "mask_bce": 0.5, "mask_dice": 0.5}
# conv layers of vgg16.features up to relu3_3 (the indices in torchvision's Sequential)
_VGG_CONVS = {0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256), 12: (256, 256), 14: (256, 256)}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class VGGWeightsMissing(FileNotFoundError):
    """`vgg="imagenet"` was asked for, but torchvision's VGG16 file is not in the torch hub cache."""

    def __init__(self, path: Path):
        self.path = path
        super().__init__(
            f"VGG16 ImageNet weights not found at {path}. Unmark never downloads them. Either copy "
            f"torchvision's {VGG16_FILE} there (or point TORCH_HOME at a folder whose hub/checkpoints/ "
            f"holds it; on a machine with internet, `python -c \"import torchvision; "
            f"torchvision.models.vgg16(weights='IMAGENET1K_V1')\"` puts it in the cache), or choose "
            f"perceptual weights 'random' (seeded random features) or 'off' (no perceptual term)."
        )


def vgg16_weights_path() -> Path:
    """Where torchvision keeps the VGG16 ImageNet file: $TORCH_HOME/hub/checkpoints/ (read at call time)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE


def vgg16_relu3_3() -> nn.Sequential:
    """VGG16 `features[:16]` (conv1_1 … relu3_3) with torchvision's layer indices, uninitialised."""
    layers: list[nn.Module] = []
    for i in range(16):
        if i in _VGG_CONVS:
            layers.append(nn.Conv2d(*_VGG_CONVS[i], kernel_size=3, padding=1))
        elif i in (4, 9):
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def load_vgg16_features(vgg: str = "imagenet", seed: int = 0) -> tuple[nn.Sequential, str]:
    """The frozen feature extractor and a one-line description of where its weights came from."""
    net = vgg16_relu3_3()
    if vgg == "imagenet":
        path = vgg16_weights_path()
        if not path.is_file():
            raise VGGWeightsMissing(path)
        full = torch.load(path, map_location="cpu", weights_only=True)
        keep = {f"{i}.{p}": full[f"features.{i}.{p}"] for i in _VGG_CONVS for p in ("weight", "bias")
                if f"features.{i}.{p}" in full}
        try:
            net.load_state_dict(keep, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{path} is not torchvision's VGG16 state dict: {exc}") from exc
        source = f"imagenet ({path})"
    elif vgg == "random":
        # torchvision's own VGG init, drawn from a seeded generator so a run can be repeated
        gen = torch.Generator().manual_seed(seed)
        for i in _VGG_CONVS:
            nn.init.kaiming_normal_(net[i].weight, mode="fan_out", nonlinearity="relu", generator=gen)
            nn.init.zeros_(net[i].bias)
        source = f"random (seed {seed})"
    else:
        raise ValueError(f"vgg must be one of {VGG_CHOICES}, got {vgg!r}")
    net.requires_grad_(False)
    return net.eval(), source


class PerceptualLoss(nn.Module):
    """L1 between frozen VGG16 relu3_3 features of ImageNet-normalised prediction and target.

    `forward` is the fast path, equal in value to `naive` within bf16 rounding: the target goes
    through the network under no_grad (no graph, no backward through its half), the prediction
    alone keeps a graph, weights never get gradients, the layout is channels-last, and where the
    CPU has native bf16 (AVX512-BF16 / AMX) or on CUDA the frozen net runs under bf16 autocast.
    The feature L1 itself is taken in float32.
    """

    def __init__(self, vgg: str = "imagenet", seed: int = 0, bf16: bool | None = None, channels_last: bool = True):
        super().__init__()
        self.features, self.source = load_vgg16_features(vgg, seed)
        self.channels_last = channels_last
        if channels_last:
            self.features.to(memory_format=torch.channels_last)
        self.bf16 = bf16  # None: use it where it is fast (see native_bf16)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.features.eval()  # frozen: never switches to training behaviour
        return self

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() - self.mean) / self.std
        x = x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        use_bf16 = native_bf16(x.device) if self.bf16 is None else self.bf16
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            return self.features(x)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t = self._features(target)
        p = self._features(pred)
        return F.l1_loss(p.float(), t.float())

    def naive(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The straightforward computation (one fp32 NCHW pass over both images, graph for both):
        the reference `forward` is tested and benchmarked against."""
        x = (torch.cat([pred, target]).float() - self.mean) / self.std
        with torch.autocast(x.device.type, enabled=False):
            f = self.features(x.contiguous())
        p, t = f.chunk(2)
        return F.l1_loss(p, t)


def masked_l1(pred, target, mask=None, emphasis: float = 4.0):
    """L1 with the watermarked pixels weighted (1 + emphasis): a weighted mean, so its scale stays
    that of plain L1, while the few marked pixels are not drowned by the many clean ones."""
    err = (pred - target).abs()
    if mask is None or emphasis == 0:
        return err.mean()
    w = 1 + emphasis * mask.to(err.dtype)  # (B, 1, H, W), broadcast over channels
    return (err * w).sum() / (w.sum() * err.shape[1])


def lab_l1(pred, target, channel_weights=(0.7, 1.0, 1.0)):
    """L1 in CIE LAB (kornia, D65), each channel in units of 100, L weighted 0.7 so colour shifts
    count for relatively more than brightness. The prediction is clamped to [0, 1] first: sRGB
    linearisation is undefined outside it."""
    w = torch.tensor(channel_weights, device=pred.device, dtype=torch.float32).view(1, 3, 1, 1)
    diff = (kornia.color.rgb_to_lab(pred.clamp(0, 1)) - kornia.color.rgb_to_lab(target.clamp(0, 1))).abs()
    return (diff * w).mean() / 100.0


def ssim_term(pred, target, window_size: int = 11):
    """1 − mean SSIM (kornia, Gaussian window)."""
    return 1.0 - kornia.metrics.ssim(pred, target, window_size, max_val=1.0).mean()


def edge_l1(pred, target):
    """L1 between 3×3 Laplacians (kornia): penalises halos and blur along edges."""
    return F.l1_loss(kornia.filters.laplacian(pred, 3), kornia.filters.laplacian(target, 3))


def dice_loss(logits, mask, smooth: float = 1.0):
    """1 − soft Dice per image, averaged; `smooth` keeps images without any mark near zero loss."""
    p = torch.sigmoid(logits).flatten(1)
    m = mask.flatten(1)
    inter = (p * m).sum(1)
    return (1 - (2 * inter + smooth) / (p.sum(1) + m.sum(1) + smooth)).mean()


class RemovalLoss(nn.Module):
    """forward(pred, target, mask, mask_logits=None) -> (total, {term: float}).

    pred/target (B, 3, H, W) in [0, 1]; mask (B, 1, H, W) in {0, 1} (or None: plain L1, no mask
    terms). The dict holds each computed term's unweighted value and "total". Everything but the
    VGG pass is computed in float32 even under an enclosing autocast.
    """

    def __init__(self, l1=DEFAULT_LOSS["l1"], perceptual=DEFAULT_LOSS["perceptual"], lab=DEFAULT_LOSS["lab"],
                 ssim=DEFAULT_LOSS["ssim"], edge=DEFAULT_LOSS["edge"], mask_bce=DEFAULT_LOSS["mask_bce"],
                 mask_dice=DEFAULT_LOSS["mask_dice"], vgg: str = "imagenet", vgg_seed: int = 0,
                 mask_emphasis: float = 4.0):
        super().__init__()
        if vgg not in VGG_CHOICES:
            raise ValueError(f"vgg must be one of {VGG_CHOICES}, got {vgg!r}")
        self.weights = dict(l1=l1, perceptual=perceptual if vgg != "off" else 0.0, lab=lab, ssim=ssim,
                            edge=edge, mask_bce=mask_bce, mask_dice=mask_dice)
        self.mask_emphasis = mask_emphasis
        self.perceptual = None
        if self.weights["perceptual"] > 0:
            self.perceptual = PerceptualLoss(vgg, vgg_seed)
            self.vgg_source = self.perceptual.source
        else:
            self.vgg_source = "off"
        log.warning("perceptual loss VGG16 weights: %s", self.vgg_source)
        self.config = dict(self.weights, vgg=vgg, vgg_seed=vgg_seed, vgg_source=self.vgg_source,
                           mask_emphasis=mask_emphasis)

    def forward(self, pred, target, mask=None, mask_logits=None):
        w = self.weights
        with torch.autocast(pred.device.type, enabled=False):
            pred, target = pred.float(), target.float()
            mask = None if mask is None else mask.float()
            terms: dict[str, torch.Tensor] = {}
            if w["l1"]:
                terms["l1"] = masked_l1(pred, target, mask, self.mask_emphasis)
            if w["perceptual"]:
                terms["perceptual"] = self.perceptual(pred, target)
            if w["lab"]:
                terms["lab"] = lab_l1(pred, target)
            if w["ssim"]:
                terms["ssim"] = ssim_term(pred, target)
            if w["edge"]:
                terms["edge"] = edge_l1(pred, target)
            if mask_logits is not None and mask is not None:
                logits = mask_logits.float()
                if w["mask_bce"]:
                    terms["mask_bce"] = F.binary_cross_entropy_with_logits(logits, mask)
                if w["mask_dice"]:
                    terms["mask_dice"] = dice_loss(logits, mask)
            total = sum(w[k] * v for k, v in terms.items())
        values = {k: float(v.detach()) for k, v in terms.items()}
        values["total"] = float(total.detach())
        return total, values
