"""A damaged catalog or blob: a SQLite file cut short is a clear error at open (exit 3), a page
scribbled over is found by ``unmark check``'s integrity_check, a blob whose bytes no longer hash
to its key is a failure row (the step goes on with the rest), and ``unmark check`` reports all of
it across the whole catalog, exiting non-zero."""

from __future__ import annotations

import json
import sqlite3
import subprocess

import pytest
from sqlalchemy import select

from pipeline.dedup import dedup
from storage import BlobStore, open_catalog
from storage.blobs import BlobCorrupt
from storage.integrity import CatalogCorrupt, check_sqlite_file
from storage.models import Failure, Image
from tests.faults.catalog_state import ROOT, unmark
from tests.pipeline.scrape_site import png_bytes

N = 12


def _run(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(unmark(*args), env=env, capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.fixture
def imported(tmp_path, settings, unmark_env):
    """``N`` images imported through the command line; the catalog file checkpointed and closed."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(N):
        (src / f"{i}.png").write_bytes(png_bytes(100 + i, 96, 80))
    r = _run(unmark_env, "import", str(src), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["added"] == N
    db = settings.home / "catalog.sqlite"
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return db


def _keys(settings) -> dict[str, str]:
    cat = open_catalog(settings.storage)
    try:
        with cat.session() as s:
            return dict(s.execute(select(Image.sha256, Image.blob_key)).all())
    finally:
        cat.dispose()


def test_truncated_catalog_is_a_clear_error_at_open(imported, settings, unmark_env):
    size = imported.stat().st_size
    assert size > 4 * 4096
    with open(imported, "r+b") as fh:
        fh.truncate(size // 2)
    with pytest.raises(CatalogCorrupt, match="cut short"):
        check_sqlite_file(imported)
    for args in (("catalog", "stats", "--json"), ("dedup", "--json"), ("import", str(imported.parent), "--json")):
        r = _run(unmark_env, *args)
        assert r.returncode == 3, (args, r.stdout, r.stderr[-1500:])
        assert "damaged" in r.stderr and "cut short" in r.stderr and "Traceback" not in r.stderr, args
    r = _run(unmark_env, "check", "--json")
    assert r.returncode == 3 and json.loads(r.stdout)["ok"] is False
    assert imported.stat().st_size == size // 2  # nothing wrote to the damaged file


def test_a_file_that_is_not_sqlite_is_named(settings, unmark_env):
    settings.home.mkdir(parents=True, exist_ok=True)
    (settings.home / "catalog.sqlite").write_bytes(b"<html>not a database</html>" * 10)
    r = _run(unmark_env, "catalog", "stats")
    assert r.returncode == 3 and "not a SQLite file" in r.stderr and "Traceback" not in r.stderr


def test_scribbled_page_is_found_by_check(imported, settings, unmark_env):
    """Same size, damaged inside: the header check passes, integrity_check does not."""
    assert _run(unmark_env, "check", "--json").returncode == 0
    page = int.from_bytes(imported.read_bytes()[16:18], "big")
    con = sqlite3.connect(imported)
    root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'images'").fetchone()[0]
    con.close()
    with open(imported, "r+b") as fh:  # the images table's root page: rows every check must read
        fh.seek((root - 1) * page)
        fh.write(b"\xff" * page)
    r = _run(unmark_env, "check", "--json")
    assert r.returncode == 1, r.stderr[-1500:]
    out = json.loads(r.stdout)
    assert out["ok"] is False and out["problems"].get("integrity", 0) >= 1 and out["integrity"] != "ok"
    assert all(p["kind"] == "integrity" for p in out["details"])  # no blob blamed for unreadable rows


def test_corrupt_missing_and_orphan_blobs_are_reported_and_steps_skip_them(imported, settings, unmark_env):
    keys = _keys(settings)
    blobs = BlobStore.from_settings(settings.storage)
    shas = sorted(keys)
    rotten, gone = shas[0], shas[1]
    path = blobs.local_path(keys[rotten])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: same size, wrong hash
    path.write_bytes(bytes(data))
    blobs.local_path(keys[gone]).unlink()
    _, stray = blobs.put(png_bytes(7777, 16, 16))  # a blob no row names

    with pytest.raises(BlobCorrupt, match=keys[rotten]):
        blobs.get(keys[rotten])
    r = _run(unmark_env, "check", "--json")
    assert r.returncode == 1, r.stderr[-1500:]
    out = json.loads(r.stdout)
    assert out["problems"] == {"corrupt_blob": 1, "missing_blob": 1, "orphan_blob": 1}
    by_kind = {p["kind"]: p["subject"] for p in out["details"]}
    assert by_kind == {"corrupt_blob": keys[rotten], "missing_blob": keys[gone], "orphan_blob": stray}
    assert out["blobs_checked"] == N and out["integrity"] == "ok"

    # a step reading them records each as a failure row and goes on with the others
    cat = open_catalog(settings.storage)
    try:
        dedup(cat, blobs, settings)
        with cat.session() as s:
            fails = {f.subject: f.error_class for f in s.scalars(select(Failure))}
            hashed = s.scalars(select(Image.sha256).where(Image.phash.is_not(None))).all()
    finally:
        cat.dispose()
    assert len(hashed) == N - 2 and rotten not in hashed and gone not in hashed
    assert fails.get(rotten) == "BlobCorrupt" and fails.get(gone) == "BlobError", fails

    # put right again (the blob restored, the stray removed): check passes
    blobs.local_path(keys[rotten]).unlink()
    for i in range(N):
        blobs.put(png_bytes(100 + i, 96, 80))
    blobs.delete(stray)
    r = _run(unmark_env, "check", "--json")
    assert r.returncode == 0, r.stdout
