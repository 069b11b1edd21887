"""The static report: written after a real clean run, relative links only, and every image loads
in headless Chromium opened straight from disk."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess

import pytest
from PIL import Image as PILImage
from sqlalchemy import update
from typer.testing import CliRunner

from flows.cli import app
from pipeline import clean as clean_step
from pipeline.report import report
from storage import queries as q
from storage.models import Image, TrainingRun

from .test_clean import _encode, _photo, add_image, register_remover, tiny_remover


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def cleaned_home(settings, catalog, blobs, tmp_path):
    settings.num_workers = 0
    settings.clean_tile = 48
    settings.clean_overlap = 16
    version = register_remover(catalog, blobs, tiny_remover(tmp_path))
    for i in range(4):
        add_image(catalog, blobs, _encode(PILImage.fromarray(_photo(60, 80, i)), "PNG"), "watermarked", 80, 60)
    clean_id = add_image(catalog, blobs, _encode(PILImage.fromarray(_photo(60, 80, 9)), "PNG"), "clean", 80, 60)
    add_image(catalog, blobs, _encode(PILImage.fromarray(_photo(60, 80, 9)), "JPEG", quality=60), "watermarked", 80, 60,
              group=clean_id)
    add_image(catalog, blobs, b"not an image at all", "watermarked", 10, 10)
    with catalog.write() as s:
        s.execute(update(Image).where(Image.id == clean_id).values(group_id=clean_id))
        history = [{"epoch": i + 1, "total": 1.0 / (i + 1), "l1": 0.5 / (i + 1), "val_psnr": 20 + i, "val_ssim": 0.8 + i / 100}
                   for i in range(3)]
        s.add(TrainingRun(model_version=version, params={}, history=history, status="completed"))
        # a hostile URL-ish failure message must come out escaped
        q.record_failure(s, "scrape", "http://x.invalid/<script>alert(1)</script>", "boom <b>")
    res = clean_step.clean(catalog, blobs, settings)
    assert res["cleaned"] == 4 and res["duplicates"] == 1 and res["failed"] == 1
    return settings


def test_report_files_and_relative_links(cleaned_home, catalog, blobs):
    path = report(catalog, blobs, cleaned_home)
    assert path == cleaned_home.reports_dir / "index.html"
    page = path.read_text()
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert len(srcs) >= 4 + 4 + 1  # before/after of each cleaning, curves, real pair
    for src in srcs:
        assert src.startswith("assets/") and (path.parent / src).is_file(), src
    assert any("curves-" in s for s in srcs)
    # the predicted mask of every model cleaning, stored by the clean step and shown tinted
    masks = [s for s in srcs if "/mask_" in s]
    assert len(masks) >= 4 and "predicted mask" in page
    with catalog.session() as s:
        from storage.models import Cleaning

        for c in s.query(Cleaning).all():
            mask = PILImage.open(io.BytesIO(blobs.get(c.metrics["mask_key"])))
            im = s.get(Image, c.image_id)
            assert mask.mode == "L" and mask.size == (im.width, im.height)
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Best cleanings" in page and "Worst cleanings" in page and "Real pairs (1)" in page
    assert "cleaned" in page and "failures per stage" in page
    # re-running rewrites the page and reuses the thumbnails
    before = sorted(p.name for p in (path.parent / "assets").iterdir())
    report(catalog, blobs, cleaned_home)
    assert sorted(p.name for p in (path.parent / "assets").iterdir()) == before


def test_cli_report(cleaned_home, monkeypatch):
    monkeypatch.setenv("UNMARK_HOME", str(cleaned_home.home))
    r = CliRunner().invoke(app, ["report", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["report"].endswith("reports/index.html")


def test_report_without_anything(settings, catalog, blobs):
    page = report(catalog, blobs, settings).read_text()
    assert "none promoted" in page and "no cleanings yet" in page


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (./dev setup installs it)")
def test_images_load_in_headless_chromium(cleaned_home, catalog, blobs, tmp_path):
    path = report(catalog, blobs, cleaned_home)
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-default-apps",
           "--no-proxy-server", f"--user-data-dir={tmp_path / 'chromium-profile'}",
           "--virtual-time-budget=10000", "--dump-dom", path.as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    dom = r.stdout
    n_imgs = len(re.findall(r"<img ", dom))
    widths = [int(w) for w in re.findall(r'data-natural-width="(\d+)"', dom)]
    assert n_imgs >= 9 and len(widths) == n_imgs, dom[:2000]
    assert all(w > 0 for w in widths), widths
    assert f"{n_imgs} of {n_imgs} images loaded" in dom
