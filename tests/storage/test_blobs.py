"""Blob store: content addressing, idempotent puts, atomic writes under kill -9."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from storage.blobs import (
    BlobCorrupt,
    BlobError,
    BlobStore,
    BlobStoreUnavailable,
    DiskFull,
    blob_key,
    sha256_bytes,
)


def test_put_get_exists_keys(tmp_path):
    bs = BlobStore(tmp_path / "blobs")
    sha, key = bs.put(b"abc")
    assert sha == sha256_bytes(b"abc") and key == blob_key(sha) == f"{sha[:2]}/{sha[2:4]}/{sha}"
    assert bs.exists(key) and bs.get(key) == b"abc"
    assert bs.local_path(key).read_bytes() == b"abc"
    mtime = bs.local_path(key).stat().st_mtime_ns
    time.sleep(0.01)
    assert bs.put(b"abc") == (sha, key)  # idempotent: not rewritten
    assert bs.local_path(key).stat().st_mtime_ns == mtime
    bs.put(b"def")
    assert sorted(bs.keys()) == sorted([key, blob_key(sha256_bytes(b"def"))])


def test_deferred_durability_and_wrong_size_blobs(tmp_path):
    """``durable=False`` puts are complete files at once and counted until ``sync()``; a blob of
    the wrong size under a final key (emptied by a power cut before a sync) is written again."""
    bs = BlobStore(tmp_path / "blobs")
    keys = [bs.put(bytes([i]) * 100, durable=False)[1] for i in range(3)]
    assert [bs.get(k) for k in keys] == [bytes([i]) * 100 for i in range(3)]
    assert bs.put(bytes([0]) * 100, durable=False)[1] == keys[0]  # known: not written, not counted
    assert bs.sync() == 3 and bs.sync() == 0
    bs.local_path(keys[1]).write_bytes(b"")
    bs.put(bytes([1]) * 100)
    assert bs.get(keys[1]) == bytes([1]) * 100
    assert not list(bs.local_path(keys[1]).parent.glob(".tmp-*"))


def test_bad_keys_refused(tmp_path):
    bs = BlobStore(tmp_path / "blobs")
    with pytest.raises(BlobError):
        bs.path("../../etc/passwd")
    with pytest.raises(BlobError):
        blob_key("not-a-sha")
    with pytest.raises(BlobError):
        bs.get(blob_key("0" * 64))


def test_fsspec_url_root(tmp_path):
    bs = BlobStore(f"file://{tmp_path}/viaurl")
    sha, key = bs.put(b"xyz")
    assert (tmp_path / "viaurl" / key).read_bytes() == b"xyz"
    mem = BlobStore("memory://unmark-test")
    _, k2 = mem.put(b"in memory")
    assert mem.get(k2) == b"in memory" and list(mem.keys()) == [k2]


KILLED_WRITER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from pipeline.config import load_settings
    from pipeline.importer import import_paths
    from storage import BlobStore, open_catalog

    home, image, marker = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    settings = load_settings(home=home)
    cat, bs = open_catalog(settings.storage), BlobStore.from_settings(settings.storage)
    real_fsync = os.fsync
    def stalled_fsync(fd):  # the bytes are written but not yet renamed into place: die here
        marker.write_text("writing")
        time.sleep(600)
    os.fsync = stalled_fsync
    import_paths([image], cat, bs, settings)
    """
)


def test_kill_during_blob_write_leaves_no_partial_blob_and_no_dangling_row(tmp_path):
    from PIL import Image as PILImage

    img = tmp_path / "photo.png"
    PILImage.new("RGB", (96, 80), (10, 200, 30)).save(img)
    home, marker = tmp_path / "home", tmp_path / "marker"
    p = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(home), str(img), str(marker)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not marker.exists():
        assert p.poll() is None, p.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()

    from pipeline.config import load_settings
    from pipeline.importer import import_paths
    from storage import open_catalog
    from storage.models import Image

    settings = load_settings(home=home)
    bs = BlobStore.from_settings(settings.storage)
    sha = sha256_bytes(img.read_bytes())
    assert not bs.exists(blob_key(sha)), "a partial blob was left under its final key"
    assert list(bs.keys()) == []
    temps = list(Path(settings.storage.blob_root).rglob(".tmp-*"))
    assert temps, "the killed writer should have left its temp file (proves the kill hit mid-write)"
    cat = open_catalog(settings.storage)
    with cat.session() as s:
        assert s.query(Image).count() == 0  # no row points at a blob that does not exist
    # Re-running completes the work; stale temp files can be swept.
    stats = import_paths([img], cat, bs, settings)
    assert stats.added == 1 and bs.get(blob_key(sha)) == img.read_bytes()
    assert bs.remove_stale_temp() == len(temps)
    with cat.session() as s:
        for im in s.query(Image):
            assert bs.exists(im.blob_key)


def test_a_second_store_on_the_same_root_skips_known_blobs_and_leaves_no_temp_files(tmp_path):
    """Another process (a new store, its folder cache empty) finds the folder made and the blob
    there: not written again. Blobs are private files, temp files never stay behind."""
    first = BlobStore(tmp_path / "blobs")
    _, key = first.put(b"shared", durable=False)
    path = first.local_path(key)
    mtime = path.stat().st_mtime_ns
    time.sleep(0.01)
    second = BlobStore(tmp_path / "blobs")
    assert second.put(b"shared", durable=False)[1] == key and second.sync() == 0
    assert path.stat().st_mtime_ns == mtime
    _, other = second.put(b"other")
    assert second.get(other) == b"other" and (second.local_path(other).stat().st_mode & 0o777) == 0o600
    assert not list((tmp_path / "blobs").rglob(".tmp-*"))


@pytest.mark.parametrize("exc", [BlobError("ab/cd/k", "not found"), BlobCorrupt("ab/cd/k", "0" * 64),
                                 BlobStoreUnavailable("ab/cd/k", "bucket/blobs", 2.0, ConnectionError("reset")),
                                 DiskFull("ab/cd/k", "/full/ab/cd")])
def test_blob_errors_cross_a_process_boundary_whole(exc):
    """A DataLoader or process-pool worker pickles the error it hands back; it arrives as itself."""
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc) and str(back) == str(exc) and back.__dict__ == exc.__dict__
