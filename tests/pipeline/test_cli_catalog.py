"""`unmark init / import / catalog stats|images|export` return what was inserted, in each format."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from typer.testing import CliRunner

from flows.cli import app
from storage import queries as q
from storage.models import Cleaning, Image


@pytest.fixture
def photos(tmp_path) -> Path:
    """Three real photos (skimage) as JPEG/PNG, one duplicate file, one truncated JPEG, one text file."""
    from skimage import data

    d = tmp_path / "photos"
    d.mkdir()
    PILImage.fromarray(data.astronaut()).save(d / "astronaut.jpg", quality=90)
    PILImage.fromarray(data.chelsea()).save(d / "chelsea.png")
    PILImage.fromarray(data.coffee()).save(d / "coffee.jpg", quality=85)
    (d / "copy-of-chelsea.png").write_bytes((d / "chelsea.png").read_bytes())
    (d / "broken.jpg").write_bytes((d / "astronaut.jpg").read_bytes()[:3000])
    (d / "notes.txt").write_text("not an image")
    return d


def _invoke(env_home, *args):
    r = CliRunner().invoke(app, list(args), env={"UNMARK_HOME": str(env_home)}, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.output


def test_import_then_query_each_format(settings, photos):
    home = settings.home
    out = json.loads(_invoke(home, "import", str(photos), "--source", "fixture", "--json"))
    assert out == {"seen": 5, "added": 3, "known": 1, "failed": 1, "failures": {"corrupt": 1}}

    stats = json.loads(_invoke(home, "catalog", "stats", "--json"))
    assert stats["pages"] == 0 and stats["images"] == {"fetched": 3} and stats["failures"] == {"import": 1}

    rows = json.loads(_invoke(home, "catalog", "images", "--format", "json"))
    assert len(rows) == 3
    by_size = {(r["width"], r["height"]) for r in rows}
    assert by_size == {(512, 512), (451, 300), (600, 400)}
    for r in rows:
        assert {"sha256", "status", "width", "height", "url"} <= set(r) and r["status"] == "fetched"
        assert r["url"].startswith("file://") and r["url"].endswith((".jpg", ".png"))

    text = _invoke(home, "catalog", "images", "--format", "csv")
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert sorted(p["sha256"] for p in parsed) == sorted(r["sha256"] for r in rows)

    table = _invoke(home, "catalog", "images")
    assert "3 images" in table and rows[0]["sha256"][:12] in table

    # re-import is idempotent
    again = json.loads(_invoke(home, "import", str(photos), "--json"))
    assert again["added"] == 0 and again["known"] == 4


def test_status_and_psnr_filters_and_export(settings, photos, catalog, blobs, tmp_path):
    from pipeline.importer import import_paths

    import_paths([photos], catalog, blobs, settings)
    buf = io.BytesIO()
    PILImage.fromarray(np.full((40, 50, 3), 127, np.uint8)).save(buf, "PNG")
    _, out_key = blobs.put(buf.getvalue())
    with catalog.write() as s:
        imgs = s.query(Image).order_by(Image.id).all()
        imgs[0].status, imgs[0].label = "cleaned", "watermarked"
        imgs[1].status, imgs[1].label = "watermarked", "watermarked"
        s.add(Cleaning(image_id=imgs[0].id, model_version="r-1", output_key=out_key, psnr_vs_input=31.5,
                       ssim_vs_input=0.95))
        cleaned_sha = imgs[0].sha256
    home = settings.home
    rows = json.loads(_invoke(home, "catalog", "images", "--status", "cleaned", "--format", "json"))
    assert [r["sha256"] for r in rows] == [cleaned_sha]
    assert rows[0]["output"] == out_key and rows[0]["psnr_vs_input"] == 31.5
    assert json.loads(_invoke(home, "catalog", "images", "--min-psnr", "40", "--format", "json")) == []
    assert len(json.loads(_invoke(home, "catalog", "images", "--status", "watermarked", "--format", "json"))) == 1

    dest = tmp_path / "export"
    res = json.loads(_invoke(home, "catalog", "export", str(dest), "--json"))
    assert res["files"] == 1
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest[0]["sha256"] == cleaned_sha and manifest[0]["file"] == f"{cleaned_sha}.png"
    assert (dest / manifest[0]["file"]).read_bytes() == buf.getvalue()
    assert "psnr_vs_input" in (dest / "manifest.csv").read_text()
    with catalog.session() as s:
        assert q.catalog_stats(s)["cleanings"] == 1


def test_bad_format_and_missing_path_are_clear_errors(settings):
    r = CliRunner().invoke(app, ["catalog", "images", "--format", "xml"], env={"UNMARK_HOME": str(settings.home)})
    assert r.exit_code == 2 and "unknown format" in r.output
    r = CliRunner().invoke(app, ["import", str(settings.home / "nope")], env={"UNMARK_HOME": str(settings.home)})
    assert r.exit_code == 2 and "no such file" in r.output


def test_console_script_in_subprocess(settings, unmark_env):
    """The installed `unmark` entry point works end to end in a real process."""
    exe = Path(sys.executable).parent / "unmark"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "flows.cli"]
    r = subprocess.run(cmd + ["init", "--json"], env=unmark_env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["revision"] == "0001" or out["revision"]
    assert out["registered"]["remover"]["version"].startswith("remover-shipped-")  # the weights in model/weights/
    assert out["registered"]["detector"]["version"].startswith("detector-shipped-")
    r = subprocess.run(cmd + ["catalog", "stats", "--json"], env=unmark_env, capture_output=True, text=True, timeout=120)
    assert json.loads(r.stdout) == {"pages": 0, "images": {}, "failures": {}, "dedup": {}, "cleanings": 0,
                                    "models": {"remover": 1, "detector": 1}}
    r = subprocess.run(cmd + ["init", "--json"], env=unmark_env, capture_output=True, text=True, timeout=120)
    assert json.loads(r.stdout)["registered"] == {}  # both are promoted: nothing registered again
    assert os.path.exists(settings.home / "catalog.sqlite")


def test_catalog_models_lists_the_registered_versions_that_load_takes(settings):
    init = json.loads(_invoke(settings.home, "init", "--json"))["registered"]
    rows = json.loads(_invoke(settings.home, "catalog", "models", "--json"))
    assert [(r["version"], r["kind"], r["promoted"]) for r in rows] == [
        (init["remover"]["version"], "remover", True), (init["detector"]["version"], "detector", True)]
    only = json.loads(_invoke(settings.home, "catalog", "models", "--kind", "detector", "--json"))
    assert [r["kind"] for r in only] == ["detector"]
    assert init["remover"]["version"] in _invoke(settings.home, "catalog", "models")  # the table
    r = CliRunner().invoke(app, ["catalog", "models", "--kind", "cat"], env={"UNMARK_HOME": str(settings.home)})
    assert r.exit_code == 2 and "unknown kind 'cat'" in r.output
