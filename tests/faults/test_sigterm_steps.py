"""SIGTERM to ``unmark dedup`` and ``unmark triage`` mid-run: the step writes the batch in hand,
exits 143 within a bounded time, and a re-run ends with exactly the rows of a run that was never
stopped (dedup: every hash, group and role; triage: every label, score, status and split). A
stop while triage is still training its first detector abandons the training and registers
nothing."""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from sqlalchemy import func, select
from sqlalchemy.orm import aliased

from model.detector import Calibration, WatermarkDetector, detector_to_bytes
from pipeline import registry
from pipeline.config import load_settings
from pipeline.dedup import dedup
from pipeline.importer import import_paths
from pipeline.stopping import EXIT_STOPPED
from pipeline.triage import triage
from storage import BlobStore, open_catalog
from storage.models import Image, Model, WindowHash
from tests.faults.catalog_state import popen, unmark
from tests.faults.test_sigterm import STOP_BOUND_S, _stop


def _scalar(db: Path, sql: str) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute(sql).fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def _wait(proc: subprocess.Popen, cond, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"the {what} finished before it could be stopped"


def _smooth_jpeg(seed: int, side: int) -> bytes:
    rng = np.random.default_rng(seed)
    small = PILImage.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    buf = io.BytesIO()
    small.resize((side, side), PILImage.BILINEAR).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _copy_home(settings, to: Path):
    """A copy of the catalog file and blob folder, closed and checkpointed: the same rows, ids and
    all, for the fault-free reference run."""
    con = sqlite3.connect(settings.home / "catalog.sqlite")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    shutil.copytree(settings.home, to)
    return load_settings(home=to)


# --- dedup -----------------------------------------------------------------------------------

N_DEDUP = 360  # 300 distinct pictures and 60 near copies (re-encoded at another size)


def import_dedup_pool(settings, src: Path, distinct: int = 300, copies: int = 60) -> None:
    """``distinct`` pictures and ``copies`` near copies of every fifth (``N_DEDUP`` in all by
    default) written to ``src`` and imported into ``settings``' catalog."""
    src.mkdir()
    for i in range(distinct):
        (src / f"{i:04d}.jpg").write_bytes(_smooth_jpeg(i, 256))
    for i in range(copies):
        im = PILImage.open(io.BytesIO(_smooth_jpeg(i * 5, 256))).resize((200, 200))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=70)
        (src / f"copy-{i:03d}.jpg").write_bytes(buf.getvalue())
    cat = open_catalog(settings.storage)
    try:
        assert import_paths([src], cat, BlobStore.from_settings(settings.storage), settings).added == distinct + copies
    finally:
        cat.dispose()


@pytest.fixture
def dedup_pool(tmp_path, settings):
    import_dedup_pool(settings, tmp_path / "src")
    return settings


def groups_after_dedup(settings, copies: int = 60) -> dict:
    """``_groups`` of ``settings``' catalog once ``dedup`` has run on it in-process (the fault-free
    reference)."""
    cat = open_catalog(settings.storage)
    try:
        summary = dedup(cat, BlobStore.from_settings(settings.storage), settings)
    finally:
        cat.dispose()
    # the near copies were found: groups are part of the comparison
    assert summary["duplicates"] >= copies * 5 // 6
    return _groups(settings)


def _groups(settings) -> dict:
    cat = open_catalog(settings.storage)
    try:
        with cat.session() as s:
            canon = aliased(Image)
            rows = s.execute(select(Image.sha256, Image.phash, Image.dhash, Image.hash_impl, Image.dedup_role,
                                    canon.sha256).outerjoin(canon, canon.id == Image.group_id)).all()
            windows = s.scalar(select(func.count()).select_from(WindowHash))
    finally:
        cat.dispose()
    return {"rows": set(rows), "n": len(rows), "windows": windows}


def test_sigterm_mid_dedup_writes_the_hashes_in_hand_and_the_rerun_is_exact(tmp_path, dedup_pool, unmark_env):
    settings = dedup_pool
    ref = _copy_home(settings, tmp_path / "reference")
    db = settings.home / "catalog.sqlite"
    env = {**unmark_env, "UNMARK_DEDUP_WORKERS": "2", "UNMARK_DEDUP_CHUNK_SIZE": "8", "UNMARK_WRITE_BATCH_SIZE": "8"}
    proc = popen(unmark("dedup", "--json"), env)
    _wait(proc, lambda: _scalar(db, "SELECT count(*) FROM images WHERE phash IS NOT NULL") >= 16, "dedup")
    took, out, err = _stop(proc)
    assert proc.returncode == EXIT_STOPPED, err[-2000:]
    partial = json.loads(out)
    assert partial["stopped"] == "SIGTERM" and "Traceback" not in err
    hashed = _scalar(db, "SELECT count(*) FROM images WHERE phash IS NOT NULL")
    assert partial["hashed"] == hashed and 0 < hashed < N_DEDUP, f"the stop did not land mid-hashing ({hashed})"
    assert _scalar(db, "SELECT count(*) FROM images WHERE group_id IS NOT NULL") == 0  # matching left whole for the re-run
    assert took < STOP_BOUND_S

    r = subprocess.run(unmark("dedup", "--json"), env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["hashed"] == N_DEDUP - hashed  # nothing hashed twice

    got, want = _groups(settings), groups_after_dedup(ref)
    assert got["n"] == want["n"] == N_DEDUP and got["windows"] == want["windows"]
    assert got["rows"] == want["rows"], f"lost {list(want['rows'] - got['rows'])[:3]}, extra {list(got['rows'] - want['rows'])[:3]}"


# --- triage ----------------------------------------------------------------------------------

N_TRIAGE = 24
DETECTOR = "detector-fault-test"


def detector_bytes() -> bytes:
    torch.manual_seed(0)
    return detector_to_bytes(WatermarkDetector(), version=DETECTOR)


def triage_pool(settings, n: int = N_TRIAGE, side: int = 384) -> None:
    """``n`` photos and a promoted (untrained, seeded) detector, so triage only scores."""
    from tests.pipeline.test_clean import _encode, _photo

    cat = open_catalog(settings.storage)
    blobs = BlobStore.from_settings(settings.storage)
    try:
        with cat.write() as s:
            from storage import queries as q

            rows = []
            for i in range(n):
                data = _encode(PILImage.fromarray(_photo(side, side, 200 + i)), "PNG")
                sha, key = blobs.put(data)
                rows.append(dict(sha256=sha, blob_key=key, mime="image/png", width=side, height=side, bytes=len(data)))
            q.add_images(s, rows)
            cal = Calibration(low=0.45, high=0.55, target_precision=0.98, clean_precision=1.0, clean_recall=1.0,
                              watermarked_precision=1.0, watermarked_recall=1.0, uncertain_fraction=0.0)
            registry.register(s, blobs, DETECTOR, "detector", detector_bytes(),
                              config={"widths": [24, 48, 96, 128], "scales": [side], "calibration": cal.__dict__},
                              metrics={}, promote=True)
    finally:
        cat.dispose()


def triage_rows(settings) -> set:
    cat = open_catalog(settings.storage)
    try:
        with cat.session() as s:
            rows = s.execute(select(Image.sha256, Image.status, Image.label, Image.watermark_score,
                                    Image.detector_version, Image.split)).all()
    finally:
        cat.dispose()
    return {(sha, st, lab, None if sc is None else round(sc, 4), v, sp) for sha, st, lab, sc, v, sp in rows}


def triage_env(unmark_env: dict) -> dict:
    return {**unmark_env, "UNMARK_TRIAGE_BATCH_SIZE": "2", "OMP_NUM_THREADS": "1"}


def reference_triage(tmp_path: Path, name: str = "reference", n: int = N_TRIAGE, side: int = 384) -> set:
    ref = load_settings(home=tmp_path / name)
    ref.triage.triage_batch_size = 2
    triage_pool(ref, n, side)
    cat = open_catalog(ref.storage)
    try:
        triage(cat, BlobStore.from_settings(ref.storage), ref)
    finally:
        cat.dispose()
    return triage_rows(ref)


def test_sigterm_mid_triage_commits_whole_chunks_and_the_rerun_is_exact(tmp_path, settings, unmark_env):
    triage_pool(settings)
    db = settings.home / "catalog.sqlite"
    env = triage_env(unmark_env)
    scored = "SELECT count(*) FROM images WHERE detector_version IS NOT NULL"
    proc = popen(unmark("triage", "--json"), env)
    _wait(proc, lambda: _scalar(db, scored) >= 2, "triage")
    took, out, err = _stop(proc)
    assert proc.returncode == EXIT_STOPPED, err[-2000:]
    partial = json.loads(out)
    at_stop = _scalar(db, scored)
    assert partial["stopped"] == "SIGTERM" and partial["scored"] == at_stop
    assert 0 < at_stop < N_TRIAGE and at_stop % 2 == 0, f"whole chunks only, mid-run ({at_stop} of {N_TRIAGE})"
    assert took < STOP_BOUND_S

    r = subprocess.run(unmark("triage", "--json"), env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["scored"] == N_TRIAGE - at_stop  # nothing scored twice
    assert triage_rows(settings) == reference_triage(tmp_path)


def _wait_cpu_seconds(proc, cpu_s: float, timeout_s: float) -> None:
    """Wait until ``proc`` has used ``cpu_s`` seconds of CPU (user + system), or fail at ``timeout_s``."""
    tick, end = os.sysconf("SC_CLK_TCK"), time.monotonic() + timeout_s
    while time.monotonic() < end:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        if (int(fields[11]) + int(fields[12])) / tick >= cpu_s:  # utime, stime
            return
        time.sleep(0.2)
    raise AssertionError(f"the process used under {cpu_s} CPU seconds in {timeout_s} s")


def test_sigterm_while_triage_trains_its_detector_abandons_it_and_registers_nothing(settings, unmark_env):
    from tests.pipeline.test_clean import _encode, _photo

    cat = open_catalog(settings.storage)
    blobs = BlobStore.from_settings(settings.storage)
    try:
        from storage import queries as q

        with cat.write() as s:
            rows = []
            for i in range(6):
                data = _encode(PILImage.fromarray(_photo(128, 128, 300 + i)), "PNG")
                sha, key = blobs.put(data)
                rows.append(dict(sha256=sha, blob_key=key, mime="image/png", width=128, height=128, bytes=len(data)))
            q.add_images(s, rows)
    finally:
        cat.dispose()
    # no shipped detector (triage's cold start would register it): triage trains a cell detector
    env = {**unmark_env, "UNMARK_SHIPPED_WEIGHTS": str(settings.home / "no-weights"), "UNMARK_DETECTOR_STEPS": "100000", "UNMARK_DETECTOR_CROP": "64",
           "UNMARK_DETECTOR_BATCH_SIZE": "2", "UNMARK_DETECTOR_VAL_SAMPLES": "4", "OMP_NUM_THREADS": "1"}
    proc = popen(unmark("triage", "--json"), env)
    # start-up, then training (nothing in the catalog shows it): 12 s of the process's own CPU time,
    # what 12 s of wall time gave on a quiet machine (wall time alone fails under load: the
    # signal then lands before the handler is installed)
    _wait_cpu_seconds(proc, 12.0, timeout_s=240.0)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    took, out, err = _stop(proc)
    assert proc.returncode == EXIT_STOPPED, err[-2000:]
    assert json.loads(out)["detector"] == "abandoned mid-training"
    assert took < STOP_BOUND_S
    cat = open_catalog(settings.storage)
    try:
        with cat.session() as s:
            assert s.scalar(select(func.count()).select_from(Model)) == 0
            assert s.scalar(select(func.count()).select_from(Image).where(Image.detector_version.is_not(None))) == 0
    finally:
        cat.dispose()
    assert len(list(blobs.keys())) == 6  # no checkpoint blob was stored
