"""model/remover/train.py: the schedule, profiles, a tiny real run with its files, both pairings, the
wall-time cap, resume after a kill, and the VGG weights choice."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.remover.losses import VGGWeightsMissing
from model.remover.network import load_checkpoint
from model.remover.train import (
    PROFILES,
    TrainConfig,
    WallClockSchedule,
    loader_workers,
    one_cycle_factor,
    profile_config,
    train,
)

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """Six small real photos (scikit-image / scikit-learn sample data, offline)."""
    import skimage.data as sd
    from sklearn.datasets import load_sample_images

    out = tmp_path_factory.mktemp("photos")
    arrays = [sd.astronaut(), sd.chelsea(), sd.coffee(), sd.rocket(), *load_sample_images().images]
    paths = []
    for i, a in enumerate(arrays):
        im = Image.fromarray(np.asarray(a)).convert("RGB")
        im.thumbnail((160, 160))
        p = out / f"{i}.jpg"
        im.save(p, quality=92)
        paths.append(p)
    return paths


def tiny(**overrides) -> TrainConfig:
    return profile_config("tiny", **overrides)


def test_one_cycle_factor_is_torchs_one_cycle():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1e-3)
    total = 1000  # torch ends its warm-up at step pct·total − 1: the same shape once total is large
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=total, pct_start=0.3,
                                                div_factor=10, final_div_factor=100)
    for step in range(total):
        expected = opt.param_groups[0]["lr"]
        got = 1e-3 * one_cycle_factor(step / (total - 1), 0.3, 10, 100)
        assert got == pytest.approx(expected, rel=5e-3, abs=1e-8), step
        opt.step()
        sched.step()
    assert one_cycle_factor(0, 0.3, 10, 100) == pytest.approx(0.1)
    assert one_cycle_factor(0.3, 0.3, 10, 100) == pytest.approx(1.0)
    assert one_cycle_factor(1.0, 0.3, 10, 100) == pytest.approx(1e-3)


def test_wall_clock_schedule_follows_progress_and_round_trips():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1e-3)
    cfg = TrainConfig(pct_start=0.05)
    s = WallClockSchedule(opt, cfg)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)
    s.progress = 0.05
    s.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)
    s.progress = 0.999
    s.step()
    state = s.state_dict()
    s2 = WallClockSchedule(torch.optim.AdamW([p], lr=1e-3), cfg)
    s2.load_state_dict(state)
    assert s2.progress == pytest.approx(0.999)


def test_profiles_are_what_the_issue_asks_for():
    seed = PROFILES["seed"]
    assert (seed.batch_size, seed.epochs, seed.size, seed.lr, seed.weight_decay) == (8, 25, 256, 1e-3, 1e-5)
    assert (seed.pct_start, seed.div_factor, seed.final_div_factor) == (0.3, 10, 100)
    assert seed.perceptual == "imagenet" and seed.loss["perceptual"] == 0.3
    q = PROFILES["quick-cpu"]
    assert q.max_minutes == 30 and q.grad_clip and q.mask_guided and q.harden_mask and q.size < 256
    assert q.perceptual in ("random", "off") and q.perceptual_reason  # an explicit, recorded choice
    assert PROFILES["tiny"].size == 64
    with pytest.raises(KeyError, match="unknown profile"):
        profile_config("huge")


def test_tiny_run_writes_every_file_and_beats_nothing_silently(photos, tmp_path):
    run = tmp_path / "run"
    summary = train(photos[:3], photos[3:4], photos[4:6], tiny(), run, log=None)
    for name in ("config.json", "last.pt", "best.pt", "history.csv", "history.json", "summary.json", "changelog.md",
                 "curves.png", "lr.png"):
        assert (run / name).is_file(), name
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    for key in ("lr", "total", "l1", "lab", "ssim", "edge", "mask_bce", "mask_dice", "val_psnr", "val_ssim",
                "val_input_psnr", "load_avg"):
        assert key in history[0], key
    assert "perceptual" not in history[0]  # off: not computed
    csv_head = (run / "history.csv").read_text().splitlines()[0].split(",")
    assert "val_psnr" in csv_head and "lr" in csv_head
    config = json.loads((run / "config.json").read_text())
    assert config["perceptual"] == "off" and config["perceptual_reason"]
    assert config["loss_resolved"]["vgg_source"] == "off"
    assert config["parameters"] == summary["parameters"] > 0
    assert config["num_workers"] == 0  # resolved: no loader processes on the CPU
    assert summary["epochs"] == 2 and summary["steps"] == 4 and summary["stopped_by"] == "epochs"
    test = summary["test"]
    assert test["n"] == 2 and set(test) >= {"model", "input", "inpaint"}
    for method in ("model", "input", "inpaint"):
        assert 5 < test[method]["psnr"] < 80 and 0 < test[method]["ssim"] <= 1
    assert json.loads((run / "summary.json").read_text())["test"] == test
    model, extra = load_checkpoint(run / "best.pt")
    assert extra["epoch"] == summary["best_epoch"]
    assert model.config["mask_guided"] is True
    assert "finished after 2 epochs" in (run / "changelog.md").read_text()
    # the seed's figures on two fixed test samples, listed in the summary and in visuals.json
    figures = json.loads((run / "visuals" / "visuals.json").read_text())
    assert {"s0-residual_histogram.png", "s1-quality_maps.png", "s0-attention_gate_maps.png",
            "first_layer_kernels.png"} <= {f["file"] for f in figures["figures"]}
    assert figures["failed"] == [] and summary["visuals"] and all(Path(p).is_file() for p in summary["visuals"])


def test_loader_workers_by_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # the device is only looked at, not used
    assert loader_workers(cpu, TrainConfig()) == 0
    assert loader_workers(cuda, TrainConfig()) == max(1, min(8, (os.cpu_count() or 2) - 1))
    assert loader_workers(cuda, TrainConfig(num_workers=0)) == 0  # a set value wins
    assert loader_workers(cpu, TrainConfig(num_workers=3)) == 3


def test_two_loader_workers_train_like_none(photos, tmp_path):
    """Pairs drawn in worker processes: same step count, finite losses, a usable model."""
    summary = train(photos[:3], photos[3:4], photos[4:6], tiny(num_workers=2, epochs=1), tmp_path / "w", log=None)
    assert summary["steps"] == 2 and summary["epochs"] == 1
    assert json.loads((tmp_path / "w" / "config.json").read_text())["num_workers"] == 2
    history = json.loads((tmp_path / "w" / "history.json").read_text())
    assert all(np.isfinite(h["total"]) for h in history)


def test_self_supervised_pairing_trains(photos, tmp_path):
    summary = train(photos[:2], photos[2:3], photos[3:4], tiny(pairing="self-supervised", epochs=1), tmp_path / "r",
                    log=None)
    assert summary["pairing"] == "self-supervised" and summary["steps"] == 2


def test_max_minutes_caps_the_run_and_still_evaluates(photos, tmp_path):
    cfg = tiny(epochs=10_000, steps_per_epoch=3, max_minutes=0.12, eval_reserve=0.1)
    t0 = time.perf_counter()
    summary = train(photos[:3], photos[3:4], photos[4:5], cfg, tmp_path / "r", log=None)
    took = time.perf_counter() - t0
    assert summary["stopped_by"] == "time"
    assert 1 <= summary["epochs"] < 10_000
    assert took < 0.12 * 60 + 60  # the budget, plus one epoch overrun and the final evaluation (shared CPU)
    history = json.loads((tmp_path / "r" / "history.json").read_text())
    lrs = [h["lr"] for h in history]
    assert max(lrs) > lrs[-1]  # the schedule ran its course over the budget
    assert summary["test"]["n"] == 1


def test_imagenet_without_weights_stops_with_the_loss_error(photos, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # an empty cache
    cfg = dataclasses.replace(tiny(), perceptual="imagenet", loss={**tiny().loss, "perceptual": 0.3})
    with pytest.raises(VGGWeightsMissing, match="random"):
        train(photos[:1], photos[1:2], photos[2:3], cfg, tmp_path / "r", log=None)
    assert not (tmp_path / "r" / "last.pt").exists()


_KILLABLE = """
import sys, torch
torch.set_num_threads(1)
from pathlib import Path
from model.remover.train import profile_config, train
paths = [Path(p) for p in sys.argv[2:]]
cfg = profile_config("tiny", epochs=40, steps_per_epoch=2)
train(paths[:3], paths[3:4], paths[4:5], cfg, Path(sys.argv[1]), log=print)
"""


@pytest.mark.slow
def test_resume_after_kill_continues_from_the_last_epoch(photos, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE, str(run), *map(str, photos[:5])], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 400  # a shared, loaded CPU: start-up alone can take a minute
        while time.time() < deadline:
            if (run / "history.json").exists() and len(json.loads((run / "history.json").read_text())) >= 3:
                break
            if proc.poll() is not None:
                pytest.fail(f"training subprocess ended early: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.2)
        else:
            pytest.fail("no third epoch within 400 s")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    _, extra = load_checkpoint(run / "last.pt")
    done = extra["state"]["epoch"]
    before = json.loads(extra["history_json"])
    assert done >= 2 and [h["epoch"] for h in before] == list(range(1, done + 1))  # history.json leads last.pt
    assert not (run / "summary.json").exists()

    cfg = profile_config("tiny", epochs=done + 2, steps_per_epoch=2)
    summary = train(photos[:3], photos[3:4], photos[4:5], cfg, run, resume=True, log=None)
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, done + 3))  # continued, nothing redone
    assert history[:done] == before  # the killed run's epochs are kept as they were
    assert history[done]["step"] == (done + 1) * 2  # the step counter resumed too
    assert summary["epochs"] == done + 2
    assert f"resumed after epoch {done}" in (run / "changelog.md").read_text()


def test_locate_restore_profile_trains_resumes_and_reports_both_oracles(photos, tmp_path):
    """The locate-then-restore network trains through the same loop (whole images to the
    localiser, one window each to the restorer), its checkpoints rebuild it, a resumed run
    continues, and the final test carries mask IoU/F1 and both oracle runs."""
    from model.remover.locate import LOCATE_TERMS, LocateRestore

    cfg = profile_config("tiny-locate")
    run = tmp_path / "run"
    s = train(photos[:3], photos[3:5], photos[5:], cfg, run, log=None)
    assert s["steps"] == cfg.epochs * cfg.steps_per_epoch
    history = json.loads((run / "history.json").read_text())
    assert set(LOCATE_TERMS) <= set(history[0])  # every localiser term was computed and logged
    best, _ = load_checkpoint(run / "best.pt")
    assert isinstance(best, LocateRestore) and best.config["view"] == cfg.view
    test = s["test"]
    assert {"model", "input", "inpaint", "oracle_restore", "mask_telea", "mask"} <= set(test)
    assert 0.0 <= test["mask"]["iou"] <= 1.0
    names = {Path(p).name for p in s["visuals"]}
    assert {"s0-localiser_maps.png", "s0-localiser-attention_gate_maps.png", "s0-restorer-activations.png",
            "restorer-first_layer_kernels.png"} <= names
    more = train(photos[:3], photos[3:5], photos[5:], dataclasses.replace(cfg, epochs=3), run, log=None)
    assert more["steps"] == 3 * cfg.steps_per_epoch  # resumed after epoch 2, not restarted


def test_training_the_localiser_alone_leaves_the_restorer_bit_for_bit(tmp_path, photos):
    """``train_part="localiser"`` (the localise-cpu profile): the restorer is frozen and never run,
    every localiser term is still learned from, the localiser's weights move, and the restorer's
    are the initial ones exactly. A plain U-Net has no localiser to train alone: a clear error."""
    from model.remover.locate import LOCATE_TERMS

    cfg = dataclasses.replace(profile_config("tiny-locate"), train_part="localiser")
    assert profile_config("localise-cpu").train_part == "localiser"
    start = tmp_path / "start.pt"
    train(photos[:3], photos[3:5], photos[5:], dataclasses.replace(cfg, train_part="all", epochs=1), tmp_path / "a",
          log=None)
    shutil.copy(tmp_path / "a" / "best.pt", start)
    before = load_checkpoint(start)[0].float().state_dict()
    run = tmp_path / "run"
    s = train(photos[:3], photos[3:5], photos[5:], cfg, run, log=None, init_weights=start)
    assert s["steps"] == cfg.epochs * cfg.steps_per_epoch
    history = json.loads((run / "history.json").read_text())
    assert set(LOCATE_TERMS) <= set(history[0]) and "l1" not in history[0]  # the restorer's loss is never computed
    after = load_checkpoint(run / "last.pt")[0].float().state_dict()
    restorer = [k for k in before if k.startswith("restorer.")]
    assert restorer and all(torch.equal(before[k], after[k]) for k in restorer)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("localiser."))
    with pytest.raises(ValueError, match="only for arch locate-restore"):
        train(photos[:3], photos[3:5], photos[5:], dataclasses.replace(profile_config("tiny"), train_part="localiser"),
              tmp_path / "unet", log=None)
