"""``unmark clean-files``: a folder cleaned in one command on a real catalog. Outputs keep the
input's name, format, size, orientation and ICC profile; masks, ``--all``, ``--mask-only``, the
mask controls, the manifest, reruns that clean nothing again, triage with a promoted detector,
the shipped remover registered on first use, and hostile files that become rows, not crashes."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms, ImageOps
from sqlalchemy import func, select
from typer.testing import CliRunner

from flows.cli import app
from model.detector import Calibration, WatermarkDetector, detector_to_bytes, score_images
from model.remover.network import UNet, save_checkpoint
from pipeline import registry
from pipeline.images import sniff_format
from pipeline.registry import WEIGHTS_DIR
from storage.models import Cleaning

ORIENTATION = 0x0112
ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def env(settings, monkeypatch, tmp_path):
    """A release that ships the remover and no detector (so files are ``untriaged`` unless a test
    promotes one); ``shipped_detector`` puts the shipped detector back."""
    ships = tmp_path / "ships-remover-only"
    ships.mkdir()
    (ships / "remover.pt").symlink_to(WEIGHTS_DIR / "remover.pt")
    settings.models.shipped_weights = ships
    for k, v in {"UNMARK_HOME": str(settings.home), "UNMARK_NUM_WORKERS": "0", "UNMARK_CLEAN_TILE": "48",
                 "UNMARK_CLEAN_OVERLAP": "16", "UNMARK_CLEAN_BACKEND": "eager",
                 "UNMARK_SHIPPED_WEIGHTS": str(ships)}.items():
        monkeypatch.setenv(k, v)
    return settings


@pytest.fixture
def shipped_detector(env, monkeypatch):
    env.models.shipped_weights = WEIGHTS_DIR
    monkeypatch.setenv("UNMARK_SHIPPED_WEIGHTS", str(WEIGHTS_DIR))
    return env


def masking_remover(path: Path) -> bytes:
    """A tiny U-Net whose mask head fires on about a fifth of a test photo and whose head changes
    the pixels it fires on (the normally zero-initialised heads are randomised, then the mask
    logit is shifted so that its 80th percentile on one photo is 0)."""
    torch.manual_seed(0)
    net = UNet(base=4, depth=2, mask_head=True).eval()
    with torch.no_grad():
        net.head.weight.normal_(std=1.0)
        net.mask_out.weight.normal_(std=100)
        x = torch.from_numpy(photo(seed=0)).permute(2, 0, 1)[None].float() / 255
        net.mask_out.bias -= net(x)["mask_logits"].quantile(0.8)
    return save_checkpoint(net, path / "masking-remover.pt").read_bytes()


@pytest.fixture
def remover(env, catalog, blobs, tmp_path):
    """A tiny remover whose output is hardened by its mask (as the shipped one's is)."""
    data = masking_remover(tmp_path)
    with catalog.write() as s:
        registry.register(s, blobs, "remover-tiny", "remover", data, config={"harden_mask": True}, metrics={},
                          promote=True)
    return "remover-tiny"


def photo(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    from skimage import data

    base = np.asarray(Image.fromarray(data.astronaut()).resize((w, h)))
    noise = np.random.default_rng(seed).integers(-20, 20, base.shape)
    return np.clip(base.astype(int) + noise, 0, 255).astype(np.uint8)


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def rotated_jpeg(seed: int = 1) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # stored 64x48, shown 48x64
    return encode(Image.fromarray(photo(seed=seed)), "JPEG", quality=90, exif=exif, icc_profile=ICC)


def run(*args: str) -> tuple[int, dict, str]:
    r = CliRunner().invoke(app, ["clean-files", *args, "--json"])
    try:
        out = json.loads(r.stdout)
    except json.JSONDecodeError:
        out = {}
    return r.exit_code, out, " ".join(r.output.split())  # rich wraps long lines


def manifest(out: Path) -> dict[str, dict]:
    return {Path(r["input"]).name: r for r in json.loads((out / "manifest.json").read_text())}


def images(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file() and not p.name.startswith("manifest")}


def opened(path: Path) -> Image.Image:
    im = Image.open(path)
    im.load()
    return im


def assert_like_input(src: Path, dst: Path) -> None:
    """Same format by content, stored size, EXIF orientation, displayed size and ICC profile."""
    a, b = opened(src), opened(dst)
    assert sniff_format(dst.read_bytes()[:16]) == sniff_format(src.read_bytes()[:16])
    assert b.size == a.size and b.mode == a.mode
    assert b.getexif().get(ORIENTATION, 1) == a.getexif().get(ORIENTATION, 1)
    assert ImageOps.exif_transpose(b).size == ImageOps.exif_transpose(a).size
    assert b.info.get("icc_profile") == a.info.get("icc_profile")


@pytest.fixture
def folder(tmp_path) -> Path:
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    (d / "a.png").write_bytes(encode(Image.fromarray(photo(seed=0)), "PNG", icc_profile=ICC))
    (d / "sub" / "b.jpg").write_bytes(rotated_jpeg())
    rgba = np.dstack([photo(40, 56, 2), np.tile(np.linspace(0, 255, 56, dtype=np.uint8), (40, 1))])
    (d / "c.png").write_bytes(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    return d


def test_untriaged_folder_is_cleaned_with_masks_and_manifest(remover, folder, tmp_path, catalog):
    out = tmp_path / "out"
    code, res, output = run(str(folder), "--out", str(out), "--masks")
    assert code == 0, output
    assert "no detector is promoted" in output and res["triage"] == "untriaged" and res["model"] == remover
    assert res["files"] == 3 and res["cleaned"] == 3 and res["failed"] == 0 and res["cached"] == 0
    for rel in ("a.png", "sub/b.jpg", "c.png"):
        assert_like_input(folder / rel, out / rel)
        mask = opened((out / rel).with_name(Path(rel).stem + ".mask.png"))
        assert mask.mode == "L" and mask.size == opened(folder / rel).size
        assert mask.getexif().get(ORIENTATION, 1) == opened(folder / rel).getexif().get(ORIENTATION, 1)
    # PNG is lossless: outside the mask every pixel is the input's; alpha is the input's everywhere
    for name in ("a.png", "c.png"):
        src, dst = np.asarray(opened(folder / name)), np.asarray(opened(out / name))
        keep = np.asarray(opened(out / (Path(name).stem + ".mask.png"))) == 0
        assert keep.any() and np.array_equal(src[keep], dst[keep])
        assert (src != dst).any()  # and the cleaning did change something
    assert np.array_equal(np.asarray(opened(folder / "c.png"))[..., 3], np.asarray(opened(out / "c.png"))[..., 3])
    rows = manifest(out)
    assert {r["label"] for r in rows.values()} == {"untriaged"} and {r["action"] for r in rows.values()} == {"cleaned"}
    for r in rows.values():
        assert 0 < r["mask_area"] < 1 and r["metrics"]["psnr_vs_input"] > 0 and r["model"] == remover
        assert r["metrics"]["mask_threshold"] == 0.5 and r["metrics"]["harden_mask"] is True
    lines = (out / "manifest.csv").read_text().splitlines()
    assert len(lines) == 4 and lines[0].startswith("input,output,mask,sha256")
    with catalog.session() as s:
        assert s.scalar(select(func.count()).select_from(Cleaning)) == 3


def test_rerun_cleans_nothing_again_unless_the_mask_settings_change(remover, folder, tmp_path, catalog):
    out = tmp_path / "out"
    assert run(str(folder), "--out", str(out))[0] == 0
    first = images(out)
    with catalog.session() as s:
        ids = set(s.scalars(select(Cleaning.id)))
    code, res, _ = run(str(folder), "--out", str(out))
    assert code == 0 and res["cleaned"] == 3 and res["cached"] == 3
    assert images(out) == first and all(r["cached"] for r in manifest(out).values())
    with catalog.session() as s:
        assert set(s.scalars(select(Cleaning.id))) == ids  # no new cleaning
    # an output folder inside the input folder is never taken for input
    inner = folder / "cleaned"
    code, res, _ = run(str(folder), "--out", str(inner))
    assert code == 0 and res["files"] == 3 and res["cached"] == 3
    assert run(str(folder), "--out", str(inner))[1]["files"] == 3
    shutil.rmtree(inner)
    # new mask settings: cleaned again, recorded, the old cleaning replaced
    code, res, _ = run(str(folder), "--out", str(out), "--dilate", "3", "--feather", "2", "--threshold", "0.6")
    assert code == 0 and res["cached"] == 0 and res["cleaned"] == 3
    m = manifest(out)["a.png"]["metrics"]
    assert (m["mask_threshold"], m["mask_dilate"], m["mask_feather"]) == (0.6, 3, 2)
    with catalog.session() as s:
        rows = list(s.scalars(select(Cleaning)))
        assert len(rows) == 3 and all(c.metrics["mask_dilate"] == 3 for c in rows)


def test_mask_only_writes_masks_and_leaves_images_alone(remover, folder, tmp_path):
    out = tmp_path / "out"
    code, res, _ = run(str(folder), "--out", str(out), "--mask-only", "--dilate", "2")
    assert code == 0 and res["masked"] == 3 and res["cleaned"] == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["a.mask.png", "c.mask.png", "manifest.csv", "manifest.json", "sub/b.mask.png"]
    assert all(r["output"] is None and r["mask"] for r in manifest(out).values())


def test_feather_makes_grey_edges_in_the_mask(remover, folder, tmp_path):
    hard, soft = tmp_path / "hard", tmp_path / "soft"
    assert run(str(folder / "a.png"), "--out", str(hard), "--mask-only", "--dilate", "0")[0] == 0
    assert run(str(folder / "a.png"), "--out", str(soft), "--mask-only", "--dilate", "0", "--feather", "3")[0] == 0
    h, f = np.asarray(opened(hard / "a.mask.png")), np.asarray(opened(soft / "a.mask.png"))
    assert set(np.unique(h)) <= {0, 255} and ((f > 0) & (f < 255)).any()
    assert np.array_equal(f == 255, h == 255) and (f > 0).sum() > (h > 0).sum()


def _promote_detector(catalog, blobs, clean_img: np.ndarray, marked_img: np.ndarray) -> str:
    """An untrained detector calibrated so that one image falls below its threshold, one above."""
    torch.manual_seed(0)
    det = WatermarkDetector(widths=(8, 8, 8, 8)).eval()
    with torch.no_grad():
        det.head.weight.normal_(std=100)  # so that two photos score apart
    a, b = score_images(det, [clean_img, marked_img], scales=(768,))
    assert a != b
    low, high = sorted((float(a), float(b)))
    cut = (low + high) / 2
    cal = Calibration(cut, cut, 0.98, 1, 1, 1, 1, 0)
    if a > b:  # the test names the images by what the detector says
        clean_img, marked_img = marked_img, clean_img
    with catalog.write() as s:
        registry.register(s, blobs, "detector-test", "detector", detector_to_bytes(det), promote=True,
                          config={"widths": [8, 8, 8, 8], "scales": [768], "calibration": cal.__dict__}, metrics={})
    return "detector-test"


def _two_photos_one_called_clean(catalog, blobs, tmp_path) -> Path:
    """A folder of two photos and a promoted detector that calls one clean and one watermarked."""
    imgs = [photo(seed=5), 255 - photo(seed=6)]
    d = tmp_path / "in"
    d.mkdir()
    for i, im in enumerate(imgs):
        (d / f"p{i}.png").write_bytes(encode(Image.fromarray(im), "PNG"))
    _promote_detector(catalog, blobs, *imgs)
    return d


def test_a_promoted_detector_decides_and_all_copies_clean_files(remover, catalog, blobs, tmp_path):
    d = _two_photos_one_called_clean(catalog, blobs, tmp_path)
    out = tmp_path / "out"
    code, res, output = run(str(d), "--out", str(out))
    assert code == 0 and res["triage"] == "detector" and "no detector" not in output
    rows = manifest(out)
    labels = {r["label"] for r in rows.values()}
    assert labels == {"clean", "watermarked"} and all(r["score"] is not None for r in rows.values())
    for name, r in rows.items():
        if r["label"] == "clean":
            assert r["action"] == "skipped" and r["reason"] == "triage: clean" and not (out / name).exists()
        else:
            assert r["action"] == "cleaned" and (out / name).exists()
    code, res, _ = run(str(d), "--out", str(out), "--all")
    assert code == 0 and res["copied"] == 1 and res["cleaned"] == 1
    name = next(n for n, r in manifest(out).items() if r["label"] == "clean")
    assert (out / name).read_bytes() == (d / name).read_bytes()


def test_shipped_remover_is_registered_when_the_catalog_has_none(env, tmp_path, catalog):
    d = tmp_path / "in"
    d.mkdir()
    (d / "x.png").write_bytes(encode(Image.fromarray(photo(seed=9)), "PNG"))
    code, res, output = run(str(d), "--out", str(tmp_path / "out"))
    assert code == 0, output
    assert "registered the shipped remover" in output and res["model"].startswith("remover-shipped-")
    assert registry.find(catalog, "remover").version == res["model"] and res["cleaned"] == 1


def test_a_fresh_home_registers_the_shipped_detector_and_triages(shipped_detector, folder, tmp_path, catalog):
    out = tmp_path / "out"
    code, res, output = run(str(folder), "--out", str(out), "--all")
    assert code == 0, output
    assert res["triage"] == "detector" and res["detector"].startswith("detector-shipped-")
    assert "registered the shipped detector" in output and registry.find(catalog, "detector").version == res["detector"]
    rows = manifest(out)
    assert len(rows) == 3
    for r in rows.values():
        assert r["label"] in ("clean", "watermarked", "uncertain") and 0.0 <= r["score"] <= 1.0
        if r["label"] == "watermarked":
            assert r["action"] == "cleaned"
        else:  # left alone, copied through byte for byte with --all
            assert r["action"] == "copied" and r["reason"] == f"triage: {r['label']}"
            assert Path(r["output"]).read_bytes() == Path(r["input"]).read_bytes()


def test_no_triage_cleans_every_file_whatever_the_detector_says(remover, catalog, blobs, tmp_path):
    d = _two_photos_one_called_clean(catalog, blobs, tmp_path)
    out = tmp_path / "out"
    code, res, output = run(str(d), "--out", str(out), "--no-triage")
    assert code == 0, output
    assert res["triage"] == "off" and res["detector"] is None and res["cleaned"] == 2 and "triage off" in output
    assert {r["label"] for r in manifest(out).values()} == {"untriaged"}


def test_bad_arguments_are_clear_errors_that_touch_nothing(remover, folder, tmp_path):
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    code, _, output = run(str(folder), "--out", str(folder))
    assert code == 2 and "would overwrite the input" in output
    code, _, output = run(str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert code == 2 and "no such file or folder" in output
    code, _, output = run(str(folder), "--out", str(folder / "a.png"))
    assert code == 2 and "is a file" in output
    code, _, output = run(str(folder), "--out", str(tmp_path / "o"), "--threshold", "1.5")
    assert code == 2 and "threshold" in output
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "o").exists()
    code, _, output = run(str(folder), "--out", str(tmp_path / "o"), "--model", "remover-nope")
    assert code == 2 and "no remover 'remover-nope'" in output


def test_a_file_that_cannot_be_written_is_a_failed_row_and_the_rest_are_written(remover, folder, tmp_path, catalog):
    from storage.models import Failure

    out = tmp_path / "out"
    (out / "a.png").mkdir(parents=True)  # a folder where the output should go
    code, res, output = run(str(folder), "--out", str(out))
    assert code == 1 and res["failed"] == 1 and res["cleaned"] == 2
    assert res["failures"][0]["input"] == str(folder / "a.png") and "write" in res["failures"][0]["reason"]
    assert (out / "sub" / "b.jpg").is_file() and (out / "c.png").is_file()
    with catalog.session() as s:
        assert s.scalar(select(Failure.stage).where(Failure.subject == (folder / "a.png").resolve().as_uri())) == "clean-files"


def test_two_copies_of_one_photo_are_one_image_cleaned_once_and_both_written(remover, tmp_path, catalog):
    d = tmp_path / "in"
    (d / "again").mkdir(parents=True)
    data = encode(Image.fromarray(photo(seed=4)), "PNG")
    (d / "x.png").write_bytes(data)
    (d / "again" / "x-copy.png").write_bytes(data)
    code, res, output = run(str(d), "--out", str(tmp_path / "out"), "--no-triage")
    assert code == 0 and res["cleaned"] == 2, output
    assert (tmp_path / "out" / "x.png").read_bytes() == (tmp_path / "out" / "again" / "x-copy.png").read_bytes()
    with catalog.session() as s:
        from storage.models import Image as ImageRow

        assert s.scalar(select(func.count()).select_from(ImageRow)) == 1
        assert s.scalar(select(func.count()).select_from(Cleaning)) == 1  # cleaned once, written twice


def test_without_json_the_failures_are_listed_on_stderr(remover, folder, tmp_path):
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    r = CliRunner().invoke(app, ["clean-files", str(folder), "--out", str(tmp_path / "out")])
    assert r.exit_code == 1
    said = "".join(r.output.split())  # rich wraps long lines anywhere
    assert f"failed:{folder / 'broken.png'}:corrupt:" in said
    assert (tmp_path / "out" / "a.png").is_file()  # the others are written


def test_progress_reaches_every_stage_to_its_end(remover, folder, tmp_path, catalog, blobs, env):
    from pipeline.clean_files import Options, clean_files

    env.clean.num_workers, env.clean.clean_tile, env.clean.clean_overlap, env.clean.clean_backend = 0, 48, 16, "eager"
    seen: dict[str, tuple[int, int]] = {}
    (folder / "zz-empty.png").write_bytes(b"")  # fails at import, and is the last file written
    res = clean_files([folder], catalog, blobs, env, Options(tmp_path / "out"),
                      progress=lambda stage, done, total: seen.__setitem__(stage, (done, total)))
    assert res["cleaned"] == 3 and res["failed"] == 1
    assert seen == {"import": (4, 4), "clean": (3, 3), "write": (4, 4)}


def test_near_duplicates_are_grouped_and_a_real_pair_is_measured_against_its_clean_copy(remover, catalog, blobs,
                                                                                        tmp_path):
    """Dedup runs on the imported files: a photo and a marked copy of it share a group; the copy
    the detector calls watermarked is cleaned by the model (its output, not the clean copy, is
    written) and also measured against the clean copy. ``--no-dedup`` leaves groups out."""
    x = photo(seed=7)
    y = x.copy()
    y[30:38, 40:58] = 255  # a small opaque mark
    d = tmp_path / "in"
    d.mkdir()
    for name, im in (("x.png", x), ("y.png", y), ("other.png", 255 - photo(seed=8))):
        (d / name).write_bytes(encode(Image.fromarray(im), "PNG"))
    _promote_detector(catalog, blobs, x, y)
    out = tmp_path / "out"
    code, res, _ = run(str(d), "--out", str(out), "--all")
    assert code == 0 and any("near-duplicate" in n for n in res["notes"])
    rows = manifest(out)
    pair = [rows["x.png"], rows["y.png"]]
    assert {r["label"] for r in pair} == {"clean", "watermarked"}
    assert pair[0]["group"] == pair[1]["group"] is not None and [r["duplicates"] for r in pair] == [1, 1]
    assert rows["other.png"]["group"] is None and rows["other.png"]["duplicates"] == 0
    marked, copy = sorted(pair, key=lambda r: r["label"] != "watermarked")
    assert marked["action"] == "cleaned" and marked["metrics"]["clean_copy"] == copy["sha256"]
    vs = marked["metrics"]["vs_clean"]
    assert vs["input_psnr"] > 10 and vs["psnr"] > 10  # the input and the model's output, against the copy
    assert "vs_clean" not in copy["metrics"] and copy["action"] == "copied"
    name = Path(marked["input"]).name
    assert (out / name).read_bytes() != (d / Path(copy["input"]).name).read_bytes()  # the model's own output
    code, res, _ = run(str(d), "--out", str(tmp_path / "out2"), "--no-dedup", "--dilate", "3")
    assert code == 0 and all(r["duplicates"] is None and r["group"] is None for r in manifest(tmp_path / "out2").values())
    assert manifest(tmp_path / "out2")[name]["action"] == "cleaned"  # re-masked: the pair's row is replaced
