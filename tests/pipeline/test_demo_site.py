"""The demo's sample site: what it publishes, how the pages embed images, the unseen watermark
styles, the broken files, serving on loopback, and the demo's environment."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import requests
from PIL import Image

from pipeline.demo import build_site, demo_environment, draw_logo, serve_site, stamp_logo, tile_text
from pipeline.images import BadImage, inspect_image

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return build_site(tmp_path_factory.mktemp("site"), max_side=128, photos=PHOTOS)


def test_site_publishes_clean_watermarked_duplicates_and_broken_files(site):
    assert site.as_dict() == {"pages": 9, "clean": 12, "watermarked": 6, "paired": 2, "near_duplicates": 3,
                              "broken": 5}
    for rel in site.image_files:
        info = inspect_image((site.root / rel).read_bytes())
        assert max(info.width, info.height) <= 128 and min(info.width, info.height) >= 64
    reasons = set()
    for rel in site.broken:
        with pytest.raises(BadImage) as exc:
            inspect_image((site.root / rel).read_bytes(), min_side=64)
        reasons.add(exc.value.reason)
    assert reasons == {"corrupt", "not-image", "too-small"}
    assert not (site.root / site.missing[0]).exists()
    # Every paired watermarked image has its clean original on the site too.
    for rel in site.paired:
        assert rel.replace("-marked", "") in site.clean


def test_every_embedding_style_is_on_some_page(site):
    html = "\n".join((site.root / p).read_text() for p in site.pages)
    for pattern in [r"<img src='img/", r"srcset='img/tiny\.png 16w, img/\S+ 640w'", r"data-src='img/",
                    r"<picture><source srcset='img/", r"property='og:image'", r"name='twitter:image'",
                    r"rel='image_src'", r"background-image: url\('img/", r"<a href='img/\S+\.jpg'>",
                    r"<base href='\.\./'>"]:
        assert re.search(pattern, html), pattern
    linked = set(re.findall(r"img/[\w.-]+\.(?:jpg|png|webp)", html))
    assert set(site.image_files) <= linked  # everything published is reachable from a page
    assert set(site.broken + site.missing) <= linked


def test_watermarks_change_the_photo_only_where_drawn():
    rng = np.random.default_rng(1)
    base = Image.fromarray(np.full((200, 300, 3), 90, np.uint8))
    logo = draw_logo(60, rng)
    assert logo.mode == "RGBA" and logo.getpixel((0, 0))[3] == 0 and np.asarray(logo.getchannel("A")).max() == 255
    marked = np.asarray(stamp_logo(base, logo, 0.7, corner="br")).astype(int)
    diff = np.abs(marked - 90).sum(axis=2) > 0
    assert diff[120:, 200:].any() and not diff[:100, :150].any()  # bottom-right only
    tiled = np.abs(np.asarray(tile_text(base, "© UNMARK DEMO", 0.5)).astype(int) - 90).sum(axis=2) > 0
    # Tiled text covers the whole image: every quarter has some of it.
    assert all(tiled[r : r + 100, c : c + 150].mean() > 0.02 for r in (0, 100) for c in (0, 150))


def test_build_is_deterministic(tmp_path, site):
    again = build_site(tmp_path / "again", max_side=128, photos=PHOTOS)
    for rel in site.image_files + site.pages:
        assert (again.root / rel).read_bytes() == (site.root / rel).read_bytes(), rel


def test_serve_site_on_loopback_then_stops(site):
    with serve_site(site.root) as url:
        assert url.startswith("http://127.0.0.1:")
        page = requests.get(url + "index.html", timeout=5)
        assert page.status_code == 200 and "Unmark demo site" in page.text
        img = requests.get(url + site.clean[0], timeout=5)
        assert img.content == (site.root / site.clean[0]).read_bytes()
        assert requests.get(url + site.missing[0], timeout=5).status_code == 404
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "index.html", timeout=2)


def test_demo_environment_sets_defaults_without_overriding_the_user(tmp_path, monkeypatch):
    for key in ("PREFECT_HOME", "UNMARK_DETECTOR_MAX_MINUTES", "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("UNMARK_DETECTOR_MAX_MINUTES", "4")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:1/api")
    applied = demo_environment(tmp_path / "home")
    assert os.environ["PREFECT_HOME"] == str((tmp_path / "home" / "prefect").resolve())
    assert os.environ["UNMARK_DETECTOR_MAX_MINUTES"] == "4"  # the user's value stays
    assert "UNMARK_DETECTOR_MAX_MINUTES" not in applied
    assert os.environ["DO_NOT_TRACK"] == "1" and os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert "PREFECT_API_URL" not in os.environ  # embedded mode


def test_triage_agreement_on_a_catalog(tmp_path, catalog, blobs, settings):
    """``triage_agreement`` counts triage's labels against the truth (uncertain is never right);
    images off the site are ignored."""
    from sqlalchemy import update

    from pipeline.demo import triage_agreement
    from pipeline.importer import import_paths
    from storage import queries as q
    from storage.models import Image as ImageRow

    site = tmp_path / "site"
    site.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c", "d", "e"):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), np.uint8)).save(site / f"{name}.png")
    import_paths([site], catalog, blobs, settings)
    base = site.resolve().as_uri() + "/"
    truth = {"a.png": "clean", "b.png": "clean", "c.png": "watermarked", "d.png": "watermarked",
             "e.png": "watermarked", "elsewhere.png": "clean"}
    triaged = {"a.png": "clean", "b.png": "uncertain", "c.png": "watermarked", "d.png": "clean", "e.png": "uncertain"}
    with catalog.write() as s:
        for row in q.list_images(s):
            label = triaged[row["url"].removeprefix(base)]
            s.execute(update(ImageRow).where(ImageRow.id == row["id"]).values(label=label, status=label))
    assert triage_agreement(catalog, truth, base) == {
        "images": 5, "right": 2, "watermarked": 3, "watermarked_found": 1, "watermarked_called_clean": 1}


def test_site_path_matches_the_site_on_any_port():
    from pipeline.demo import site_path

    base = "http://127.0.0.1:4000/"
    assert site_path("http://127.0.0.1:4000/img/a.jpg", base) == "img/a.jpg"
    assert site_path("http://127.0.0.1:5123/img/a.jpg", base) == "img/a.jpg"  # an earlier run's port
    assert site_path("http://127.0.0.2:4000/img/a.jpg", base) is None
    assert site_path("https://127.0.0.1:4000/img/a.jpg", base) is None
    assert site_path("file:///tmp/img/a.jpg", base) is None and site_path(None, base) is None
    assert site_path("http://127.0.0.1:9/site/x.png", "http://127.0.0.1:8/site/") == "x.png"
    assert site_path("http://127.0.0.1:9/other/x.png", "http://127.0.0.1:8/site/") is None
