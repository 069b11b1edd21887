"""Training runs for the watermark remover: pure torch, a folder of images in, a run folder out.

``train(train_paths, val_paths, test_paths, config, run_dir)`` trains a ``model.network.UNet`` on
synthetic pairs (``model.data.WatermarkPairs``), and leaves in ``run_dir``:

- ``config.json``   the resolved ``TrainConfig`` (perceptual weights choice and why included)
- ``last.pt``       the whole training state, written atomically after every epoch (resume)
- ``best.pt``       the model with the best validation PSNR (a plain ``load_checkpoint`` file)
- ``history.csv`` / ``history.json``  one row per epoch: every loss term, val PSNR/SSIM, lr, time
- ``summary.json``  the regression report: test-split metrics against the input and inpainting
- ``curves.png`` / ``lr.png``  loss terms, val PSNR/SSIM and the learning rate per epoch
- ``changelog.md``  one dated line per event (started, resumed, finished)

Schedules. ``onecycle`` is torch's ``OneCycleLR`` over ``epochs + 2`` epochs (the seed's: the run
ends before the rate bottoms out). A wall-time budget (``max_minutes``) replaces the step count by
wall time: the same one-cycle shape is driven by the fraction of the budget spent, so a capped run
always finishes its schedule, and a slow, shared CPU changes the number of steps, not the shape.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from model.data import CleanCrops, WatermarkPairs, one_opencv_thread
from model.device import native_bf16, resolve_device
from model.evaluate import BASELINES, evaluate_pairs
from model.locate import LOCATE_TERMS, LocateRestore, locate_loss, pick_crops
from model.losses import RemovalLoss
from model.network import UNet, count_parameters, load_checkpoint, save_checkpoint
from model.plots import lr_schedule, training_curves
from model.schedule import one_cycle_factor
from model.synth import MarkBank

PERCEPTUAL_CHOICES = ("imagenet", "random", "off")


class RunLocked(RuntimeError):
    """Another process is training in this run folder."""

    def __init__(self, run_dir: Path):
        super().__init__(f"run folder {run_dir} is locked by another training process")
        self.run_dir = run_dir


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
    arch: str = "unet"  # unet | locate-restore (model.locate: a whole-image localiser, then a restorer)
    view: int = 192  # locate-restore: the localiser's view (long side, px) at inference and evaluation
    train_views: list[int] | None = None  # locate-restore: views drawn per training step (None: [view])
    loc_base: int = 16  # locate-restore: the localiser's width
    synth: str = "cpu"  # cpu: loader processes draw the pairs | device: composited on the device (model.synth)
    bank_size: int = 2048  # synth=device: marks pre-rendered into the bank
    base: int = 32
    depth: int = 4
    mask_head: bool = False
    mask_guided: bool = False
    harden_mask: bool = False  # at evaluation: re-blend with a hard, dilated mask
    # loss
    loss: dict[str, float] = field(
        default_factory=lambda: {"l1": 1.0, "perceptual": 0.3, "lab": 0.3, "ssim": 0.4, "edge": 0.1}
    )
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
        loss={"l1": 1.0, "perceptual": 0.0, "lab": 0.3, "ssim": 0.4, "edge": 0.1, "mask_bce": 0.5, "mask_dice": 0.5},
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
        loss={"l1": 1.0, "perceptual": 0.0, "lab": 0.3, "ssim": 0.4, "edge": 0.1, "mask_bce": 0.5, "mask_dice": 0.5},
        perceptual="off",
        perceptual_reason="tests: no VGG",
    ),
}

_LOCATE_LOSS = {"loc_bce": 1.0, "loc_dice": 1.0, "loc_alpha": 1.0, "loc_colour": 0.5, "loc_invert": 0.5}
# Locate, then restore (model.locate): whole 256 px training images, the localiser at a view of
# 96-192 px (so its upsampled maps are as coarse as on a large photo), the restorer on one 128 px
# window per image, near the mark. Evaluated, like the shipped model runs, with a 192 px view.
PROFILES["locate-cpu"] = dataclasses.replace(
    PROFILES["quick-cpu"], profile="locate-cpu", arch="locate-restore", view=192, train_views=[96, 128, 160, 192],
    loc_base=16, loss={**PROFILES["quick-cpu"].loss, **_LOCATE_LOSS})
PROFILES["tiny-locate"] = dataclasses.replace(
    PROFILES["tiny"], profile="tiny-locate", arch="locate-restore", size=32, mark_context=2.0, view=32,
    train_views=[32], loc_base=8, depth=2, loss={**PROFILES["tiny"].loss, **_LOCATE_LOSS})


def profile_config(name: str, **overrides) -> TrainConfig:
    """A copy of profile ``name`` with ``overrides`` applied."""
    if name not in PROFILES:
        raise KeyError(f"unknown profile {name!r}: choose one of {', '.join(PROFILES)}")
    return dataclasses.replace(PROFILES[name], **overrides)


# --- the schedule -------------------------------------------------------------------------


class WallClockSchedule(torch.optim.lr_scheduler.LambdaLR):
    """One-cycle over a wall-time budget: ``progress`` is set by the loop before each step."""

    def __init__(self, optimizer: torch.optim.Optimizer, config: TrainConfig):
        self.progress = 0.0
        super().__init__(optimizer, lambda _step: one_cycle_factor(
            self.progress, config.pct_start, config.div_factor, config.final_div_factor))

    def state_dict(self) -> dict:
        d = super().state_dict()
        d["progress"] = self.progress
        return d

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        self.progress = float(state_dict.pop("progress", 0.0))
        super().load_state_dict(state_dict)


# --- helpers ------------------------------------------------------------------------------


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` (released by the OS if the process dies)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fh = open(run_dir / ".lock", "w")  # noqa: SIM115
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise RunLocked(run_dir) from exc
        yield
    finally:
        fh.close()


def run_is_locked(run_dir: Path) -> bool:
    """True while a live process trains in ``run_dir``."""
    try:
        with run_lock(run_dir):
            return False
    except RunLocked:
        return True


def _write_json(path: Path, data) -> None:  # noqa: ANN001
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default))
    tmp.replace(path)


def _json_default(o):  # noqa: ANN001, ANN202
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _write_history(run_dir: Path, history: list[dict]) -> None:
    _write_json(run_dir / "history.json", history)
    cols = list(dict.fromkeys(k for row in history for k in row))
    tmp = run_dir / ".history.csv.tmp"
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(history)
    tmp.replace(run_dir / "history.csv")


def _changelog(run_dir: Path, line: str) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    with open(run_dir / "changelog.md", "a") as fh:
        fh.write(f"- {stamp}: {line}\n")


def _batches(loader: DataLoader) -> Iterator[dict]:
    with one_opencv_thread():  # the workers fork here (once: they persist) and keep one OpenCV thread
        it = iter(loader)
    while True:
        yield from it
        it = iter(loader)


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].tolist(),
            "python": list(random.getstate()[1])}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np_state = np.random.get_state()
    np.random.set_state((np_state[0], np.array(state["numpy"], dtype=np.uint32), *np_state[2:]))
    py = random.getstate()
    random.setstate((py[0], tuple(state["python"]), py[2]))


def build_network(config: TrainConfig) -> torch.nn.Module:
    if config.arch == "locate-restore":
        return LocateRestore(base=config.base, depth=config.depth, loc_base=config.loc_base, loc_depth=config.depth,
                             view=config.view)
    if config.arch != "unet":
        raise ValueError(f"unknown arch {config.arch!r}: unet or locate-restore")
    return UNet(base=config.base, depth=config.depth, mask_head=config.mask_head, mask_guided=config.mask_guided)


def _windows(t: torch.Tensor, size: int, corners: list[tuple[int, int]]) -> torch.Tensor:
    return torch.stack([t[i, :, y : y + size, x : x + size] for i, (y, x) in enumerate(corners)])


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


def autocast_for(device: torch.device, config: TrainConfig):  # noqa: ANN201
    """fp16 autocast (with the grad scaler) on CUDA, bf16 autocast on a CPU that does bf16
    natively, nothing elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    if cpu_bf16(device, config):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --- the loop -----------------------------------------------------------------------------


def train(
    train_paths: Sequence[str | Path],
    val_paths: Sequence[str | Path],
    test_paths: Sequence[str | Path],
    config: TrainConfig,
    run_dir: str | Path,
    resume: bool = True,
    log: Callable[[str], None] | None = print,
    renderer=None,  # noqa: ANN001 - a model.watermarks.WatermarkRenderer (None: the default)
    on_epoch: Callable[[list[dict]], None] | None = None,
    init_weights: str | Path | bytes | None = None,
    eval_renderer=None,  # noqa: ANN001 - the renderer of the val/test samples (None: ``renderer``)
) -> dict:
    """Train, validate each epoch, checkpoint, then score the best model on the test split.

    ``init_weights`` (a checkpoint path or its bytes) starts a fresh run from those weights (fine-tuning with a
    new schedule); a resumed run ignores it. Its network config must match ``config``'s.
    ``eval_renderer`` draws the validation and test marks (e.g. from held-out icon identities).

    With ``resume`` and a ``last.pt`` in ``run_dir``, training continues after the last finished
    epoch (model, optimiser, schedule, scaler, RNG, history and elapsed time restored).
    ``on_epoch(history)`` is called after each epoch's checkpoint. Returns the summary (also
    written to ``summary.json``).
    """
    run_dir = Path(run_dir)
    if config.pairing not in ("supervised", "self-supervised"):
        raise ValueError(f"unknown pairing {config.pairing!r}: supervised or self-supervised")
    if config.perceptual not in PERCEPTUAL_CHOICES:
        raise ValueError(f"perceptual must be one of {PERCEPTUAL_CHOICES}, got {config.perceptual!r}")
    if not train_paths or not val_paths or not test_paths:
        raise ValueError(f"need images in every split, got train={len(train_paths)} val={len(val_paths)} "
                         f"test={len(test_paths)}")
    say = log or (lambda _m: None)
    with run_lock(run_dir):
        return _train_locked([str(p) for p in train_paths], [str(p) for p in val_paths],
                             [str(p) for p in test_paths], config, run_dir, resume, say, renderer, on_epoch,
                             init_weights, eval_renderer if eval_renderer is not None else renderer)


def fixed_test_set(test_paths: Sequence[str | Path], config: TrainConfig, renderer=None) -> WatermarkPairs:  # noqa: ANN001
    """The fixed synthetic test samples of ``test_paths`` under ``config`` (the same every call)."""
    return WatermarkPairs([str(p) for p in test_paths], size=config.eval_size, pairing=config.pairing, train=False,
                          seed=config.seed + 2, samples_per_image=config.eval_samples_per_image, renderer=renderer)


def score_on_test(model: torch.nn.Module, dataset: WatermarkPairs, config: TrainConfig,
                  harden_mask: bool | None = None) -> dict:
    """``evaluate_pairs`` with the baselines, in fp32, as every run's final evaluation does it."""
    device = next(model.parameters()).device
    harden = config.harden_mask if harden_mask is None else harden_mask
    return evaluate_pairs(model, dataset, device=device, batch_size=config.batch_size,
                          harden_mask=harden, amp=False, baselines=BASELINES)


def _train_locked(train_paths, val_paths, test_paths, config: TrainConfig, run_dir: Path,  # noqa: ANN001
                  resume: bool, say: Callable[[str], None], renderer, on_epoch, init_weights,
                  eval_renderer) -> dict:
    t_start = time.perf_counter()
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)

    model = build_network(config).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # Built before anything is written: imagenet without the weights stops here, clearly.
    locating = config.arch == "locate-restore"
    loc_weights = {k: v for k, v in config.loss.items() if k in LOCATE_TERMS}
    loss_fn = RemovalLoss(**{k: v for k, v in config.loss.items() if k not in LOCATE_TERMS},
                          vgg=config.perceptual).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    # locate-restore: whole training images of size·mark_context (the localiser sees all of it),
    # the restorer a size×size window of each
    whole = round(config.size * config.mark_context) if locating else config.size
    if config.synth not in ("cpu", "device"):
        raise ValueError(f"synth must be cpu or device, got {config.synth!r}")
    on_device = config.synth == "device"
    if on_device and config.pairing != "supervised":
        raise ValueError("synth=device makes supervised pairs only")
    pairs = CleanCrops if on_device else WatermarkPairs
    train_ds = pairs(train_paths, size=whole, pairing=config.pairing, train=True, seed=config.seed,
                     samples_per_image=config.samples_per_image, renderer=renderer,
                     context=1.0 if (locating or on_device) else config.mark_context)
    bank = (MarkBank.build(train_ds.renderer, config.bank_size, size=whole, seed=config.seed, device=device)
            if on_device else None)
    synth_gen = torch.Generator().manual_seed(config.seed + 11)
    crop_gen = torch.Generator().manual_seed(config.seed + 7)
    views = list(config.train_views or [config.view])
    val_ds = WatermarkPairs(val_paths, size=config.eval_size, pairing=config.pairing, train=False, seed=config.seed + 1,
                            samples_per_image=config.eval_samples_per_image, renderer=eval_renderer)
    steps_per_epoch = config.steps_per_epoch or max(1, len(train_ds) // config.batch_size)
    budget_s = config.max_minutes * 60.0 if config.max_minutes else None
    wall = budget_s is not None or config.schedule == "wall"
    if wall and budget_s is None:
        raise ValueError("the wall schedule needs max_minutes")
    if wall:
        scheduler: torch.optim.lr_scheduler.LRScheduler = WallClockSchedule(optimizer, config)
    else:
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, epochs=config.epochs + 2, steps_per_epoch=steps_per_epoch,
            pct_start=config.pct_start, div_factor=config.div_factor, final_div_factor=config.final_div_factor)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")

    state = {"epoch": 0, "step": 0, "elapsed_s": 0.0, "best_psnr": -math.inf, "best_epoch": None,
             "history": [], "stopped_by": None}
    last = run_dir / "last.pt"
    if resume and last.exists():
        saved, extra = load_checkpoint(last, map_location=device)
        model.load_state_dict(saved.state_dict())
        optimizer.load_state_dict(extra["optimizer"])
        scheduler.load_state_dict(extra["scheduler"])
        scaler.load_state_dict(extra["scaler"])
        _set_rng_state(extra["rng"])
        state.update(extra["state"])
        state["history"] = json.loads(extra["history_json"])
        _changelog(run_dir, f"resumed after epoch {state['epoch']} (step {state['step']})")
        say(f"resuming {run_dir.name} after epoch {state['epoch']}")
    else:
        for stale in ("history.json", "history.csv", "summary.json", "best.pt"):
            (run_dir / stale).unlink(missing_ok=True)
        if init_weights is not None:
            start, _ = load_checkpoint(init_weights, map_location=device)
            source = "given checkpoint bytes" if isinstance(init_weights, bytes) else init_weights
            if isinstance(model, LocateRestore) and isinstance(start, UNet):
                model.warm_start_from_unet(dict(start.config), start.state_dict())
                source = f"{source} (both trunks warm-started from its U-Net)"
            elif dict(start.config) != dict(model.config):
                raise ValueError(f"{init_weights} is a {start.config} network, this run builds {model.config}")
            else:
                model.load_state_dict(start.state_dict())
            _changelog(run_dir, f"initialised from {source}")
        _changelog(run_dir, f"started {config.profile}/{config.pairing} on {len(train_paths)} train, "
                            f"{len(val_paths)} val, {len(test_paths)} test images; perceptual={config.perceptual} "
                            f"({config.perceptual_reason})")
    n_params = count_parameters(model)
    workers = loader_workers(device, config)
    resolved = {**config.to_dict(), "steps_per_epoch": steps_per_epoch, "device": str(device), "num_workers": workers,
                "precision": "fp16-amp" if device.type == "cuda" else "bf16" if cpu_bf16(device, config) else "fp32",
                "parameters": n_params, "schedule": "wall" if wall else "onecycle",
                "loss_resolved": dict(getattr(loss_fn, "config", {})),  # weights and the VGG source used
                "images": {"train": len(train_paths), "val": len(val_paths), "test": len(test_paths)}}
    _write_json(run_dir / "config.json", resolved)

    gen = torch.Generator().manual_seed(config.seed + state["epoch"])
    loader = DataLoader(train_ds, batch_size=config.batch_size, shuffle=True, drop_last=len(train_ds) >= config.batch_size,
                        num_workers=workers, generator=gen, persistent_workers=workers > 0,
                        pin_memory=device.type == "cuda")
    batches = _batches(loader)
    train_budget_s = budget_s * (1 - config.eval_reserve) if budget_s else None
    say(f"training {config.profile}/{config.pairing}: {n_params:,} parameters, {steps_per_epoch} steps/epoch, "
        + (f"{config.max_minutes} min budget" if budget_s else f"{config.epochs} epochs") + f", on {device}")

    while state["epoch"] < config.epochs:
        if train_budget_s is not None and state["elapsed_s"] >= train_budget_s:
            state["stopped_by"] = "time"
            break
        epoch_t0 = time.perf_counter()
        model.train()
        terms: dict[str, float] = {}
        n_steps = 0
        for _ in range(steps_per_epoch):
            if train_budget_s is not None and state["elapsed_s"] + time.perf_counter() - epoch_t0 >= train_budget_s:
                break
            batch = next(batches)
            if bank is not None:
                batch = bank.composite(batch["clean"].to(device, non_blocking=True), synth_gen)
            x = batch["input"].to(device, non_blocking=True)
            target = batch["target"].to(device, non_blocking=True)
            mask = batch["mask"].to(device, non_blocking=True)
            if config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if locating:
                corners = pick_crops(mask, config.size, crop_gen)
                view = views[int(torch.randint(len(views), (1,), generator=crop_gen))]
                with autocast_for(device, config):
                    out = model(x, view=view, crop=(config.size, corners))
                alpha = batch["alpha"].to(device, non_blocking=True)
                full_mask = mask
                target, mask = _windows(target, config.size, corners), _windows(mask, config.size, corners)
            else:
                with autocast_for(device, config):
                    out = model(x)
            pred = out["image"].float()
            logits = out["mask_logits"].float() if "mask_logits" in out else None
            total, parts = loss_fn(pred, target, mask, mask_logits=logits)
            if locating:
                loc_total, loc_terms = locate_loss(
                    out, full_mask, alpha, batch["colour"].to(device, non_blocking=True),
                    _windows(batch["clean"].to(device), config.size, corners), mask,
                    _windows(alpha, config.size, corners), loc_weights)
                total = total + loc_total
                parts = {**parts, **{k: float(v.detach()) for k, v in loc_terms.items()}, "total": float(total.detach())}
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            if config.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            if wall:  # the next step's rate, from the share of the budget spent so far
                scheduler.progress = (state["elapsed_s"] + time.perf_counter() - epoch_t0) / train_budget_s
            scheduler.step()
            if not math.isfinite(parts["total"]):
                raise FloatingPointError(f"loss is {parts['total']} at step {state['step']} of {run_dir}")
            for k, v in parts.items():
                terms[k] = terms.get(k, 0.0) + float(v)
            n_steps += 1
            state["step"] += 1
        train_s = time.perf_counter() - epoch_t0
        val = evaluate_pairs(model, val_ds, device=device, batch_size=config.batch_size, baselines=("input",),
                             harden_mask=config.harden_mask, amp=cpu_bf16(device, config),
                             limit=config.val_limit)
        state["epoch"] += 1
        epoch_s = time.perf_counter() - epoch_t0
        state["elapsed_s"] += epoch_s
        row = {"epoch": state["epoch"], "step": state["step"], "steps": n_steps,
               "lr": optimizer.param_groups[0]["lr"],
               **{k: v / max(n_steps, 1) for k, v in terms.items()},
               "val_psnr": val["model"]["psnr"], "val_ssim": val["model"]["ssim"],
               "val_masked_psnr": val["model"]["masked_psnr"], "val_input_psnr": val["input"]["psnr"],
               "train_s": round(train_s, 2), "val_s": round(epoch_s - train_s, 2),
               "s_per_step": round(train_s / max(n_steps, 1), 4), "elapsed_s": round(state["elapsed_s"], 1),
               # the machine's 1-minute load: on a shared CPU it explains s_per_step
               "load_avg": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}
        state["history"].append(row)
        if row["val_psnr"] is not None and row["val_psnr"] > state["best_psnr"]:
            state["best_psnr"], state["best_epoch"] = row["val_psnr"], state["epoch"]
            save_checkpoint(model, run_dir / "best.pt", epoch=state["epoch"], val_psnr=row["val_psnr"],
                            train_config=json.dumps(resolved))
        _write_history(run_dir, state["history"])
        save_checkpoint(model, last, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                        scaler=scaler.state_dict(), rng=_rng_state(),
                        state={k: v for k, v in state.items() if k != "history"},
                        history_json=json.dumps(state["history"]))
        if on_epoch is not None:
            on_epoch(state["history"])
        say(f"epoch {state['epoch']}: loss {row.get('total', float('nan')):.4f} val PSNR {row['val_psnr']:.2f} dB "
            f"SSIM {row['val_ssim']:.4f} lr {row['lr']:.2e} ({row['s_per_step']:.3f} s/step)")
    else:
        state["stopped_by"] = "epochs"
    if state["stopped_by"] is None:
        state["stopped_by"] = "time"

    if not (run_dir / "best.pt").exists():  # a run stopped by its budget before any epoch ended
        save_checkpoint(model, run_dir / "best.pt", epoch=state["epoch"], val_psnr=None,
                        train_config=json.dumps(resolved))
    best, _ = load_checkpoint(run_dir / "best.pt", map_location=device)
    test = score_on_test(best, fixed_test_set(test_paths, config, eval_renderer), config)
    summary = {
        "profile": config.profile,
        "pairing": config.pairing,
        "perceptual": config.perceptual,
        "perceptual_reason": config.perceptual_reason,
        "parameters": n_params,
        "device": str(device),
        "epochs": state["epoch"],
        "steps": state["step"],
        "stopped_by": state["stopped_by"],
        "best_epoch": state["best_epoch"],
        "best_val_psnr": state["best_psnr"] if math.isfinite(state["best_psnr"]) else None,
        "train_minutes": round(state["elapsed_s"] / 60.0, 2),
        "this_process_minutes": round((time.perf_counter() - t_start) / 60.0, 2),
        "test": test,
        "psnr_gain_vs_input": test["model"]["psnr"] - test["input"]["psnr"],
        "psnr_gain_vs_inpaint": test["model"]["psnr"] - test["inpaint"]["psnr"],
        "checkpoint": str(run_dir / "best.pt"),
        "run_dir": str(run_dir),
    }
    if state["history"]:
        summary["plots"] = [str(training_curves(state["history"], run_dir / "curves.png")),
                            str(lr_schedule(state["history"], run_dir / "lr.png"))]
    _write_json(run_dir / "summary.json", summary)
    _changelog(run_dir, f"finished after {state['epoch']} epochs / {state['step']} steps ({state['stopped_by']}); "
                        f"test PSNR {test['model']['psnr']:.2f} dB (input {test['input']['psnr']:.2f}, "
                        f"inpaint {test['inpaint']['psnr']:.2f}), SSIM {test['model']['ssim']:.4f}")
    say(f"test PSNR {test['model']['psnr']:.2f} dB vs input {test['input']['psnr']:.2f}, "
        f"inpaint {test['inpaint']['psnr']:.2f}")
    return summary
