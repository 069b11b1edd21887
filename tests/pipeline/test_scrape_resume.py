"""Kill -9 halfway through ``unmark scrape``, run it again, and end with exactly the rows of an
uninterrupted run: nothing lost, nothing doubled."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

from sqlalchemy import select

from pipeline.config import load_settings
from pipeline.scrape.crawl import scrape
from storage import BlobStore, open_catalog
from storage.models import Failure, Image, Page, Sighting
from tests.pipeline.scrape_site import Site, png_bytes

N_PAGES = 30


def build(site: Site) -> None:
    site.static("/robots.txt", b"User-agent: *\nAllow: /\n", "text/plain")
    site.page("/", "".join(f"<a href='/p{i}.html'>{i}</a>" for i in range(N_PAGES)) + "<img src='/img/shared.png'>")
    for i in range(N_PAGES):
        imgs = [f"/img/{i}-{k}.png" for k in range(4)] + ["/img/shared.png", f"/img/copy-{i % 5}.png"]
        if i % 7 == 0:
            imgs.append(f"/img/tiny-{i}.png")
            site.static(f"/img/tiny-{i}.png", png_bytes(5000 + i, 8, 8), "image/png")
        site.page(f"/p{i}.html", "".join(f"<img src='{u}' alt='page {i}'>" for u in imgs)
                  + f"<a href='/p{(i + 1) % N_PAGES}.html'>next</a>")
        for k in range(4):
            site.static(f"/img/{i}-{k}.png", png_bytes(i * 10 + k), "image/png")
    site.static("/img/shared.png", png_bytes(9999), "image/png")
    for j in range(5):
        site.static(f"/img/copy-{j}.png", png_bytes(0), "image/png")  # same bytes as /img/0-0.png


def snapshot(settings) -> dict:
    cat = open_catalog(settings.storage)
    try:
        with cat.session() as s:
            images = s.execute(select(Image.sha256, Image.blob_key, Image.bytes)).all()
            sights = s.execute(select(Page.url, Sighting.image_url, Image.sha256, Sighting.found_by, Sighting.alt)
                               .join(Page, Page.id == Sighting.page_id)
                               .join(Image, Image.id == Sighting.image_id)).all()
            # a page finished before the kill answers 304 on the re-run: same page, same rows
            pages = [(url, status in (200, 304), complete) for url, status, complete in
                     s.execute(select(Page.url, Page.status, Page.etag.is_not(None))).all()]
            fails = s.execute(select(Failure.stage, Failure.subject, Failure.error_class)).all()
    finally:
        cat.dispose()
    blob_keys = set(BlobStore.from_settings(settings.storage).keys())
    return {
        "n_images": len(images), "images": {(sha, n) for sha, _, n in images},
        "n_sightings": len(sights), "sightings": {tuple(r) for r in sights},
        "n_pages": len(pages), "pages": {tuple(r) for r in pages},
        "failures": {tuple(r) for r in fails},
        "blobs": blob_keys, "image_blobs": {k for _, k, _ in images},
    }


def count_images(db: str) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute("SELECT count(*) FROM images").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def kill_when(cmd: list[str], env: dict, db: str, images: int, timeout_s: float, kill) -> subprocess.Popen:
    """Start ``cmd`` in its own session and ``kill(pid, SIGKILL)`` it once the catalog holds
    ``images`` images (``os.killpg`` takes its whole process group)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while count_images(db) < images and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert proc.poll() is None, "the scrape finished before it could be killed"
        kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    return proc


def kill_then_rerun(cmd: list[str], env: dict, db: str, images: int, timeout_s: float,
                    kill) -> tuple[int, subprocess.CompletedProcess]:
    """``kill_when``, then ``cmd`` again to its end: (images when killed, the finished run)."""
    proc = kill_when(cmd, env, db, images, timeout_s, kill)
    assert proc.returncode == -signal.SIGKILL
    killed_at = count_images(db)
    assert 0 < killed_at
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return killed_at, done


def test_kill_9_halfway_then_rerun_gives_exact_counts(tmp_path, unmark_env, settings):
    site = Site(latency_s=0.03)
    try:
        build(site)
        env = dict(unmark_env, UNMARK_PER_HOST_CONCURRENCY="2", UNMARK_WRITE_BATCH_SIZE="8",
                   UNMARK_GLOBAL_CONCURRENCY="4")
        cmd = [sys.executable, "-m", "flows.cli", "scrape", site.url("/"), "--allow-private-hosts", "--json"]
        db = str(settings.home / "catalog.sqlite")

        killed_at, _ = kill_then_rerun(cmd, env, db, 25, 60, os.kill)
        resumed = snapshot(settings)

        reference_settings = load_settings(home=tmp_path / "reference")
        cat = open_catalog(reference_settings.storage)
        try:
            scrape([site.url("/")], cat, BlobStore.from_settings(reference_settings.storage), reference_settings,
                   allow_private_hosts=True)
        finally:
            cat.dispose()
        want = snapshot(reference_settings)
    finally:
        site.close()

    unique = N_PAGES * 4 + 1  # copies fold onto /img/0-0.png
    assert want["n_images"] == unique and killed_at < unique
    assert want["n_sightings"] == N_PAGES * 6 + 1
    for key in ("n_images", "images", "n_sightings", "sightings", "n_pages", "pages", "failures"):
        assert resumed[key] == want[key], key
    assert all(complete for _, _, complete in resumed["pages"])  # every page finished: validators set
    assert resumed["blobs"] == resumed["image_blobs"]  # no orphan blob, no row without its blob
    assert len(resumed["failures"]) == len(range(0, N_PAGES, 7))  # the too-small images, once each
