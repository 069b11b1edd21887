"""Training runs for the watermark remover: pure torch, a folder of images in, a run folder out.

``train(train_paths, val_paths, test_paths, config, run_dir)`` trains the network ``config``
builds (``model.remover.trainconfig``: a ``model.remover.network.UNet`` or a ``model.remover.locate.LocateRestore``) on
synthetic pairs (``model.synth.pairs.WatermarkPairs``, or clean crops watermarked on the device by
``model.synth.device_pairs``), and leaves in ``run_dir`` (written through ``model.remover.runfiles``):

- ``config.json``   the resolved ``TrainConfig`` (perceptual weights choice and why included)
- ``last.pt``       the whole training state, written atomically after every epoch (resume)
- ``best.pt``       the model with the best validation PSNR (a plain ``load_checkpoint`` file)
- ``history.csv`` / ``history.json``  one row per epoch: every loss term, val PSNR/SSIM, lr, time
- ``summary.json``  the regression report: test-split metrics against the input, inpainting and
  the two oracle runs
- ``curves.png`` / ``lr.png``  loss terms, val PSNR/SSIM and the learning rate per epoch
- ``changelog.md``  one dated line per event (started, resumed, finished)

Stages of a run: ``_setup`` (network, loss, optimiser, data, schedule), ``_start`` (resume from
``last.pt``, or start fresh, optionally from given weights), then ``_epoch`` after ``_epoch``
(each ``_step`` a batch; validation, checkpoints and the history row at its end), then
``_finish`` (the best checkpoint on the fixed test split).

Schedules. ``onecycle`` is torch's ``OneCycleLR`` over ``epochs + 2`` epochs (the seed's: the run
ends before the rate bottoms out). A wall-time budget (``max_minutes``) replaces the step count by
wall time: the same one-cycle shape is driven by the fraction of the budget spent, so a capped run
always finishes its schedule, and a slow, shared CPU changes the number of steps, not the shape.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from model.device import resolve_device
from model.remover import runfiles
from model.remover.evaluate import BASELINES, evaluate_pairs
from model.remover.locate import LOCATE_TERMS, LocateRestore, locate_loss, pick_crops, windows
from model.remover.losses import RemovalLoss
from model.remover.network import UNet, count_parameters, load_checkpoint, save_checkpoint
from model.remover.plots import lr_schedule, training_curves
from model.remover.runfiles import RunLocked, run_is_locked, run_lock
from model.remover.trainconfig import (
    PERCEPTUAL_CHOICES,
    PROFILES,
    TrainConfig,
    autocast_for,
    build_network,
    cpu_bf16,
    loader_workers,
    profile_config,
    trained_parameters,
)
from model.remover.visuals import draw_run_visuals
from model.schedule import one_cycle_factor
from model.synth.device_pairs import MarkBank
from model.synth.pairs import PAIRINGS, CleanCrops, WatermarkPairs

__all__ = ["PROFILES", "RunLocked", "TrainConfig", "WallClockSchedule", "build_network", "fixed_test_set",
           "loader_workers", "one_cycle_factor", "profile_config", "run_is_locked", "score_on_test", "train"]


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


def train(
    train_paths: Sequence[str | Path],
    val_paths: Sequence[str | Path],
    test_paths: Sequence[str | Path],
    config: TrainConfig,
    run_dir: str | Path,
    resume: bool = True,
    log: Callable[[str], None] | None = print,
    renderer=None,  # a model.synth.renderer.WatermarkRenderer (None: the default)
    on_epoch: Callable[[list[dict]], None] | None = None,
    init_weights: str | Path | bytes | None = None,
    eval_renderer=None,  # the renderer of the val/test samples (None: ``renderer``)
) -> dict:
    """Train, validate each epoch, checkpoint, then score the best model on the test split.

    ``init_weights`` (a checkpoint path or its bytes) starts a fresh run from those weights (fine-tuning with a
    new schedule); a resumed run ignores it. Its network config must match ``config``'s, except that a
    locate-then-restore run may warm-start from a U-Net of its width.
    ``eval_renderer`` draws the validation and test marks (e.g. from held-out icon identities).

    With ``resume`` and a ``last.pt`` in ``run_dir``, training continues after the last finished
    epoch (model, optimiser, schedule, scaler, RNG, history and elapsed time restored).
    ``on_epoch(history)`` is called after each epoch's checkpoint. Returns the summary (also
    written to ``summary.json``).
    """
    run_dir = Path(run_dir)
    if config.pairing not in PAIRINGS:
        raise ValueError(f"unknown pairing {config.pairing!r}: {' or '.join(PAIRINGS)}")
    if config.perceptual not in PERCEPTUAL_CHOICES:
        raise ValueError(f"perceptual must be one of {PERCEPTUAL_CHOICES}, got {config.perceptual!r}")
    if config.synth not in ("cpu", "device"):
        raise ValueError(f"synth must be cpu or device, got {config.synth!r}")
    if config.synth == "device" and config.pairing != "supervised":
        raise ValueError("synth=device makes supervised pairs only")
    if not train_paths or not val_paths or not test_paths:
        raise ValueError(f"need images in every split, got train={len(train_paths)} val={len(val_paths)} "
                         f"test={len(test_paths)}")
    say = log or (lambda _m: None)
    paths = {"train": [str(p) for p in train_paths], "val": [str(p) for p in val_paths],
             "test": [str(p) for p in test_paths]}
    with run_lock(run_dir):
        t_start = time.perf_counter()
        run = _setup(paths, config, run_dir, renderer, eval_renderer if eval_renderer is not None else renderer)
        _start(run, resume, init_weights, say)
        batches = _batches(run)
        say(f"training {config.profile}/{config.pairing}: {run.n_params:,} parameters, {run.steps_per_epoch} "
            "steps/epoch, " + (f"{config.max_minutes} min budget" if run.budget_s else f"{config.epochs} epochs")
            + f", on {run.device}")
        while run.state["epoch"] < config.epochs:
            if run.train_budget_s is not None and run.state["elapsed_s"] >= run.train_budget_s:
                run.state["stopped_by"] = "time"
                break
            _epoch(run, batches, on_epoch, say)
        else:
            run.state["stopped_by"] = "epochs"
        if run.state["stopped_by"] is None:
            run.state["stopped_by"] = "time"
        return _finish(run, t_start, say)


def fixed_test_set(test_paths: Sequence[str | Path], config: TrainConfig, renderer=None) -> WatermarkPairs:
    """The fixed synthetic test samples of ``test_paths`` under ``config`` (the same every call)."""
    return WatermarkPairs([str(p) for p in test_paths], size=config.eval_size, pairing=config.pairing, train=False,
                          seed=config.seed + 2, samples_per_image=config.eval_samples_per_image, renderer=renderer)


def score_on_test(model: torch.nn.Module, dataset: WatermarkPairs, config: TrainConfig,
                  harden_mask: bool | None = None) -> dict:
    """``evaluate_pairs`` with every baseline and oracle, in fp32, as every run's final evaluation does it."""
    device = next(model.parameters()).device
    harden = config.harden_mask if harden_mask is None else harden_mask
    return evaluate_pairs(model, dataset, device=device, batch_size=config.batch_size,
                          harden_mask=harden, amp=False, baselines=BASELINES)


# --- the run's parts --------------------------------------------------------------------------


@dataclass
class _Run:
    config: TrainConfig
    run_dir: Path
    paths: dict[str, list[str]]
    device: torch.device
    model: torch.nn.Module
    loss_fn: RemovalLoss
    loc_weights: dict[str, float]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    train_ds: WatermarkPairs
    val_ds: WatermarkPairs
    eval_renderer: object
    steps_per_epoch: int
    budget_s: float | None
    wall: bool
    bank: MarkBank | None = None
    gens: dict[str, torch.Generator] = field(default_factory=dict)
    state: dict = field(default_factory=dict)
    resolved: dict = field(default_factory=dict)

    @property
    def locating(self) -> bool:
        return isinstance(self.model, LocateRestore)

    @property
    def n_params(self) -> int:
        return count_parameters(self.model)

    @property
    def train_budget_s(self) -> float | None:
        return self.budget_s * (1 - self.config.eval_reserve) if self.budget_s else None


def _setup(paths: dict[str, list[str]], config: TrainConfig, run_dir: Path, renderer, eval_renderer) -> _Run:
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)
    model = build_network(config).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # Built before anything is written: imagenet without the weights stops here, clearly.
    loss_fn = RemovalLoss(**{k: v for k, v in config.loss.items() if k not in LOCATE_TERMS},
                          vgg=config.perceptual).to(device)
    optimizer = torch.optim.AdamW(trained_parameters(model, config), lr=config.lr, weight_decay=config.weight_decay)
    locating = isinstance(model, LocateRestore)
    on_device = config.synth == "device"
    # locate-restore: whole training images of size·mark_context (the localiser sees all of each),
    # the restorer a size×size window of each
    whole = round(config.size * config.mark_context) if locating else config.size
    pairs = CleanCrops if on_device else WatermarkPairs
    train_ds = pairs(paths["train"], size=whole, pairing=config.pairing, train=True, seed=config.seed,
                     samples_per_image=config.samples_per_image, renderer=renderer,
                     context=1.0 if (locating or on_device) else config.mark_context,
                     **({} if on_device else {"clean_share": config.clean_share}))
    val_ds = WatermarkPairs(paths["val"], size=config.eval_size, pairing=config.pairing, train=False,
                            seed=config.seed + 1, samples_per_image=config.eval_samples_per_image,
                            renderer=eval_renderer)
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
    bank = (MarkBank.build(train_ds.renderer, config.bank_size, size=whole, seed=config.seed, device=device)
            if on_device else None)
    return _Run(config=config, run_dir=run_dir, paths=paths, device=device, model=model, loss_fn=loss_fn,
                loc_weights={k: v for k, v in config.loss.items() if k in LOCATE_TERMS}, optimizer=optimizer,
                scheduler=scheduler, scaler=torch.amp.GradScaler("cuda", enabled=device.type == "cuda"),
                train_ds=train_ds, val_ds=val_ds, eval_renderer=eval_renderer, steps_per_epoch=steps_per_epoch,
                budget_s=budget_s, wall=wall, bank=bank,
                gens={"synth": torch.Generator().manual_seed(config.seed + 11),
                      "crop": torch.Generator().manual_seed(config.seed + 7)},
                state={"epoch": 0, "step": 0, "elapsed_s": 0.0, "best_psnr": -math.inf, "best_epoch": None,
                       "history": [], "stopped_by": None})


def _start(run: _Run, resume: bool, init_weights: str | Path | bytes | None, say: Callable[[str], None]) -> None:
    """Resume from ``last.pt``, or start fresh (from ``init_weights`` when given); then write
    ``config.json``."""
    cfg, run_dir, model = run.config, run.run_dir, run.model
    last = run_dir / "last.pt"
    if resume and last.exists():
        saved, extra = load_checkpoint(last, map_location=run.device)
        model.load_state_dict(saved.state_dict())
        run.optimizer.load_state_dict(extra["optimizer"])
        run.scheduler.load_state_dict(extra["scheduler"])
        run.scaler.load_state_dict(extra["scaler"])
        runfiles.set_rng_state(extra["rng"])
        run.state.update(extra["state"])
        run.state["history"] = json.loads(extra["history_json"])
        runfiles.changelog(run_dir, f"resumed after epoch {run.state['epoch']} (step {run.state['step']})")
        say(f"resuming {run_dir.name} after epoch {run.state['epoch']}")
    else:
        for stale in ("history.json", "history.csv", "summary.json", "best.pt"):
            (run_dir / stale).unlink(missing_ok=True)
        if init_weights is not None:
            start, _ = load_checkpoint(init_weights, map_location=run.device)
            source = "given checkpoint bytes" if isinstance(init_weights, bytes) else init_weights
            if isinstance(model, LocateRestore) and isinstance(start, UNet):
                model.warm_start_from_unet(dict(start.config), start.state_dict())
                source = f"{source} (both trunks warm-started from its U-Net)"
            elif dict(start.config) != dict(model.config):
                raise ValueError(f"{init_weights} is a {start.config} network, this run builds {model.config}")
            else:
                model.load_state_dict(start.state_dict())
            runfiles.changelog(run_dir, f"initialised from {source}")
        n = {k: len(v) for k, v in run.paths.items()}
        runfiles.changelog(run_dir, f"started {cfg.profile}/{cfg.pairing} on {n['train']} train, {n['val']} val, "
                                    f"{n['test']} test images; perceptual={cfg.perceptual} ({cfg.perceptual_reason})")
    run.resolved = {
        **cfg.to_dict(), "steps_per_epoch": run.steps_per_epoch, "device": str(run.device),
        "num_workers": loader_workers(run.device, cfg),
        "precision": "fp16-amp" if run.device.type == "cuda" else "bf16" if cpu_bf16(run.device, cfg) else "fp32",
        "parameters": run.n_params, "schedule": "wall" if run.wall else "onecycle",
        "loss_resolved": dict(getattr(run.loss_fn, "config", {})),  # weights and the VGG source used
        "images": {k: len(v) for k, v in run.paths.items()}}
    runfiles.write_json(run_dir / "config.json", run.resolved)


def _batches(run: _Run) -> Iterator[dict]:
    workers = loader_workers(run.device, run.config)
    gen = torch.Generator().manual_seed(run.config.seed + run.state["epoch"])
    loader = DataLoader(run.train_ds, batch_size=run.config.batch_size, shuffle=True,
                        drop_last=len(run.train_ds) >= run.config.batch_size, num_workers=workers, generator=gen,
                        persistent_workers=workers > 0, pin_memory=run.device.type == "cuda")
    return runfiles.batches(loader)


def _loss(run: _Run, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Forward one batch and its loss. A locate-then-restore network sees whole images and
    restores one window of each (near its mark), and adds the localiser's terms."""
    cfg, dev = run.config, run.device
    if run.bank is not None:
        batch = run.bank.composite(batch["clean"].to(dev, non_blocking=True), run.gens["synth"],
                                   clean_share=cfg.clean_share)
    x = batch["input"].to(dev, non_blocking=True)
    target = batch["target"].to(dev, non_blocking=True)
    mask = batch["mask"].to(dev, non_blocking=True)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if not run.locating:
        with autocast_for(dev, cfg):
            out = run.model(x)
        logits = out["mask_logits"].float() if "mask_logits" in out else None
        return run.loss_fn(out["image"].float(), target, mask, mask_logits=logits)
    corners = pick_crops(mask, cfg.size, run.gens["crop"])
    views = list(cfg.train_views or [cfg.view])
    view = views[int(torch.randint(len(views), (1,), generator=run.gens["crop"]))]
    alpha = batch["alpha"].to(dev, non_blocking=True)
    win_mask = windows(mask, cfg.size, corners)
    if cfg.train_part == "localiser":  # the restorer frozen and never run: the localiser's terms only
        with autocast_for(dev, cfg):
            out = run.model.locate_windows(x, view, cfg.size, corners)
        total, parts = torch.zeros((), device=dev), {}
    else:
        with autocast_for(dev, cfg):
            out = run.model(x, view=view, crop=(cfg.size, corners))
        total, parts = run.loss_fn(out["image"].float(), windows(target, cfg.size, corners), win_mask,
                                   mask_logits=out["mask_logits"].float())
    loc_total, loc_terms = locate_loss(out, mask, alpha, batch["colour"].to(dev, non_blocking=True),
                                       windows(batch["clean"].to(dev), cfg.size, corners), win_mask,
                                       windows(alpha, cfg.size, corners), run.loc_weights)
    total = total + loc_total
    return total, {**parts, **{k: float(v.detach()) for k, v in loc_terms.items()}, "total": float(total.detach())}


def _step(run: _Run, batch: dict[str, torch.Tensor], progress: Callable[[], float] | None) -> dict[str, float]:
    """One optimiser step; ``progress()`` (the share of the wall budget spent, read after the
    step) drives a wall schedule."""
    total, parts = _loss(run, batch)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(total).backward()
    if run.config.grad_clip:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.config.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    if progress is not None:  # the next step's rate, from the share of the budget spent so far
        run.scheduler.progress = progress()
    run.scheduler.step()
    if not math.isfinite(parts["total"]):
        raise FloatingPointError(f"loss is {parts['total']} at step {run.state['step']} of {run.run_dir}")
    run.state["step"] += 1
    return parts


def _epoch(run: _Run, batches: Iterator[dict], on_epoch: Callable[[list[dict]], None] | None,
           say: Callable[[str], None]) -> None:
    """Up to ``steps_per_epoch`` steps (fewer when the budget runs out), validation, the history
    row and the checkpoints."""
    cfg, state = run.config, run.state
    t0 = time.perf_counter()
    run.model.train()
    terms: dict[str, float] = {}
    n_steps = 0
    budget = run.train_budget_s
    for _ in range(run.steps_per_epoch):
        if budget is not None and state["elapsed_s"] + time.perf_counter() - t0 >= budget:
            break
        progress = (lambda: (state["elapsed_s"] + time.perf_counter() - t0) / budget) if run.wall else None
        for k, v in _step(run, next(batches), progress).items():
            terms[k] = terms.get(k, 0.0) + float(v)
        n_steps += 1
    train_s = time.perf_counter() - t0
    val = evaluate_pairs(run.model, run.val_ds, device=run.device, batch_size=cfg.batch_size, baselines=("input",),
                         harden_mask=cfg.harden_mask, amp=cpu_bf16(run.device, cfg), limit=cfg.val_limit)
    state["epoch"] += 1
    epoch_s = time.perf_counter() - t0
    state["elapsed_s"] += epoch_s
    row = {"epoch": state["epoch"], "step": state["step"], "steps": n_steps,
           "lr": run.optimizer.param_groups[0]["lr"],
           **{k: v / max(n_steps, 1) for k, v in terms.items()},
           "val_psnr": val["model"]["psnr"], "val_ssim": val["model"]["ssim"],
           "val_masked_psnr": val["model"]["masked_psnr"], "val_input_psnr": val["input"]["psnr"],
           **({"val_mask_iou": val["mask"]["iou"]} if "mask" in val else {}),
           "train_s": round(train_s, 2), "val_s": round(epoch_s - train_s, 2),
           "s_per_step": round(train_s / max(n_steps, 1), 4), "elapsed_s": round(state["elapsed_s"], 1),
           # the machine's 1-minute load: on a shared CPU it explains s_per_step
           "load_avg": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}
    state["history"].append(row)
    if row["val_psnr"] is not None and row["val_psnr"] > state["best_psnr"]:
        state["best_psnr"], state["best_epoch"] = row["val_psnr"], state["epoch"]
        save_checkpoint(run.model, run.run_dir / "best.pt", epoch=state["epoch"], val_psnr=row["val_psnr"],
                        train_config=json.dumps(run.resolved))
    runfiles.write_history(run.run_dir, state["history"])
    save_checkpoint(run.model, run.run_dir / "last.pt", optimizer=run.optimizer.state_dict(),
                    scheduler=run.scheduler.state_dict(), scaler=run.scaler.state_dict(), rng=runfiles.rng_state(),
                    state={k: v for k, v in state.items() if k != "history"},
                    history_json=json.dumps(state["history"]))
    if on_epoch is not None:
        on_epoch(state["history"])
    say(f"epoch {state['epoch']}: loss {row.get('total', float('nan')):.4f} val PSNR {row['val_psnr']:.2f} dB "
        f"SSIM {row['val_ssim']:.4f} lr {row['lr']:.2e} ({row['s_per_step']:.3f} s/step)")


def _finish(run: _Run, t_start: float, say: Callable[[str], None]) -> dict:
    """Score the best checkpoint on the fixed test split; write the summary and the plots."""
    cfg, state, run_dir = run.config, run.state, run.run_dir
    if not (run_dir / "best.pt").exists():  # a run stopped by its budget before any epoch ended
        save_checkpoint(run.model, run_dir / "best.pt", epoch=state["epoch"], val_psnr=None,
                        train_config=json.dumps(run.resolved))
    best, _ = load_checkpoint(run_dir / "best.pt", map_location=run.device)
    test = score_on_test(best, fixed_test_set(run.paths["test"], cfg, run.eval_renderer), cfg)
    summary = {
        "profile": cfg.profile, "pairing": cfg.pairing, "perceptual": cfg.perceptual,
        "perceptual_reason": cfg.perceptual_reason, "parameters": run.n_params, "device": str(run.device),
        "epochs": state["epoch"], "steps": state["step"], "stopped_by": state["stopped_by"],
        "best_epoch": state["best_epoch"],
        "best_val_psnr": state["best_psnr"] if math.isfinite(state["best_psnr"]) else None,
        "train_minutes": round(state["elapsed_s"] / 60.0, 2),
        "this_process_minutes": round((time.perf_counter() - t_start) / 60.0, 2),
        "test": test,
        "psnr_gain_vs_input": test["model"]["psnr"] - test["input"]["psnr"],
        "psnr_gain_vs_inpaint": test["model"]["psnr"] - test["inpaint"]["psnr"],
        "checkpoint": str(run_dir / "best.pt"), "run_dir": str(run_dir),
    }
    if state["history"]:
        summary["plots"] = [str(training_curves(state["history"], run_dir / "curves.png")),
                            str(lr_schedule(state["history"], run_dir / "lr.png"))]
    summary["visuals"] = draw_run_visuals(best, fixed_test_set(run.paths["test"], cfg, run.eval_renderer),
                                          run_dir / "visuals", say, harden_mask=cfg.harden_mask)
    runfiles.write_json(run_dir / "summary.json", summary)
    runfiles.changelog(run_dir, f"finished after {state['epoch']} epochs / {state['step']} steps "
                                f"({state['stopped_by']}); test PSNR {test['model']['psnr']:.2f} dB (input "
                                f"{test['input']['psnr']:.2f}, inpaint {test['inpaint']['psnr']:.2f}), SSIM "
                                f"{test['model']['ssim']:.4f}")
    say(f"test PSNR {test['model']['psnr']:.2f} dB vs input {test['input']['psnr']:.2f}, "
        f"inpaint {test['inpaint']['psnr']:.2f}")
    return summary
