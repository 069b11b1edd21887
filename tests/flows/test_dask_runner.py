"""``ingest(task_runner="dask")``: hashing and triage scoring on a local Dask cluster (processes,
every socket on 127.0.0.1) give the same catalog as the thread runner, row for row."""

from __future__ import annotations

import shutil

import psutil
import pytest
from PIL import Image as PILImage
from PIL import ImageDraw
from sqlalchemy import select

from flows.ingest import ingest
from flows.runtime import task_runner
from pipeline import triage as triage_step
from pipeline.config import load_settings
from pipeline.importer import import_paths
from storage import BlobStore, open_catalog
from storage import queries as q
from storage.models import Failure, Image, WindowHash

pytestmark = pytest.mark.slow

TINY = {"detector_steps": 6, "detector_crop": 64, "detector_batch_size": 4, "detector_val_samples": 8,
        "triage_batch_size": 3, "dedup_chunk_size": 4, "dask_workers": 2}


def _pool(folder):
    """Photos and their near duplicates (resized, re-encoded, watermarked)."""
    from skimage import data

    folder.mkdir()
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        im = PILImage.fromarray(getattr(data, name)()).convert("RGB")
        im.thumbnail((128, 128))
        im.save(folder / f"{name}.png")
        im.resize((im.width * 3 // 4, im.height * 3 // 4)).save(folder / f"{name}-small.jpg", quality=70)
        marked = im.copy()
        ImageDraw.Draw(marked).text((8, 8), "(c) unmark test", fill=(255, 255, 255))
        marked.save(folder / f"{name}-marked.png")
    return folder


def _snapshot(settings) -> dict:
    cat = open_catalog(settings.storage)
    try:
        with cat.session() as s:
            images = [tuple(r) for r in s.execute(
                select(Image.sha256, Image.status, Image.phash, Image.dhash, Image.hash_impl, Image.group_id,
                       Image.dedup_role, Image.label, Image.watermark_score, Image.detector_version, Image.split)
                .order_by(Image.id))]
            windows = [tuple(r) for r in s.execute(
                select(WindowHash.image_id, WindowHash.window, WindowHash.phash, WindowHash.dhash)
                .order_by(WindowHash.image_id, WindowHash.window))]
            failures = [tuple(r) for r in s.execute(
                select(Failure.stage, Failure.subject, Failure.error_class, Failure.attempts).order_by(Failure.id))]
    finally:
        cat.dispose()
    return {"images": images, "windows": windows, "failures": failures}


@pytest.mark.usefixtures("prefect_harness")
def test_dask_runner_gives_the_thread_runners_catalog(tmp_path):
    base = load_settings(home=tmp_path / "base", **TINY)
    cat, blobs = open_catalog(base.storage), BlobStore.from_settings(base.storage)
    assert import_paths([_pool(tmp_path / "pool")], cat, blobs, base).added == 12
    # and a row whose blob turned out unreadable: a failure both runners must record alike
    sha, key = blobs.put(b"\x89PNG\r\n\x1a\n not really a png")
    with cat.write() as s:
        q.add_images(s, [dict(sha256=sha, blob_key=key, mime="image/png", width=64, height=64, bytes=20)])
    # one detector for both runs, trained once here (training is not what the runners share out)
    triage_step.train_and_register(cat, blobs, base)
    cat.dispose()  # closes the last connection: the SQLite WAL is checkpointed into the file
    homes = {}
    for kind in ("thread", "dask"):
        homes[kind] = tmp_path / kind
        shutil.copytree(tmp_path / "base", homes[kind])

    out = {kind: ingest(home=str(home), task_runner=kind) for kind, home in homes.items()}
    snaps = {kind: _snapshot(load_settings(home=home, **TINY)) for kind, home in homes.items()}

    assert out["dask"]["dedup"]["hashed"] == out["thread"]["dedup"]["hashed"] == 12
    assert out["dask"]["dedup"]["failed"] == 1
    assert out["dask"]["triage"]["scored"] == out["thread"]["triage"]["scored"] == 12
    assert snaps["dask"] == snaps["thread"]
    images = snaps["dask"]["images"]
    assert sum(1 for r in images if r[6] == "duplicate") >= 4  # the near duplicates were found
    assert all(r[7] in ("clean", "watermarked", "uncertain") for r in images if r[1] != "failed")
    assert len(snaps["dask"]["windows"]) > 0 and snaps["dask"]["failures"][0][0] == "dedup"


def test_local_cluster_listens_on_loopback_only(tmp_path):
    """The runner's cluster: worker processes, every listening socket on 127.0.0.1."""
    runner = task_runner("dask", load_settings(home=tmp_path / "h", dask_workers=2))
    with runner:
        client = runner.client
        workers = client.scheduler_info()["workers"]
        assert len(workers) == 2 and all(addr.startswith("tcp://127.0.0.1:") for addr in workers)
        me = psutil.Process()
        listening = [c.laddr for p in [me, *me.children(recursive=True)]
                     for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert listening and all(addr.ip == "127.0.0.1" for addr in listening)
    assert not any(addr.port == 8787 for addr in listening)


def test_cli_dedup_task_runner_dask_matches_the_plain_step(tmp_path):
    """`unmark dedup --task-runner dask` (a subprocess: Prefect's embedded server, a local Dask
    cluster) writes what `unmark dedup` writes."""
    import json
    import os
    import subprocess
    import sys

    base = load_settings(home=tmp_path / "base")
    cat, blobs = open_catalog(base.storage), BlobStore.from_settings(base.storage)
    assert import_paths([_pool(tmp_path / "pool")], cat, blobs, base).added == 12
    cat.dispose()
    out = {}
    for kind in ("thread", "dask"):
        home = tmp_path / kind
        shutil.copytree(tmp_path / "base", home)
        env = {**os.environ, "UNMARK_HOME": str(home), "UNMARK_DEDUP_CHUNK_SIZE": "4"}
        r = subprocess.run([sys.executable, "-m", "flows.cli", "dedup", "--task-runner", kind, "--json"],
                           env=env, capture_output=True, text=True, timeout=400)
        assert r.returncode == 0, r.stderr[-3000:]
        out[kind] = json.loads(r.stdout[r.stdout.index("{"):])
    assert out["dask"]["hashed"] == out["thread"]["hashed"] == 12
    assert out["dask"]["groups"] == out["thread"]["groups"] >= 4
    snaps = {kind: _snapshot(load_settings(home=tmp_path / kind)) for kind in out}
    assert snaps["dask"] == snaps["thread"]
