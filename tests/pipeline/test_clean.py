"""The clean step on a real catalog: outputs and metrics, image modes, real pairs, failures,
idempotence, the DataLoader worker path, the detector scores, and resume after kill -9."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from sqlalchemy import delete, func, select, update
from typer.testing import CliRunner

from flows.cli import app
from model.remover.network import UNet, save_checkpoint
from pipeline import clean as clean_step
from pipeline import registry
from storage import queries as q
from storage.models import Cleaning, Failure, Image

ROOT = Path(__file__).resolve().parents[2]


# --- fixtures ------------------------------------------------------------------------------------


def tiny_remover(tmp_path: Path, seed: int = 0, base: int = 4, depth: int = 2) -> Path:
    """A tiny UNet whose (normally zero-initialised) heads are randomised so it changes images."""
    torch.manual_seed(seed)
    net = UNet(base=base, depth=depth, mask_head=True)
    with torch.no_grad():
        net.head.weight.normal_(std=0.3)
        net.mask_out.weight.normal_(std=0.3)
    return save_checkpoint(net, tmp_path / f"remover-{seed}.pt")


def register_remover(catalog, blobs, path: Path, version: str = "remover-test", promote: bool = True) -> str:
    _, key = blobs.put(path.read_bytes())
    with catalog.write() as s:
        q.register_model(s, version, "remover", key, config={}, metrics={})
        if promote:
            q.promote_model(s, version)
    return version


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    from skimage import data

    base = np.asarray(PILImage.fromarray(data.astronaut()).resize((w, h)))
    rng = np.random.default_rng(seed)
    return np.clip(base.astype(int) + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)


def _encode(im: PILImage.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def add_image(catalog, blobs, data: bytes, label: str, width: int, height: int, group: int | None = None) -> int:
    """An image row as triage leaves it (label and status set)."""
    sha, key = blobs.put(data)
    with catalog.write() as s:
        iid = q.add_images(s, [dict(sha256=sha, blob_key=key, mime="image/png", width=width, height=height,
                                    bytes=len(data))])[sha]
        s.execute(update(Image).where(Image.id == iid).values(label=label, status=label, group_id=group))
    return iid


@pytest.fixture
def small_settings(settings):
    settings.clean.num_workers = 0
    settings.clean.clean_tile = 48
    settings.clean.clean_overlap = 16
    settings.clean.clean_chunk_images = 3
    return settings


@pytest.fixture
def remover(tmp_path, catalog, blobs):
    return register_remover(catalog, blobs, tiny_remover(tmp_path))


@pytest.fixture
def pool(catalog, blobs):
    """Watermarked images in every mode, a real pair, a clean image and an unreadable blob."""
    ph = _photo(60, 80)
    ids = {}
    exif = PILImage.Exif()
    exif[0x0112] = 6  # rotate 90° CW on display: a 60x80 JPEG shows as 80x60 (w x h = 60 x 80)
    ids["exif"] = add_image(catalog, blobs, _encode(PILImage.fromarray(ph), "JPEG", quality=95, exif=exif),
                            "watermarked", 80, 60)
    rgba = np.dstack([_photo(50, 70, 1), np.tile(np.linspace(0, 255, 70, dtype=np.uint8), (50, 1))])
    ids["rgba"] = add_image(catalog, blobs, _encode(PILImage.fromarray(rgba, "RGBA"), "PNG"), "watermarked", 70, 50)
    ids["grey"] = add_image(catalog, blobs, _encode(PILImage.fromarray(ph).convert("L"), "PNG"), "watermarked", 80, 60)
    ids["palette"] = add_image(catalog, blobs, _encode(PILImage.fromarray(ph).convert("P", palette=PILImage.ADAPTIVE), "PNG"),
                               "watermarked", 80, 60)
    g16 = np.asarray(PILImage.fromarray(ph).convert("L"), np.uint16) * 257
    ids["sixteen"] = add_image(catalog, blobs, _encode(PILImage.fromarray(g16), "PNG"), "watermarked", 80, 60)
    ids["tiny"] = add_image(catalog, blobs, _encode(PILImage.fromarray(_photo(5, 9, 2)), "PNG"), "watermarked", 9, 5)
    ids["bad"] = add_image(catalog, blobs, b"\x89PNG\r\n\x1a\n" + b"garbage" * 20, "watermarked", 10, 10)
    # a real pair: a clean copy (larger) and a watermarked copy in the same dedup group
    clean_arr = _photo(120, 160, 3)
    ids["pair_clean"] = add_image(catalog, blobs, _encode(PILImage.fromarray(clean_arr), "PNG"), "clean", 160, 120)
    wm = np.asarray(PILImage.fromarray(clean_arr).resize((80, 60))).copy()
    wm[20:35, 10:70] = 255  # a white bar "watermark"
    ids["pair_wm"] = add_image(catalog, blobs, _encode(PILImage.fromarray(wm), "PNG"), "watermarked", 80, 60,
                               group=ids["pair_clean"])
    with catalog.write() as s:
        s.execute(update(Image).where(Image.id == ids["pair_clean"]).values(group_id=ids["pair_clean"]))
    ids["clean_only"] = add_image(catalog, blobs, _encode(PILImage.fromarray(_photo(40, 40, 4)), "PNG"), "clean", 40, 40)
    return ids


def _cleanings(catalog) -> dict[int, SimpleNamespace]:
    """Cleaning rows as plain objects (a read session's ORM objects expire when it ends)."""
    cols = [c.key for c in Cleaning.__table__.columns]
    with catalog.session() as s:
        return {c.image_id: SimpleNamespace(**{k: getattr(c, k) for k in cols}) for c in s.scalars(select(Cleaning))}


def _decode(blobs, key) -> PILImage.Image:
    im = PILImage.open(io.BytesIO(blobs.get(key)))
    im.load()
    return im


# --- tests ---------------------------------------------------------------------------------------


def test_clean_records_outputs_metrics_and_statuses(small_settings, catalog, blobs, remover, pool):
    res = clean_step.clean(catalog, blobs, small_settings)
    assert res["model"] == remover
    assert res["todo"] == 8 and res["cleaned"] == 6 and res["duplicates"] == 1 and res["failed"] == 1
    rows = _cleanings(catalog)
    assert set(rows) == {pool[k] for k in ("exif", "rgba", "grey", "palette", "sixteen", "tiny", "pair_wm")}

    for name in ("exif", "rgba", "grey", "palette", "sixteen", "tiny"):
        c = rows[pool[name]]
        assert c.source == "model" and c.model_version == remover
        out = _decode(blobs, c.output_key)
        assert out.format == "PNG"
        assert 0 <= c.changed_fraction <= 1 and c.runtime_s > 0
        assert {"mean_residual", "mask_area", "inference_s", "max_residual"} <= set(c.metrics)
        if name != "tiny":  # SSIM needs a 7x7 window
            assert c.psnr_vs_input is not None and 0 < c.ssim_vs_input <= 1
    # EXIF orientation applied: the stored JPEG is 80 wide, the cleaned image 60 wide
    assert _decode(blobs, rows[pool["exif"]].output_key).size == (60, 80)
    # RGBA keeps its alpha exactly; the others come back RGB at their size
    out = _decode(blobs, rows[pool["rgba"]].output_key)
    assert out.mode == "RGBA" and out.size == (70, 50)
    np.testing.assert_array_equal(np.asarray(out)[..., 3], np.tile(np.linspace(0, 255, 70, dtype=np.uint8), (50, 1)))
    for name, size in (("grey", (80, 60)), ("palette", (80, 60)), ("sixteen", (80, 60)), ("tiny", (9, 5))):
        out = _decode(blobs, rows[pool[name]].output_key)
        assert out.mode == "RGB" and out.size == size
    # the model really changed something (randomised head) and the metrics see it
    assert any(rows[pool[n]].metrics["mean_residual"] > 0 for n in ("grey", "palette"))

    # the real pair: the clean copy is the asset; the model was measured against it
    pair = rows[pool["pair_wm"]]
    with catalog.session() as s:
        clean_img = s.get(Image, pool["pair_clean"])
        assert pair.source == "duplicate" and pair.output_key == clean_img.blob_key
        vs = pair.metrics["vs_clean"]
        assert vs["input_psnr"] < 30 and vs["psnr"] > 0 and 0 < vs["ssim"] <= 1
        assert blobs.exists(pair.metrics["model_output"])
        # statuses: cleaned for the cleaned ones, the failure recorded, the rest untouched
        status = {n: s.get(Image, i).status for n, i in pool.items()}
        fails = [(f.stage, f.subject) for f in s.scalars(select(Failure))]
    assert all(status[n] == "cleaned" for n in ("exif", "rgba", "grey", "palette", "sixteen", "tiny", "pair_wm"))
    assert status["bad"] == "watermarked" and status["pair_clean"] == "clean" and status["clean_only"] == "clean"
    with catalog.session() as s:
        bad_sha = s.get(Image, pool["bad"]).sha256
    assert fails == [("clean", bad_sha)]

    # idempotent: a second run cleans nothing new; the bad image is retried (attempts counted)
    again = clean_step.clean(catalog, blobs, small_settings)
    assert again["todo"] == 1 and again["cleaned"] == 0 and again["failed"] == 1
    assert len(_cleanings(catalog)) == 7
    with catalog.session() as s:
        assert s.scalar(select(Failure.attempts)) == 2


def test_mask_rule_hardens_the_output_and_is_recorded(small_settings, catalog, blobs, remover, pool):
    from model.remover.masks import MaskRule

    res = clean_step.clean(catalog, blobs, small_settings, mask_rule=MaskRule(threshold=0.3, dilate=2, feather=3))
    assert res["harden_mask"] is True and (res["mask_threshold"], res["mask_dilate"], res["mask_feather"]) == (0.3, 2, 3)
    for name in ("exif", "grey", "tiny"):
        c = _cleanings(catalog)[pool[name]]
        assert (c.metrics["mask_threshold"], c.metrics["mask_dilate"], c.metrics["mask_feather"]) == (0.3, 2, 3)
        weights = np.asarray(_decode(blobs, c.metrics["weights_key"]))
        assert weights.shape == np.asarray(_decode(blobs, c.output_key)).shape[:2] and weights.max() == 255
    # without a rule the model's own output (this one is not hardened) is recorded as such
    with catalog.write() as s:
        s.execute(delete(Cleaning))
    clean_step.clean(catalog, blobs, small_settings)
    c = _cleanings(catalog)[pool["grey"]]
    assert c.metrics["harden_mask"] is False and "mask_threshold" not in c.metrics and "weights_key" not in c.metrics


def test_cli_refuses_bad_mask_options(small_settings, monkeypatch):
    monkeypatch.setenv("UNMARK_HOME", str(small_settings.home))
    for opt, value in (("--threshold", "1.5"), ("--dilate", "-1"), ("--feather", "-3")):
        r = CliRunner().invoke(app, ["clean", opt, value])
        assert r.exit_code == 2 and opt.strip("-") in r.output


def test_cli_mask_options_are_applied_and_recorded(small_settings, catalog, blobs, remover, pool, monkeypatch):
    for k, v in {"UNMARK_HOME": str(small_settings.home), "UNMARK_NUM_WORKERS": "0", "UNMARK_CLEAN_TILE": "48",
                 "UNMARK_CLEAN_OVERLAP": "16"}.items():
        monkeypatch.setenv(k, v)
    r = CliRunner().invoke(app, ["clean", "--device", "cpu", "--threshold", "0.4", "--dilate", "3", "--feather", "2",
                                 "--json"])
    assert r.exit_code == 0, r.output
    cleaned = _cleanings(catalog)
    assert cleaned and {(c.metrics["mask_threshold"], c.metrics["mask_dilate"], c.metrics["mask_feather"])
                        for c in cleaned.values() if c.source == "model"} == {(0.4, 3, 2)}


def test_jpeg_output_and_no_real_pair_compute(small_settings, catalog, blobs, remover, pool):
    small_settings.clean.output_format = "jpeg"
    small_settings.clean.clean_score_real_pairs = False
    clean_step.clean(catalog, blobs, small_settings)
    rows = _cleanings(catalog)
    assert _decode(blobs, rows[pool["grey"]].output_key).format == "JPEG"
    assert _decode(blobs, rows[pool["rgba"]].output_key).format == "PNG"  # alpha needs PNG
    pair = rows[pool["pair_wm"]]
    assert pair.source == "duplicate" and "vs_clean" not in pair.metrics and pair.runtime_s == 0


def test_worker_processes_decode_the_same(small_settings, catalog, blobs, remover, pool, tmp_path):
    clean_step.clean(catalog, blobs, small_settings)
    in_process = {i: c.output_key for i, c in _cleanings(catalog).items()}
    # a second model version, same weights, cleaned through two DataLoader worker processes
    register_remover(catalog, blobs, tiny_remover(tmp_path), version="remover-test-2")
    small_settings.clean.num_workers = 2
    res = clean_step.clean(catalog, blobs, small_settings)
    assert res["model"] == "remover-test-2" and res["cleaned"] == 6 and res["failed"] == 1
    with catalog.session() as s:
        workers = {c.image_id: c.output_key for c in s.scalars(select(Cleaning).where(Cleaning.model_version == "remover-test-2"))}
    assert workers == in_process  # deterministic network: byte-identical outputs


def test_older_version_and_missing_remover(small_settings, catalog, blobs, pool, tmp_path):
    with pytest.raises(registry.NoModel):
        clean_step.clean(catalog, blobs, small_settings)
    register_remover(catalog, blobs, tiny_remover(tmp_path), version="old", promote=False)
    with pytest.raises(registry.NoModel):
        clean_step.clean(catalog, blobs, small_settings)  # registered but not promoted
    res = clean_step.clean(catalog, blobs, small_settings, model_version="old", limit=2)
    assert res["model"] == "old" and res["cleaned"] == 2
    with pytest.raises(registry.NoModel):
        clean_step.clean(catalog, blobs, small_settings, model_version="nope")


def test_detector_scores_before_and_after(small_settings, catalog, blobs, remover, pool):
    from model.detector import WatermarkDetector, detector_to_bytes

    torch.manual_seed(0)
    det = WatermarkDetector(widths=(4, 8))
    _, key = blobs.put(detector_to_bytes(det))
    cal = dict(low=0.3, high=0.7, target_precision=0.98, clean_precision=1, clean_recall=1,
               watermarked_precision=1, watermarked_recall=1, uncertain_fraction=0)
    with catalog.write() as s:
        q.register_model(s, "det-1", "detector", key, config={"calibration": cal, "scales": [64]}, metrics={})
        q.promote_model(s, "det-1")
        # triage scored this one with the promoted detector: its score is reused, not recomputed
        s.execute(update(Image).where(Image.id == pool["grey"]).values(watermark_score=0.123, detector_version="det-1"))
    res = clean_step.clean(catalog, blobs, small_settings)
    assert res["detector"] == "det-1"
    rows = _cleanings(catalog)
    assert rows[pool["grey"]].score_before == pytest.approx(0.123)
    for n in ("exif", "rgba", "palette", "tiny"):
        c = rows[pool[n]]
        assert 0 < c.score_before < 1 and 0 < c.score_after < 1
        assert c.metrics["score_after"] == c.score_after


def test_cleaning_metrics_known_values():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    m = clean_step.cleaning_metrics(a, a.copy(), None, threshold=8)
    assert m["changed_fraction"] == 0 and m["psnr_vs_input"] == 100.0 and m["ssim_vs_input"] == pytest.approx(1.0)
    assert m["mean_residual"] == 0 and "mask_area" not in m
    b = a.copy()
    b[10:20, 10:30] = 255 - b[10:20, 10:30]  # a changed patch
    b[30, 40] = np.clip(b[30, 40].astype(int) + 3, 0, 255)  # below the threshold: not "changed"
    mask = np.zeros((40, 50), np.float32)
    mask[10:20, 10:30] = 0.9
    m = clean_step.cleaning_metrics(a, b, mask, threshold=8)
    patch = np.abs(b[10:20, 10:30].astype(int) - a[10:20, 10:30].astype(int)).max(axis=2) > 8
    assert m["changed_fraction"] == pytest.approx(patch.sum() / 2000)
    assert 40 < m["psnr_vs_input"] < 100  # only the sub-threshold pixel differs outside the patch
    assert m["ssim_vs_input"] > 0.99 and m["mask_area"] == pytest.approx(0.1)


def test_cli_clean_and_missing_remover(small_settings, catalog, blobs, pool, tmp_path, monkeypatch):
    monkeypatch.setenv("UNMARK_HOME", str(small_settings.home))
    monkeypatch.setenv("UNMARK_NUM_WORKERS", "0")
    monkeypatch.setenv("UNMARK_CLEAN_TILE", "48")
    runner = CliRunner()
    r = runner.invoke(app, ["clean", "--json"])
    assert r.exit_code == 2 and "no promoted remover" in r.output
    register_remover(catalog, blobs, tiny_remover(tmp_path))
    r = runner.invoke(app, ["clean", "--json", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["cleaned"] == 6 and out["failed"] == 1 and out["device"] == "cpu"
    listed = json.loads(runner.invoke(app, ["catalog", "images", "--status", "cleaned", "--format", "json"]).stdout)
    assert len(listed) == 7 and all(r["output"] for r in listed)
    if not torch.cuda.is_available():  # asking for a GPU that is not there is a clear error
        r = runner.invoke(app, ["clean", "--device", "cuda"])
        assert r.exit_code == 2 and "CUDA is not available" in r.output


def test_resume_after_kill_9(small_settings, catalog, blobs, tmp_path, unmark_env):
    """A run killed with SIGKILL mid-way leaves only whole chunks; the re-run finishes the rest and
    every image ends with exactly one cleaning whose blob exists."""
    register_remover(catalog, blobs, tiny_remover(tmp_path, base=8, depth=3))
    n = 30
    for i in range(n):
        add_image(catalog, blobs, _encode(PILImage.fromarray(_photo(192, 256, 10 + i)), "PNG"), "watermarked", 256, 192)
    # one torch thread: on a shared 2-core machine two spinning threads slow each other ~30x
    env = {**unmark_env, "UNMARK_NUM_WORKERS": "0", "UNMARK_CLEAN_CHUNK_IMAGES": "2", "UNMARK_CLEAN_TILE": "64",
           "UNMARK_CLEAN_OVERLAP": "16", "OMP_NUM_THREADS": "1"}
    cmd = [str(ROOT / ".venv/bin/unmark") if (ROOT / ".venv/bin/unmark").exists() else "unmark", "clean", "--json"]

    def count() -> int:
        with catalog.session() as s:
            return s.scalar(select(func.count()).select_from(Cleaning))

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    deadline = time.time() + 120
    while count() == 0 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = count()
    assert 0 < at_kill < n, f"kill did not land mid-run ({at_kill} of {n})"

    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["todo"] == n - at_kill and out["cleaned"] == n - at_kill
    rows = _cleanings(catalog)
    with catalog.session() as s:
        assert s.scalar(select(func.count()).select_from(Cleaning)) == n  # one row per image
        statuses = set(s.scalars(select(Image.status)))
    assert len(rows) == n and all(blobs.exists(c.output_key) for c in rows.values())
    assert statuses == {"cleaned"}
