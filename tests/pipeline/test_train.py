"""pipeline/train.py and pipeline/evaluate.py with ``unmark train`` / ``unmark evaluate``: the clean
pool's split from the catalog, registration, promotion only when better on the same samples,
resume of an interrupted run, the VGG weights choice, and the CLI's JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select, update
from typer.testing import CliRunner

from flows.cli import app
from model.remover.network import load_checkpoint
from pipeline import train as train_step
from pipeline.importer import import_paths
from storage import queries as q
from storage.models import Image as ImageRow
from storage.models import Model, TrainingRun


@pytest.fixture
def pool(catalog, blobs, settings, tmp_path):
    """Seven real photos imported and labelled clean; three carry a split already (one per
    split), four get theirs from ``split_for`` when training first reads the pool."""
    import skimage.data as sd
    from sklearn.datasets import load_sample_images

    folder = tmp_path / "photos"
    folder.mkdir()
    arrays = [sd.astronaut(), sd.chelsea(), sd.coffee(), sd.rocket(), *load_sample_images().images,
              sd.stereo_motorcycle()[0]]
    for i, a in enumerate(arrays):
        im = Image.fromarray(np.asarray(a)).convert("RGB")
        im.thumbnail((144, 144))
        im.save(folder / f"{i}.png")
    import_paths([folder], catalog, blobs, settings)
    with catalog.write() as s:
        ids = list(s.scalars(select(ImageRow.id).order_by(ImageRow.id)))
        s.execute(update(ImageRow).values(label="clean", status="clean"))
        for i, split in zip(ids[:3], ("train", "val", "test"), strict=True):
            s.execute(update(ImageRow).where(ImageRow.id == i).values(split=split))
    return ids


def _model(catalog, version: str) -> Model:
    with catalog.session() as s:
        m = q.get_model(s, version)
        s.expunge(m)
    return m


def _runs(catalog) -> list[TrainingRun]:
    with catalog.session() as s:
        runs = list(s.scalars(select(TrainingRun).order_by(TrainingRun.id)))
        for r in runs:
            s.expunge(r)
    return runs


def test_pool_splits_assigns_the_stable_split_and_writes_it_back(catalog, blobs, settings, pool):
    splits = train_step.pool_splits(catalog, blobs, settings)
    assert all(splits[sp] for sp in ("train", "val", "test"))
    assert sum(len(v) for v in splits.values()) == len(pool)
    with catalog.session() as s:
        rows = s.execute(select(ImageRow.split, ImageRow.sha256).order_by(ImageRow.id)).all()
    assert [split for split, _ in rows[:3]] == ["train", "val", "test"]  # existing splits kept
    for split, sha in rows[3:]:
        assert split == q.split_for(sha)  # assigned by hash and recorded
    assert all(p.is_file() for v in splits.values() for p in v)


def test_train_registers_promotes_and_records_the_run(catalog, blobs, settings, pool):
    out = train_step.train_remover(catalog, blobs, settings, profile="tiny")
    assert out["promoted"] is True and out["previous"] is None
    assert out["perceptual"] == "off"
    model = _model(catalog, out["version"])
    run = _runs(catalog)[0]
    assert run.model_version == out["version"]
    assert model.kind == "remover" and model.promoted
    assert model.config["perceptual"] == "off" and model.config["perceptual_reason"]
    for k in ("psnr", "ssim", "masked_psnr", "input_psnr", "inpaint_psnr"):
        assert isinstance(model.metrics[k], float), k
    net, extra = load_checkpoint(blobs.get(model.checkpoint_key))
    assert net.config == {k: model.config[k] for k in ("base", "depth")} | net.config
    assert run.status == "completed" and len(run.history) == 2 and run.history[0]["val_psnr"] is not None
    assert run.params["profile"] == "tiny" and run.params["epochs"] == 2
    assert run.timings["steps"] == 4
    run_dir = Path(out["run_dir"])
    assert run_dir.parent == settings.runs_dir
    for name in ("history.csv", "history.json", "summary.json", "config.json", "best.pt", "changelog.md"):
        assert (run_dir / name).is_file(), name
    log = (settings.runs_dir / "CHANGELOG.md").read_text()
    assert out["version"] in log and "promoted" in log


def test_promotion_compares_on_the_same_samples(catalog, blobs, settings, pool, monkeypatch):
    first = train_step.train_remover(catalog, blobs, settings, profile="tiny")
    # Re-scoring the promoted model on this run's test samples reproduces its own test PSNR.
    config = train_step.resolve_config(settings, "tiny", "supervised", None)
    splits = train_step.pool_splits(catalog, blobs, settings)
    again = train_step._challenge_promoted(catalog, blobs, config, splits["test"])
    assert again["version"] == first["version"]
    assert again["psnr"] == pytest.approx(first["metrics"]["psnr"], abs=1e-6)

    monkeypatch.setattr(train_step, "_challenge_promoted",
                        lambda *a, **k: {"version": first["version"], "psnr": float("inf"), "ssim": 1.0})
    second = train_step.train_remover(catalog, blobs, settings, profile="tiny")
    assert second["promoted"] is False
    monkeypatch.setattr(train_step, "_challenge_promoted",
                        lambda *a, **k: {"version": first["version"], "psnr": -1.0, "ssim": 0.0})
    third = train_step.train_remover(catalog, blobs, settings, profile="tiny", pairing="self-supervised")
    assert third["promoted"] is True
    with catalog.session() as s:
        promoted = list(s.scalars(select(Model.version).where(Model.promoted.is_(True))))
    assert promoted == [third["version"]]
    assert "not promoted" in (settings.runs_dir / "CHANGELOG.md").read_text()


def test_an_interrupted_run_is_resumed_by_the_next_call(catalog, blobs, settings, pool, monkeypatch):
    real_train = train_step.trainer.train

    def interrupted(*args, on_epoch=None, **kwargs):
        def stop(history):
            on_epoch(history)
            raise KeyboardInterrupt  # as a Ctrl-C (or a kill) after the first epoch's checkpoint

        return real_train(*args, on_epoch=stop, **kwargs)

    monkeypatch.setattr(train_step.trainer, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_step.train_remover(catalog, blobs, settings, profile="tiny")
    run = _runs(catalog)[0]
    assert run.status == "running" and len(run.history) == 1
    monkeypatch.setattr(train_step.trainer, "train", real_train)
    out = train_step.train_remover(catalog, blobs, settings, profile="tiny")
    assert out["version"] == run.model_version and out["epochs"] == 2
    assert "resumed after epoch 1" in (Path(out["run_dir"]) / "changelog.md").read_text()
    runs = _runs(catalog)
    assert len(runs) == 1 and runs[0].status == "completed"


def test_seed_profile_asks_for_imagenet_and_stops_clearly(catalog, blobs, settings, pool, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    config = train_step.resolve_config(settings, "seed", "supervised", None)
    assert config.perceptual == "imagenet"
    from model.remover.losses import VGGWeightsMissing

    with pytest.raises(VGGWeightsMissing):
        train_step.train_remover(catalog, blobs, settings, profile="seed", max_minutes=1)
    run = _runs(catalog)[0]
    assert run.status == "failed" and "VGG16" in run.error
    # an explicit UNMARK_PERCEPTUAL overrides a profile's choice, and is recorded as such
    explicit = settings.updated(perceptual="random")
    c = train_step.resolve_config(explicit, "quick-cpu", "supervised", 5)
    assert (c.perceptual, c.perceptual_reason, c.max_minutes) == ("random", "UNMARK_PERCEPTUAL", 5.0)
    assert c.loss["perceptual"] > 0


def test_not_enough_images_is_a_clear_error(catalog, blobs, settings):
    with pytest.raises(train_step.NotEnoughImages, match="train 0"):
        train_step.train_remover(catalog, blobs, settings, profile="tiny")
    r = CliRunner().invoke(app, ["train", "--profile", "tiny"], env={"UNMARK_HOME": str(settings.home)})
    assert r.exit_code == 2 and "at least one clean image" in r.output


def _swcnn_like(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    images, logos = tmp_path / "images", tmp_path / "logos"
    images.mkdir()
    logos.mkdir()
    for i in (1, 2):
        small = rng.integers(0, 256, size=(18, 20, 3), dtype=np.uint8)
        Image.fromarray(small).resize((330, 290), Image.BICUBIC).save(images / f"{i}.jpg", quality=95)
    logo = np.zeros((40, 60, 4), np.uint8)
    logo[5:35, 5:55] = (250, 30, 20, 255)
    Image.fromarray(logo, "RGBA").save(logos / "1.png")
    return images, logos


def test_cli_train_then_evaluate_json(catalog, blobs, settings, pool, tmp_path):
    env = {"UNMARK_HOME": str(settings.home)}
    runner = CliRunner()
    r = runner.invoke(app, ["train", "--profile", "tiny", "--pairing", "self-supervised", "--json"], env=env)
    assert r.exit_code == 0, r.output
    trained = json.loads(r.stdout)
    assert trained["promoted"] is True and trained["pairing"] == "self-supervised"
    assert {"version", "metrics", "run_dir", "epochs", "train_minutes"} <= set(trained)

    images, logos = _swcnn_like(tmp_path)
    r = runner.invoke(app, ["evaluate", "--protocol", "swcnn", "--images", str(images), "--logos", str(logos),
                            "--alpha", "0.3,1.0", "--json"], env=env)
    assert r.exit_code == 0, r.output
    ev = json.loads(r.stdout)
    assert ev["protocol"] == "swcnn" and ev["model"] == trained["version"]
    assert ev["images"] == 2 and ev["logos"] == 1 and set(ev["alpha"]) == {"0.3", "1.0"}
    for row in ev["alpha"].values():
        assert {"input_psnr", "psnr", "input_ssim", "ssim"} <= set(row)
        assert 5 < row["psnr"] < 80 and 0 < row["ssim"] <= 1
    assert ev["alpha"]["0.3"]["paper_psnr"] == 36.90

    r = runner.invoke(app, ["evaluate", "--protocol", "swcnn", "--images", str(images), "--logos", str(logos),
                            "--alpha", "0.3"], env=env)
    assert r.exit_code == 0 and "36.90" in r.output  # the human table shows the paper's number
    r = runner.invoke(app, ["evaluate", "--images", str(images), "--logos", str(logos), "--model", "nope"], env=env)
    assert r.exit_code == 2 and "no remover" in r.output
    r = runner.invoke(app, ["evaluate", "--images", str(images), "--logos", str(logos), "--alpha", "1.5"], env=env)
    assert r.exit_code == 2 and "(0, 1]" in r.output
    r = runner.invoke(app, ["evaluate", "--protocol", "other", "--images", str(images), "--logos", str(logos)], env=env)
    assert r.exit_code == 2 and "unknown protocol" in r.output


def test_retraining_fine_tunes_the_promoted_remover_unless_from_scratch(catalog, blobs, settings, pool):
    first = train_step.train_remover(catalog, blobs, settings, profile="tiny")
    assert first["started_from"] == "scratch"  # nothing promoted yet
    second = train_step.train_remover(catalog, blobs, settings, profile="tiny", max_minutes=5)
    assert second["started_from"] == first["version"]
    assert "initialised from" in (Path(second["run_dir"]) / "changelog.md").read_text()
    third = train_step.train_remover(catalog, blobs, settings, profile="tiny", max_minutes=6, from_scratch=True)
    assert third["started_from"] == "scratch"
    assert "initialised from" not in (Path(third["run_dir"]) / "changelog.md").read_text()
    # A promoted network of another shape cannot seed this profile: the run starts from scratch.
    assert train_step._promoted_start(catalog, blobs, train_step.resolve_config(
        settings, "quick-cpu", "supervised", None)) == ("scratch", None)
