"""The shipped detector: the remover's localiser as ``LocaliserDetector`` (scores, checkpoints,
errors), ``pipeline.pretrain_detector`` (fine-tune, calibrate, measure, export with a card),
``register_shipped_detector`` (what ``unmark init`` runs), and triage starting from it and
fine-tuning it (promoted only when better on the same held-out photos)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from sqlalchemy import update

from model.api import Detector
from model.detector import (
    LocaliserDetector,
    clean_and_marked,
    detector_from_bytes,
    detector_to_bytes,
    score_images,
    train_localiser_detector,
)
from model.detector.localiser import image_score_loss, whole_view_batch
from model.remover.locate import LocateRestore
from model.remover.network import UNet, load_checkpoint, save_checkpoint
from model.synth.renderer import WatermarkRenderer
from pipeline import triage as triage_step
from pipeline.importer import import_paths
from pipeline.pretrain_detector import TOP_FRACTIONS, pretrain_detector
from pipeline.registry import register_shipped_detector
from storage import queries as q
from storage.models import Image as ImageRow
from storage.models import Model

torch.set_num_threads(1)


def _arrays() -> list[np.ndarray]:
    import skimage.data as sd
    from sklearn.datasets import load_sample_images

    out = []
    for a in [sd.astronaut(), sd.chelsea(), sd.coffee(), sd.rocket(), *load_sample_images().images]:
        im = Image.fromarray(np.asarray(a)).convert("RGB")
        im.thumbnail((112, 112))
        out.append(np.asarray(im))
    return out


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """A folder of photos and a weights folder holding a tiny locate-then-restore remover."""
    root = tmp_path_factory.mktemp("shipped")
    photos = root / "photos"
    photos.mkdir()
    for i, a in enumerate(_arrays() * 2):
        Image.fromarray(np.ascontiguousarray(np.roll(a, 7 * i, axis=1))).save(photos / f"{i}.png")
    weights = root / "weights"
    torch.manual_seed(0)
    save_checkpoint(LocateRestore(base=8, depth=2, loc_base=8, loc_depth=2, view=32), weights / "remover.pt")
    return photos, weights


def test_a_localiser_detector_is_the_removers_localiser_and_round_trips(shipped):
    _, weights = shipped
    remover = load_checkpoint(weights / "remover.pt")[0].float()
    det = LocaliserDetector.from_remover(remover)
    assert det.config == {"kind": "localiser", "base": 8, "depth": 2, "view": 32, "top_fraction": 0.002}
    for k, v in remover.localiser.state_dict().items():
        assert torch.equal(det.localiser.state_dict()[k], v)
    images = [a for a in _arrays()[:3]] + [_arrays()[0][:40, :90]]  # any size, any aspect
    s = det.score(images)
    assert s.shape == (4,) and ((0 <= s) & (s <= 1)).all()
    assert np.allclose(score_images(det, images, scales=(384, 768)), s)  # scales do not apply to it
    back, extra = detector_from_bytes(detector_to_bytes(det, half=True, calibration={"low": 0.1}))
    assert isinstance(back, LocaliserDetector) and extra == {"calibration": {"low": 0.1}}
    assert {v.dtype for v in back.state_dict().values() if v.is_floating_point()} == {torch.float32}
    assert np.allclose(back.score(images), s, atol=2e-2)  # fp16 storage


def test_localiser_detector_refuses_bad_configs_and_a_remover_without_a_localiser():
    with pytest.raises(ValueError, match="multiple of 16"):
        LocaliserDetector(view=100)
    with pytest.raises(ValueError, match="top_fraction"):
        LocaliserDetector(top_fraction=0)
    with pytest.raises(ValueError, match="kind 'localiser'"):
        LocaliserDetector(kind="cells")
    with pytest.raises(ValueError, match="no localiser"):
        LocaliserDetector.from_remover(UNet(base=8, depth=2))


def test_fine_tuning_moves_the_weights_and_lowers_the_loss(shipped):
    photos, weights = shipped
    det = LocaliserDetector.from_remover(load_checkpoint(weights / "remover.pt")[0].float())
    before = {k: v.clone() for k, v in det.state_dict().items()}
    broken = photos.parent / "broken.png"
    broken.write_bytes(b"not a png")
    paths = [*sorted(map(str, photos.glob("*.png"))), str(broken)]
    report = train_localiser_detector(det, paths, WatermarkRenderer(seed=0), steps=6, batch_size=2)
    assert report["steps"] == 6 and report["images"] == 13 and np.isfinite(report["final_loss"])
    assert report["image_weight"] == 1.0 and report["unreadable"] <= 1
    assert any(not torch.equal(before[k], v) for k, v in det.state_dict().items())
    with pytest.raises(ValueError, match="at least one image"):
        train_localiser_detector(det, [], WatermarkRenderer(seed=0))
    with pytest.raises(ValueError, match="none of the 1 training photos could be read"):
        train_localiser_detector(det, [str(broken)], WatermarkRenderer(seed=0), steps=1)


def test_training_views_are_whole_photos_at_the_scoring_view_and_labelled(shipped):
    photos, _ = shipped
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(photos.glob("*.png"))]
    rng = np.random.default_rng(0)
    batch = whole_view_batch(lambda: arrays[int(rng.integers(len(arrays)))], WatermarkRenderer(seed=0), 64, 6, rng)
    x, mask, label = batch["input"], batch["mask"], batch["label"]
    assert x.shape[0] == 6 and max(x.shape[2:]) == 64 and mask.shape[2:] == x.shape[2:]
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    marked = mask.flatten(1).amax(1) > 0
    assert torch.equal(marked, label > 0.5) and 0 < int(marked.sum()) < 6


def test_the_image_score_loss_punishes_a_hot_clean_view_and_a_cold_marked_one():
    hot = torch.full((1, 1, 8, 8), -6.0)
    hot[..., 0, 0] = 6.0  # one confident pixel: the top-fraction score is high
    cold = torch.full((1, 1, 8, 8), -6.0)
    as_clean = image_score_loss(hot, torch.tensor([0.0]), 1 / 64)
    assert float(as_clean) > 5 and float(image_score_loss(cold, torch.tensor([0.0]), 1 / 64)) < 0.01
    assert float(image_score_loss(cold, torch.tensor([1.0]), 1 / 64)) > 5
    hot.requires_grad_(True)
    image_score_loss(hot, torch.tensor([0.0]), 1 / 64).backward()
    assert hot.grad[..., 0, 0] > 0 and float(hot.grad.abs().sum() - hot.grad[..., 0, 0].abs().sum()) == 0


def test_clean_and_marked_pairs_each_photo_with_a_marked_copy():
    arrays = _arrays()[:3]
    images, labels, area = clean_and_marked(arrays, seed=2, icon_logos=4)
    assert len(images) == 6 and labels.tolist() == [False, True] * 3
    assert (area[~labels] == 0).all() and (area[labels] > 0).all()
    assert all(im.shape == arrays[i // 2].shape for i, im in enumerate(images))


def test_pretrain_detector_calibrates_measures_and_writes_an_fp16_detector_and_card(shipped, tmp_path):
    photos, weights = shipped
    out = tmp_path / "w"
    shutil.copytree(weights, out)
    with pytest.raises(ValueError, match="zero or positive"):
        pretrain_detector([photos], -1, out_dir=out, log=None)
    first = pretrain_detector([photos], 0, out_dir=out, command="first", log=None)
    payload = torch.load(out / "detector.pt", weights_only=False)
    assert {t.dtype for t in payload["state_dict"].values() if t.is_floating_point()} == {torch.float16}
    cal = payload["extra"]["calibration"]
    assert payload["config"]["top_fraction"] in TOP_FRACTIONS  # the val photos' best pooling share
    assert cal["low"] <= cal["high"] and cal["target_precision"] == 0.98
    assert first["fine_tune"] is None and first["test"]["images"] >= 2
    assert 0 <= first["test"]["uncertain"] <= 1 and "precision_at_10pct" in first["test"]
    second = pretrain_detector([photos], 0.05, out_dir=out, command="second", log=None)
    assert second["fine_tune"]["steps"] >= 1
    runs = [json.loads(x) for x in (out / "detector-runs.jsonl").read_text().splitlines()]
    assert [r["command"] for r in runs] == ["first", "second"]
    assert runs[1]["started_from"].endswith("detector.pt")  # the second run continued the first
    card = (out / "detector.md").read_text()
    assert "Calibration" in card and f"{second['calibration']['low']:.4f}" in card and str(tmp_path) not in card
    det = Detector.load(out / "detector.pt")  # the library API loads it with its thresholds
    assert det.calibration["high"] == second["calibration"]["high"]
    assert 0 <= det.score(_arrays()[0]) <= 1


def test_pretrain_detector_needs_a_locate_then_restore_remover(shipped, tmp_path):
    photos, _ = shipped
    with pytest.raises(FileNotFoundError, match="no shipped remover"):
        pretrain_detector([photos], 0, out_dir=tmp_path / "empty", log=None)
    unet = tmp_path / "unet"
    save_checkpoint(UNet(base=8, depth=2), unet / "remover.pt")
    with pytest.raises(ValueError, match="no localiser"):
        pretrain_detector([photos], 0, out_dir=unet, log=None)


@pytest.fixture(scope="module")
def shipped_detector(shipped, tmp_path_factory):
    photos, weights = shipped
    out = tmp_path_factory.mktemp("with-detector")
    shutil.copytree(weights, out, dirs_exist_ok=True)
    pretrain_detector([photos], 0, out_dir=out, log=None)
    return out


def test_register_shipped_detector_promotes_once_and_refuses_bad_files(shipped_detector, tmp_path, catalog, blobs):
    assert register_shipped_detector(catalog, blobs, tmp_path) is None  # nothing ships
    got = register_shipped_detector(catalog, blobs, shipped_detector)
    assert got["version"].startswith("detector-shipped-")
    with catalog.session() as s:
        m = q.promoted_model(s, "detector")
        assert m.version == got["version"] and m.config["kind"] == "localiser"
        assert set(m.config["calibration"]) >= {"low", "high"} and "test" in m.metrics
    assert register_shipped_detector(catalog, blobs, shipped_detector) is None  # already promoted
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "detector.pt").write_bytes(b"not a checkpoint")
    nocal = tmp_path / "nocal"
    nocal.mkdir()
    (nocal / "detector.pt").write_bytes(detector_to_bytes(LocaliserDetector(base=8, depth=2, view=32)))
    with catalog.write() as s:
        s.execute(update(Model).values(promoted=False))
    for folder in (bad, nocal):
        with pytest.raises(ValueError, match="not a calibrated detector checkpoint"):
            register_shipped_detector(catalog, blobs, folder)
    with catalog.session() as s:
        assert q.promoted_model(s, "detector") is None


def test_triage_starts_from_the_shipped_detector_and_fine_tunes_it(shipped, shipped_detector, settings, catalog,
                                                                    blobs):
    photos, _ = shipped
    settings.models.shipped_weights = shipped_detector
    settings.triage.detector_steps = 4
    settings.triage.triage_batch_size = 5
    import_paths([photos], catalog, blobs, settings)
    first = triage_step.triage(catalog, blobs, settings)
    assert first["detector"].startswith("detector-shipped-") and first["trained_detector"] is None
    assert first["scored"] == 12 and first["clean"] + first["watermarked"] + first["uncertain"] == 12
    again = triage_step.triage(catalog, blobs, settings, retrain_detector=True)
    tune = again["fine_tune"]
    assert tune["before"] == first["detector"] and tune["held_out_images"] >= 2
    assert again["trained_detector"] == tune["version"]
    with catalog.session() as s:
        promoted = q.promoted_model(s, "detector").version
        assert s.query(Model).filter_by(kind="detector").count() == 2
        assert promoted == (tune["version"] if tune["promoted"] else first["detector"])
        assert promoted == again["detector"]
        versions = {i.detector_version for i in s.query(ImageRow)}
        assert versions == {promoted}
