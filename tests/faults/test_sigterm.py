"""SIGTERM (what Kubernetes and systemd send) to ``unmark scrape`` and ``unmark clean`` mid-run:
the step finishes the batch in hand, commits it, releases its claims and exits 143 within a
bounded time; a re-run then ends with exactly the rows and blobs of a run that was never
stopped."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select

from pipeline import clean as clean_step
from pipeline.config import load_settings
from pipeline.stopping import EXIT_STOPPED, StopFlag, Stopped
from storage import BlobStore, open_catalog
from storage.models import Cleaning
from tests.faults.catalog_state import (
    assert_same_rows,
    crawl_site,
    popen,
    reference_scrape,
    scrape_until,
    snapshot,
    unmark,
)
from tests.pipeline.test_clean import _encode, _photo, add_image, register_remover, tiny_remover
from tests.pipeline.test_scrape_resume import count_images

STOP_BOUND_S = 30.0  # from the signal to the exit: the batch in hand, its commit, the release


def _stop(proc: subprocess.Popen) -> tuple[float, str, str]:
    """SIGTERM ``proc``; (seconds to exit, stdout, stderr). Kills it if it overstays the bound."""
    t = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=STOP_BOUND_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"no exit {STOP_BOUND_S} s after SIGTERM; stderr:\n{err[-2000:]}")
    return time.monotonic() - t, out, err


def test_sigterm_mid_scrape_commits_what_is_done_and_the_rerun_is_exact(tmp_path, unmark_env, settings):
    with crawl_site() as site:
        db = str(settings.home / "catalog.sqlite")
        proc, cmd = scrape_until(site.url("/"), unmark_env, lambda: count_images(db))
        took, out, err = _stop(proc)
        assert proc.returncode == EXIT_STOPPED, err[-2000:]
        assert "stopped" in err and "SIGTERM" in err
        partial = json.loads(out)
        assert partial["stopped"] == "SIGTERM" and partial["pages_fetched"] > 0
        at_stop = snapshot(settings)
        # the pages in flight finished with their images: every stored blob has its row
        assert not at_stop["orphans"] and not at_stop["dangling"]
        assert 0 < at_stop["n_images"] < 30 * 4 + 1, "the stop did not land mid-crawl"

        done = subprocess.run(cmd, env=unmark_env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        resumed = snapshot(settings)
        want = reference_scrape(site.url("/"), tmp_path / "reference")
    assert want["n_images"] == 30 * 4 + 1
    assert_same_rows(resumed, want, ("n_images", "images", "n_sightings", "sightings", "pages", "failures"))
    assert took < STOP_BOUND_S


N_CLEAN = 10


def _clean_pool(settings, tmp_path) -> None:
    cat = open_catalog(settings.storage)
    blobs = BlobStore.from_settings(settings.storage)
    try:
        register_remover(cat, blobs, tiny_remover(tmp_path, base=8, depth=3))
        for i in range(N_CLEAN):
            add_image(cat, blobs, _encode(PILImage.fromarray(_photo(96, 128, 10 + i)), "PNG"), "watermarked", 128, 96)
    finally:
        cat.dispose()


CLEAN_ROWS = ("images", "n_images", "cleanings", "n_cleanings", "failures")


def reference_clean(tmp_path) -> dict:
    """The snapshot of a fault-free, in-process clean of ``_clean_pool`` (``_clean_env``'s
    settings) in a fresh local home."""
    ref = load_settings(home=tmp_path / "reference", num_workers=0, clean_chunk_images=2, clean_tile=64,
                        clean_overlap=16)
    _clean_pool(ref, tmp_path)
    rcat = open_catalog(ref.storage)
    try:
        clean_step.clean(rcat, BlobStore.from_settings(ref.storage), ref, device="cpu")
    finally:
        rcat.dispose()
    return snapshot(ref)


def _clean_env(unmark_env: dict) -> dict:
    return {**unmark_env, "UNMARK_NUM_WORKERS": "0", "UNMARK_CLEAN_CHUNK_IMAGES": "2", "UNMARK_CLEAN_TILE": "64",
            "UNMARK_CLEAN_OVERLAP": "16", "OMP_NUM_THREADS": "1"}


def clean_pool_env(settings, tmp_path, unmark_env: dict, **more: str) -> dict:
    """``_clean_pool`` in ``settings``' catalog and blob store; the environment of an ``unmark
    clean`` over it (``_clean_env`` and ``more``)."""
    _clean_pool(settings, tmp_path)
    return {**_clean_env(unmark_env), **more}


def start_clean(env: dict, cleanings) -> subprocess.Popen:
    """``unmark clean`` on the CPU in a subprocess, returned (still running) once ``cleanings()``
    counts its first committed chunk."""
    proc = popen(unmark("clean", "--json", "--device", "cpu"), env)
    deadline = time.monotonic() + 120
    while cleanings() == 0 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the clean finished before the fault"
    return proc


def test_sigterm_mid_clean_commits_the_chunk_releases_claims_and_the_rerun_is_exact(tmp_path, settings, unmark_env):
    _clean_pool(settings, tmp_path)
    env = _clean_env(unmark_env)
    cat = open_catalog(settings.storage)

    def count() -> int:
        with cat.session() as s:
            return s.scalar(select(func.count()).select_from(Cleaning))

    try:
        proc = start_clean(env, count)
        took, out, err = _stop(proc)
        at_stop = count()
    finally:
        cat.dispose()
    assert proc.returncode == EXIT_STOPPED, err[-2000:]
    assert json.loads(out)["stopped"] == "SIGTERM"
    assert 0 < at_stop < N_CLEAN and at_stop % 2 == 0, f"whole chunks only, mid-run ({at_stop} of {N_CLEAN})"
    state = snapshot(settings)
    assert not state["held_claims"], "claims left held after the stop"
    assert not state["orphans"] and not state["dangling"]
    assert took < STOP_BOUND_S

    r = subprocess.run(unmark("clean", "--json", "--device", "cpu"), env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["cleaned"] == N_CLEAN - at_stop  # nothing done twice

    assert_same_rows(snapshot(settings), reference_clean(tmp_path), CLEAN_ROWS)


def test_stop_flag_before_start_raises_stopped_with_nothing_claimed(settings, tmp_path):
    """A flag already set: the step claims nothing, holds nothing, and says it stopped."""
    _clean_pool(settings, tmp_path)
    settings.clean.num_workers = 0
    flag = StopFlag()
    flag.set("SIGTERM")
    cat = open_catalog(settings.storage)
    try:
        with pytest.raises(Stopped, match="clean stopped by SIGTERM") as info:
            clean_step.clean(cat, BlobStore.from_settings(settings.storage), settings, device="cpu", stop=flag)
    finally:
        cat.dispose()
    assert info.value.summary["claimed"] == 0
    state = snapshot(settings)
    assert state["n_cleanings"] == 0 and not state["held_claims"]


def test_sigterm_mid_import_commits_the_files_read_and_the_rerun_is_exact(tmp_path, settings, unmark_env):
    from tests.pipeline.scrape_site import png_bytes

    src = tmp_path / "src"
    src.mkdir()
    n = 1000
    for i in range(n):
        (src / f"{i:05d}.png").write_bytes(png_bytes(i, 8, 8))
    env = {**unmark_env, "UNMARK_WRITE_BATCH_SIZE": "50"}
    db = str(settings.home / "catalog.sqlite")
    proc = popen(unmark("import", str(src), "--json"), env)
    deadline = time.monotonic() + 120
    while count_images(db) < 60 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the import finished before it could be stopped"
    took, out, err = _stop(proc)
    assert proc.returncode == EXIT_STOPPED, err[-2000:]
    partial = json.loads(out)
    assert partial["stopped"] == "SIGTERM" and 0 < partial["added"] < n
    at_stop = snapshot(settings)
    assert at_stop["n_images"] == partial["added"] and not at_stop["orphans"] and not at_stop["dangling"]

    r = subprocess.run(unmark("import", str(src), "--json"), env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["added"] == n - partial["added"]  # nothing imported twice
    ref = load_settings(home=tmp_path / "reference")
    r = subprocess.run(unmark("import", str(src), "--json"), env={**env, "UNMARK_HOME": str(ref.home)},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0
    assert_same_rows(snapshot(settings), snapshot(ref), ("images", "n_images", "failures"))
    assert took < STOP_BOUND_S
