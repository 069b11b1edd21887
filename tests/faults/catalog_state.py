"""What a fault test compares with a fault-free run: the catalog's rows, as sets of plain tuples,
and the blob store's keys against the keys rows name (orphans: stored, named by no row;
dangling: named by a row, not stored). Read straight from the tables, not through the code under
test."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import select

from storage import BlobStore, open_catalog
from storage.models import Claim, Cleaning, Failure, Image, Model, Page, Sighting

ROOT = Path(__file__).resolve().parents[2]


def unmark(*args: str) -> list[str]:
    """The command line as a subprocess (the suite's network guard rides on PYTHONPATH)."""
    return [sys.executable, "-m", "flows.cli", *args]


def popen(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


@contextlib.contextmanager
def crawl_site():
    """``test_scrape_resume``'s 30-page site on 127.0.0.1 (121 distinct images, copies, tiny
    images that fail), closed on exit."""
    from tests.pipeline.scrape_site import Site
    from tests.pipeline.test_scrape_resume import build

    site = Site(latency_s=0.03)
    try:
        build(site)
        yield site
    finally:
        site.close()


def scrape_until(seed: str, env: dict, images, at_least: int = 25) -> tuple[subprocess.Popen, list[str]]:
    """``unmark scrape`` from ``seed`` (small batches, a few fetchers) in a subprocess, returned
    (with its command) once ``images()`` counts ``at_least`` rows, still running."""
    env = dict(env, UNMARK_PER_HOST_CONCURRENCY="2", UNMARK_WRITE_BATCH_SIZE="8", UNMARK_GLOBAL_CONCURRENCY="4")
    cmd = unmark("scrape", seed, "--allow-private-hosts", "--json")
    proc = popen(cmd, env)
    deadline = time.monotonic() + 60
    while images() < at_least and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the scrape finished before the fault"
    return proc, cmd


def named_keys(settings) -> set[str]:
    """Every blob key a catalog row names: images, model checkpoints, cleanings and their masks."""
    cat = open_catalog(settings.storage)
    try:
        with cat.session() as s:
            keys = set(s.scalars(select(Image.blob_key)))
            keys |= {k for k in s.scalars(select(Model.checkpoint_key)) if k}
            for out, metrics in s.execute(select(Cleaning.output_key, Cleaning.metrics)):
                keys.add(out)
                keys |= {(metrics or {}).get(k) for k in ("mask_key", "weights_key", "model_output")} - {None}
    finally:
        cat.dispose()
    return keys


def snapshot(settings) -> dict:
    """Rows by content (no ids: two catalogs number rows differently) and the blob accounting."""
    cat = open_catalog(settings.storage)
    try:
        with cat.session() as s:
            images = set(s.execute(select(Image.sha256, Image.blob_key, Image.bytes, Image.status)).all())
            sightings = s.execute(select(Page.url, Sighting.image_url, Image.sha256, Sighting.found_by)
                                  .join(Page, Page.id == Sighting.page_id)
                                  .join(Image, Image.id == Sighting.image_id)).all()
            pages = set(s.execute(select(Page.url, Page.status.in_((200, 304)), Page.etag.is_not(None))).all())
            cleanings = s.execute(select(Image.sha256, Cleaning.model_version, Cleaning.source)
                                  .join(Image, Image.id == Cleaning.image_id)).all()
            failures = set(s.execute(select(Failure.stage, Failure.subject, Failure.error_class)).all())
            open_claims = s.execute(select(Claim.stage, Claim.image_id, Claim.worker)
                                    .where(Claim.done_at.is_(None), Claim.worker.is_not(None))).all()
    finally:
        cat.dispose()
    stored = set(BlobStore.from_settings(settings.storage).keys())
    named = named_keys(settings)
    return {
        "images": images, "n_images": len(images),
        "sightings": set(sightings), "n_sightings": len(sightings),
        "pages": pages, "cleanings": set(cleanings), "n_cleanings": len(cleanings),
        "failures": failures, "held_claims": open_claims,
        "orphans": stored - named, "dangling": named - stored,
    }


def reference_scrape(seed: str, home: Path) -> dict:
    """The snapshot of a fault-free, in-process scrape from ``seed`` into a fresh SQLite home."""
    from pipeline.config import load_settings
    from pipeline.scrape.crawl import scrape

    ref = load_settings(home=home)
    cat = open_catalog(ref.storage)
    try:
        scrape([seed], cat, BlobStore.from_settings(ref.storage), ref, allow_private_hosts=True)
    finally:
        cat.dispose()
    return snapshot(ref)


def assert_same_rows(got: dict, want: dict, keys: tuple[str, ...]) -> None:
    """Row by row: nothing lost, nothing doubled (the counts catch duplicates a set would hide)."""
    for key in keys:
        assert got[key] == want[key], f"{key}: lost {want[key] - got[key] if isinstance(want[key], set) else want[key]}" \
                                      f", extra {got[key] - want[key] if isinstance(got[key], set) else got[key]}"
    assert not got["orphans"], f"orphan blobs: {sorted(got['orphans'])[:5]}"
    assert not got["dangling"], f"rows naming missing blobs: {sorted(got['dangling'])[:5]}"
    assert not got["held_claims"], f"claims still held: {got['held_claims'][:5]}"
