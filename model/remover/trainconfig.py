"""What a remover training run is made of: ``TrainConfig`` (everything a run depends on), the
named ``PROFILES``, the network a config builds, and the numerics each device gets. ``model.remover.train``
runs them."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass, field

import torch

from model.device import autocast, native_bf16
from model.remover.locate import LocateRestore
from model.remover.losses import DEFAULT_LOSS, VGG_CHOICES
from model.remover.network import UNet

TRAIN_PARTS = ("all", "localiser")  # TrainConfig.train_part
PERCEPTUAL_CHOICES = VGG_CHOICES  # TrainConfig.perceptual: the VGG16 weights of the perceptual term


@dataclass
class TrainConfig:
    """Everything a run depends on. ``PROFILES`` holds the named ones; ``dataclasses.replace``
    derives variants. Saved as ``config.json`` in every run and in the catalog's model row."""

    profile: str = "seed"
    pairing: str = "supervised"  # supervised | self-supervised
    # data
    size: int = 256  # training crop
    eval_size: int = 256  # crop of the fixed val/test samples
    batch_size: int = 8
    samples_per_image: int = 1  # training samples drawn per image per pass
    mark_context: float = 1.0  # training marks drawn on a canvas this many times the crop, then cut
    clean_share: float = 0.0  # training samples left unmarked (empty mask): the localiser learns that clean is clean
    eval_samples_per_image: int = 1
    val_limit: int | None = 64  # val samples scored after each epoch (None: all)
    families: list[str] | None = None  # watermark families drawn (None: all)
    num_workers: int | None = None  # loader processes drawing the pairs; None: loader_workers(device)
    # schedule
    epochs: int = 25
    steps_per_epoch: int | None = None  # None: one pass over the training samples
    lr: float = 1e-3
    weight_decay: float = 1e-5
    schedule: str = "onecycle"  # onecycle (steps) | wall (wall time; implied by max_minutes)
    pct_start: float = 0.3
    div_factor: float = 10.0
    final_div_factor: float = 100.0
    max_minutes: float | None = None  # wall-time cap of the whole run, final evaluation included
    eval_reserve: float = 0.08  # fraction of the cap kept for the final test evaluation
    grad_clip: float | None = None
    # network
    arch: str = "unet"  # unet | locate-restore (model.remover.locate: a whole-image localiser, then a restorer)
    view: int = 192  # locate-restore: the localiser's view (long side, px) at inference and evaluation
    train_views: list[int] | None = None  # locate-restore: views drawn per training step (None: [view])
    loc_base: int = 16  # locate-restore: the localiser's width
    train_part: str = "all"  # locate-restore: all | localiser (the restorer frozen; the localiser's terms only)
    synth: str = "cpu"  # cpu: loader processes draw the pairs | device: composited on the device (model.synth.device_pairs)
    bank_size: int = 2048  # synth=device: marks pre-rendered into the bank
    base: int = 32
    depth: int = 4
    mask_head: bool = False
    mask_guided: bool = False
    harden_mask: bool = False  # at evaluation: re-blend with a hard, dilated mask
    # loss
    loss: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LOSS))
    perceptual: str = "imagenet"  # VGG16 weights: imagenet | random | off
    perceptual_reason: str = "the seed's loss"
    # numerics
    device: str = "auto"
    cpu_bf16: bool = True  # bf16 autocast on the CPU (measured 2.5x faster here)
    channels_last: bool = True
    seed: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


PROFILES: dict[str, TrainConfig] = {
    # The seed notebook's run: 25 epochs of batch 8 at 256 px, the full five-term loss.
    "seed": TrainConfig(profile="seed"),
    # The best this 2-core CPU trains in 30 minutes (cpu-training-lessons.md): clipped gradients,
    # a mask head whose hardened mask copies clean pixels exactly, small crops for more steps,
    # the schedule over wall time, and a quarter of the seed's width (0.89 M parameters: a step
    # costs ~1/4, and in 30 shared-CPU minutes the step count limits more than the width). VGG is off: the ImageNet weights are not on this machine, and
    # random VGG features would cost about half of every step for a texture term of unproven
    # value; at a fixed budget, steps are worth more. No separate mark bank: the renderer keeps
    # its text rasters in a bank already and a whole batch of 128 px samples costs ~50 ms of CPU,
    # under 2 % of a step here.
    "quick-cpu": TrainConfig(
        profile="quick-cpu",
        size=128,
        # marks drawn on a 256 px canvas and a 128 px window cut from it: photo content near its
        # native scale and marks larger than the window, as the network meets them on a
        # full-size photo (trained on marks drawn on the 128 px crop itself, the mask head missed
        # 120-225 px logos at full size and found them on the same photo at half size)
        mark_context=2.0,
        eval_size=256,
        batch_size=8,
        samples_per_image=1,
        eval_samples_per_image=2,
        val_limit=24,
        epochs=1000,
        steps_per_epoch=100,
        schedule="wall",
        pct_start=0.05,
        max_minutes=30,
        grad_clip=1.0,
        base=16,
        depth=4,
        mask_head=True,
        mask_guided=True,
        harden_mask=True,
        loss={**DEFAULT_LOSS, "perceptual": 0.0},
        perceptual="off",
        perceptual_reason="ImageNet VGG weights absent here; random features cost ~half a CPU step",
    ),
    # Tests: 64 px, a few steps, a narrow network.
    "tiny": TrainConfig(
        profile="tiny",
        size=64,
        eval_size=64,
        batch_size=2,
        epochs=2,
        steps_per_epoch=2,
        val_limit=2,
        base=8,
        depth=2,
        mask_head=True,
        mask_guided=True,
        loss={**DEFAULT_LOSS, "perceptual": 0.0},
        perceptual="off",
        perceptual_reason="tests: no VGG",
    ),
}

_LOCATE_LOSS = {"loc_bce": 1.0, "loc_dice": 1.0, "loc_alpha": 1.0, "loc_colour": 0.5, "loc_invert": 0.5}
# Locate, then restore (model.remover.locate): whole 256 px training images, the localiser at a view of
# 96-192 px (so its upsampled maps are as coarse as on a large photo), the restorer on one 128 px
# window per image, near the mark. Evaluated, like the shipped model runs, with a 192 px view.
PROFILES["locate-cpu"] = dataclasses.replace(
    PROFILES["quick-cpu"], profile="locate-cpu", arch="locate-restore", view=192, train_views=[96, 128, 160, 192],
    loc_base=16, clean_share=0.2, loss={**PROFILES["quick-cpu"].loss, **_LOCATE_LOSS})
# The localiser alone, from the shipped remover: the restorer is frozen and never run, so a step
# (~60 % of locate-cpu's here) goes wholly to locating, the stage that costs the most (the card's
# oracle: the true mask, α and W lift this restorer from 27.96 to 31.29 dB).
PROFILES["localise-cpu"] = dataclasses.replace(PROFILES["locate-cpu"], profile="localise-cpu", train_part="localiser")
PROFILES["tiny-locate"] = dataclasses.replace(
    PROFILES["tiny"], profile="tiny-locate", arch="locate-restore", size=32, mark_context=2.0, view=32,
    train_views=[32], loc_base=8, clean_share=0.2, depth=2, loss={**PROFILES["tiny"].loss, **_LOCATE_LOSS})


def profile_config(name: str, **overrides) -> TrainConfig:
    """A copy of profile ``name`` with ``overrides`` applied."""
    if name not in PROFILES:
        raise KeyError(f"unknown profile {name!r}: choose one of {', '.join(PROFILES)}")
    return dataclasses.replace(PROFILES[name], **overrides)


def build_network(config: TrainConfig) -> torch.nn.Module:
    if config.arch == "locate-restore":
        return LocateRestore(base=config.base, depth=config.depth, loc_base=config.loc_base, loc_depth=config.depth,
                             view=config.view)
    if config.arch != "unet":
        raise ValueError(f"unknown arch {config.arch!r}: unet or locate-restore")
    return UNet(base=config.base, depth=config.depth, mask_head=config.mask_head, mask_guided=config.mask_guided)


def trained_parameters(model: torch.nn.Module, config: TrainConfig) -> list[torch.nn.Parameter]:
    """The parameters a run trains: all, or with ``train_part="localiser"`` the localiser's (the
    restorer is frozen)."""
    if config.train_part not in TRAIN_PARTS or (config.train_part != "all" and not hasattr(model, "restorer")):
        raise ValueError(f"train_part {config.train_part!r}: one of {', '.join(TRAIN_PARTS)}, and 'localiser' only "
                         "for arch locate-restore")
    if config.train_part == "localiser":
        model.restorer.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


def cpu_bf16(device: torch.device, config: TrainConfig) -> bool:
    """bf16 autocast on this CPU: asked for, and the CPU does bf16 natively (emulated bf16 is
    slower than float32)."""
    return device.type == "cpu" and config.cpu_bf16 and native_bf16(device)


def loader_workers(device: torch.device, config: TrainConfig) -> int:
    """``config.num_workers`` when set; else on CUDA one process per core but one, at most 8, and
    none on a CPU. On a lent H100 the seed network's step took 23 ms while 6 workers drew ~145
    pairs a second, so in-process drawing would leave the GPU idle; on a CPU the workers would
    take the cores the step runs on."""
    if config.num_workers is not None:
        return config.num_workers
    if device.type != "cuda":
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def train_precision(device: torch.device, config: TrainConfig) -> str:
    """fp16 (with the grad scaler) on CUDA, bf16 on a CPU that does bf16 natively, fp32 elsewhere."""
    if device.type == "cuda":
        return "fp16"
    return "bf16" if cpu_bf16(device, config) else "fp32"


def autocast_for(device: torch.device, config: TrainConfig) -> contextlib.AbstractContextManager:
    """The autocast of a training step: that of `train_precision`."""
    return autocast(device, train_precision(device, config))
