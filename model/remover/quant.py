"""An int8 copy of the U-Net for CPUs with VNNI (AVX-512 VNNI / AVX-VNNI): the ``int8`` backend.

Post-training static quantization with torch's FX graph mode (``prepare_fx`` / ``convert_fx``,
the oneDNN int8 kernels; no compiler, any tile shape):

- every 3×3 convolution (BatchNorm folded, ReLU fused), the attention gates' 1×1 convolutions,
  max-pooling, the skip concatenations and the bottleneck's self-attention projections run on
  uint8 activations and int8 weights (per output channel, symmetric); activations per tensor,
  min/max over the calibration set, full 8-bit range (VNNI needs no reduced range; a histogram
  observer gave the same fidelity at twice the calibration time);
- kept in fp32: the 2×2 transposed convolutions (FX quantizes them with one weight scale for the
  whole layer, which cost 10–15 dB of agreement with the fp32 model and the trained remover's
  whole gain over its input), and the output: both heads, ``input + residual`` and the mask blend.

Calibration runs the fp32 model over a fixed set of watermarked photos (``skimage.data`` photos
with marks from ``model.synth.renderer``, seeded, never the images being cleaned), so a given network
always gets the same int8 copy. ``quantized_unet`` caches the copy per model object and weights,
so every Cleaner a process builds for the same network reuses it.

Measured (bench/results/infer.json): per 512² tile 2.0× (seed size) and 1.5× (quick-cpu size)
cheaper than ``model.remover.fused``; the output agrees with fp32 to 56–66 dB PSNR on real photos and the
trained remover's PSNR against the clean photo moves by ≤ 0.01 dB.

Needs torch's ``torch.ao.quantization`` FX API (deprecated in favour of torchao, still in torch
2.14), the ``onednn`` quantized engine and a VNNI CPU; ``int8_unavailable()`` names what is missing.
"""

from __future__ import annotations

import copy
import functools
import logging
import threading
import warnings
import weakref
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from model.remover.fused import head_outputs

log = logging.getLogger(__name__)

CALIBRATION_PHOTOS = ("rocket", "immunohistochemistry", "hubble_deep_field", "stereo_motorcycle")
PROBE_PHOTO = "astronaut"  # held out of the calibration set
CALIBRATION_SIZE = 256


class NotQuantizable(ValueError):
    """The model or this machine cannot run the int8 backend (names the reason)."""


@functools.cache
def cpu_has_vnni() -> bool:
    """True when the CPU has 8-bit dot-product instructions (AVX-512 VNNI or AVX-VNNI)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), [])
    except OSError:  # pragma: no cover - not Linux
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def int8_unavailable() -> str | None:
    """Why the int8 backend cannot run here, or None when it can."""
    if not cpu_has_vnni():
        return "the CPU has no VNNI (avx512_vnni / avx_vnni) instructions"
    if "onednn" not in torch.backends.quantized.supported_engines:
        return "this torch build has no onednn quantized engine"
    try:
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx  # noqa: F401
    except ImportError as exc:  # pragma: no cover - a torch without the FX quantization API
        return f"torch.ao.quantization FX API missing: {exc}"
    return None


class _Output(nn.Module):
    """The U-Net's heads and mask blend (kept in fp32)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.head = model.head
        self.mask_out = getattr(model, "mask_out", None)
        self.mask_guided = bool(model.config.get("mask_guided", False))

    def forward(self, x, h):
        logits = self.mask_out(h) if self.mask_out is not None else None
        return head_outputs(x, x + self.head(h), logits, self.mask_guided)


class _Traceable(nn.Module):
    """``UNet.forward`` without the input-size check (FX cannot trace a branch on a shape)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.net = model
        self.output = _Output(model)

    def forward(self, x):
        return self.output(x, self.net.features(x))


class Int8UNet(nn.Module):
    """The quantized network with the `UNet` call: (B,3,H,W) in [0,1] → dict of fp32 outputs
    (``raw_image`` too for a mask-guided network, as ``model.remover.fused.FusedUNet`` returns)."""

    def __init__(self, graph: nn.Module, model: nn.Module):
        super().__init__()
        self.graph = graph
        self.config = dict(model.config)
        self.size_multiple = int(model.size_multiple)
        self.mask_guided = bool(self.config.get("mask_guided", False))

    def forward(self, x):
        _, _, H, W = x.shape
        m = self.size_multiple
        if H % m or W % m:
            raise ValueError(f"UNet input {H}x{W} is not a multiple of {m}; pad it first")
        with warnings.catch_warnings():  # torch flags its quantized tensors as deprecated
            warnings.simplefilter("ignore", UserWarning)
            return self.graph(x.contiguous(memory_format=torch.channels_last))


@contextmanager
def _engine(name: str):
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = old


def _photo(name: str) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, name)()
    img = img[0] if isinstance(img, tuple) else img  # stereo_motorcycle: (left, right, disparity)
    return np.ascontiguousarray(img[..., :3])


def _mark(images: list[np.ndarray], seed: int) -> list[np.ndarray]:
    """The images with one seeded watermark each (unmarked where no renderer can be built)."""
    from model.synth.renderer import WatermarkRenderer

    try:
        renderer = WatermarkRenderer(seed=seed, n_logos=4)
    except RuntimeError:  # no font for text marks: logos and shapes only
        renderer = WatermarkRenderer(seed=seed, n_logos=4, families=("logo", "shape"))
    rng = np.random.default_rng(seed)
    return [renderer.render(img, rng, postprocess=False).composite for img in images]


def _crops(img: np.ndarray, size: int, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    H, W = img.shape[:2]
    out = []
    for _ in range(n):
        y, x = int(rng.integers(0, max(1, H - size + 1))), int(rng.integers(0, max(1, W - size + 1)))
        crop = img[y : y + size, x : x + size]
        ph, pw = size - crop.shape[0], size - crop.shape[1]
        out.append(np.pad(crop, ((0, ph), (0, pw), (0, 0)), mode="edge") if ph or pw else crop)
    return out


def _tensor(crops: list[np.ndarray]) -> torch.Tensor:
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div_(255)
    return x.contiguous(memory_format=torch.channels_last)


@functools.cache
def calibration_batches(size: int = CALIBRATION_SIZE, per_photo: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """The fixed calibration set: ``per_photo`` seeded ``size``² crops of each watermarked
    calibration photo, one (1,3,size,size) tensor each."""
    rng = np.random.default_rng(seed)
    marked = _mark([_photo(n) for n in CALIBRATION_PHOTOS], seed)
    return tuple(_tensor([c]) for img in marked for c in _crops(img, size, per_photo, rng))


@functools.cache
def probe_image(size: int = 128, seed: int = 1) -> np.ndarray:
    """A held-out watermarked photo crop (uint8) for the fidelity probe."""
    img = _mark([_photo(PROBE_PHOTO)], seed)[0]
    y, x = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
    return np.ascontiguousarray(img[y : y + size, x : x + size])


def _check_unet(model: nn.Module) -> None:
    need = ("features", "head", "config")
    missing = [n for n in need if not hasattr(model, n)]
    if missing:
        raise NotQuantizable(f"{type(model).__name__} lacks {missing}")
    if model.training:
        raise NotQuantizable("model is in training mode (BatchNorm would use batch statistics)")


def quantize_unet(model: nn.Module, calibration: tuple[torch.Tensor, ...] | None = None) -> Int8UNet:
    """A calibrated int8 copy of ``model`` (a `model.remover.network.UNet` in eval mode on the CPU); the
    model itself is not touched. Raises `NotQuantizable` when this machine or model cannot."""
    why = int8_unavailable()
    if why:
        raise NotQuantizable(why)
    _check_unet(model)
    from torch.ao.quantization import QConfig, QConfigMapping
    from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    net = _Traceable(copy.deepcopy(model).cpu().eval())
    for mod in net.modules():  # quantized activations are not in place (torch warns on each call)
        if hasattr(mod, "inplace"):
            mod.inplace = False
    weights = PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    qconfig = QConfigMapping().set_global(QConfig(activation=MinMaxObserver.with_args(dtype=torch.quint8), weight=weights))
    qconfig.set_object_type(nn.ConvTranspose2d, None).set_module_name("output", None)
    for name in ("net.head", "net.mask_out"):  # the heads are the same modules under two names
        qconfig.set_module_name(name, None)
    batches = calibration if calibration is not None else calibration_batches()
    example = batches[0]
    with warnings.catch_warnings(), _engine("onednn"), torch.no_grad():
        warnings.simplefilter("ignore")  # deprecation notices of the FX quantization API
        try:
            prepared = prepare_fx(net, qconfig, example_inputs=(example,))
            for x in batches:
                prepared(x)
            graph = convert_fx(prepared)
        except Exception as exc:  # a graph FX cannot trace or convert
            raise NotQuantizable(f"FX quantization failed: {type(exc).__name__}: {exc}") from exc
    return Int8UNet(graph, model).eval()


_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def weights_key(model: nn.Module) -> tuple:
    """Changes whenever a parameter or buffer of ``model`` is replaced or modified in place."""
    return tuple((id(t), t._version) for t in (*model.parameters(), *model.buffers()))


def quantized_unet(model: nn.Module) -> Int8UNet:
    """`quantize_unet(model)`, computed once per model object and weights in this process."""
    with _lock:
        key = weights_key(model)
        hit = _cache.get(model)
        if hit is not None and hit[0] == key:
            return hit[1]
        q = quantize_unet(model)
        _cache[model] = (key, q)
        return q
