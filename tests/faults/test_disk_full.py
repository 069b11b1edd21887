"""The disk fills: a real small file system (tmpfs, mounted for the test; root only) under the
blob store or under the catalog, during import or during cleaning. The step stops with a clear
"disk full" error naming the path and exit 5, the SQLite catalog passes ``PRAGMA
integrity_check``, and once there is room again the re-run ends with exactly the rows and blobs
of a run that had room."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from pipeline.config import load_settings
from storage import BlobStore
from storage.blobs import DiskFull
from tests.faults import catalog_state as cs
from tests.faults.test_sigterm import CLEAN_ROWS, N_CLEAN, clean_pool_env, reference_clean, start_clean
from tests.faults.test_sigterm_steps import _scalar
from tests.pipeline.scrape_site import png_bytes


@contextlib.contextmanager
def small_fs(path: Path, size: str):
    """A tmpfs of ``size`` at ``path``; yields a function that grows it (``mount -o remount``)."""
    path.mkdir(parents=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")

    def grow(new_size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={new_size}", str(path)], check=True)

    try:
        yield grow
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _images(folder: Path, n: int, side: int) -> Path:
    folder.mkdir()
    for i in range(n):
        (folder / f"{i:03d}.png").write_bytes(png_bytes(500 + i, side, side))
    return folder


def _import(env: dict, src: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cs.unmark("import", str(src), "--json"), env=env, capture_output=True, text=True,
                          cwd=cs.ROOT, timeout=180)


def _integrity(db: Path) -> str:
    con = sqlite3.connect(db)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


def _reference(tmp_path: Path, src: Path, unmark_env: dict) -> dict:
    ref = load_settings(home=tmp_path / "reference")
    assert _import({**unmark_env, "UNMARK_HOME": str(ref.home)}, src).returncode == 0
    return cs.snapshot(ref)


def test_blob_store_fills_then_has_room(tmp_path, unmark_env):
    src = _images(tmp_path / "src", 24, 48)  # ~7 kB each, ~170 kB in all
    blob_root = tmp_path / "small"
    with small_fs(blob_root, "96k") as grow:
        settings = load_settings(home=tmp_path / "home", blob_root=str(blob_root))
        env = {**unmark_env, "UNMARK_BLOB_ROOT": str(blob_root), "UNMARK_WRITE_BATCH_SIZE": "4"}
        r = _import(env, src)
        assert r.returncode == 5, r.stderr[-2000:]
        assert "disk full" in r.stderr and str(blob_root) in r.stderr and "Traceback" not in r.stderr
        assert _integrity(settings.home / "catalog.sqlite") == "ok"
        partial = cs.snapshot(settings)
        assert 0 < partial["n_images"] < 24 and not partial["dangling"]  # every row's blob was written
        with pytest.raises(DiskFull, match="disk full"):
            BlobStore.from_settings(settings.storage).put(os.urandom(200_000))

        grow("4m")
        r = _import(env, src)
        assert r.returncode == 0, r.stderr[-2000:]
        got = cs.snapshot(settings)
    cs.assert_same_rows(got, _reference(tmp_path, src, unmark_env), ("images", "n_images", "failures"))


def test_catalog_disk_fills_then_has_room(tmp_path, unmark_env):
    src = _images(tmp_path / "src", 400, 8)
    home = tmp_path / "home"
    with small_fs(home, "480k") as grow:
        settings = load_settings(home=home, blob_root=str(tmp_path / "blobs"))
        env = {**unmark_env, "UNMARK_BLOB_ROOT": settings.storage.blob_root, "UNMARK_WRITE_BATCH_SIZE": "10"}
        r = _import(env, src)
        assert r.returncode == 5, (r.stdout[-500:], r.stderr[-2000:])
        assert "disk full" in r.stderr and "catalog" in r.stderr and "Traceback" not in r.stderr
        assert _integrity(home / "catalog.sqlite") == "ok"
        assert cs.snapshot(settings)["n_images"] < 400

        grow("64m")
        r = _import(env, src)
        assert r.returncode == 0, r.stderr[-2000:]
        assert _integrity(home / "catalog.sqlite") == "ok"
        got = cs.snapshot(settings)
    cs.assert_same_rows(got, _reference(tmp_path, src, unmark_env), ("images", "n_images", "failures"))


def _fill(folder: Path) -> Path:
    """A file taking every free byte of ``folder``'s file system (another writer on a shared disk)."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        block = b"\0" * 65536
        while True:
            try:
                os.write(fd, block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
    finally:
        os.close(fd)
    return filler


def test_blob_store_fills_during_clean_then_has_room(tmp_path, unmark_env):
    blob_root = tmp_path / "small"
    with small_fs(blob_root, "16m"):
        settings = load_settings(home=tmp_path / "home", blob_root=str(blob_root))
        env = clean_pool_env(settings, tmp_path, unmark_env, UNMARK_BLOB_ROOT=str(blob_root))
        proc = start_clean(env, lambda: _scalar(settings.home / "catalog.sqlite", "SELECT count(*) FROM cleanings"))
        filler = _fill(blob_root)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 5, err[-3000:]  # EXIT_DISK_FULL
        assert "disk full" in err and str(blob_root) in err and "Traceback" not in err
        assert _integrity(settings.home / "catalog.sqlite") == "ok"
        filler.unlink()  # room again (before the snapshot: the filler is no blob)
        state = cs.snapshot(settings)
        at_stop = state["n_cleanings"]
        assert 0 < at_stop < N_CLEAN and at_stop % 2 == 0, f"whole chunks only, mid-run ({at_stop} of {N_CLEAN})"
        assert not state["dangling"] and not state["held_claims"] and not state["failures"]

        r = subprocess.run(cs.unmark("clean", "--json", "--device", "cpu"), env=env, capture_output=True, text=True,
                           cwd=cs.ROOT, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert json.loads(r.stdout)["cleaned"] == N_CLEAN - at_stop  # nothing done twice
        got = cs.snapshot(settings)
    cs.assert_same_rows(got, reference_clean(tmp_path), CLEAN_ROWS)
