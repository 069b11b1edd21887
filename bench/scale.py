"""Scale-out benchmark: perceptual hashing on 1 and 2 Dask workers, and cleaning with 1 and 2
Prefect process workers on one PostgreSQL catalog.

    python bench/scale.py [--hash-images 150] [--clean-images 32] [--skip-clean] [--no-write]

Hashing: the real dedup step (``pipeline.dedup.dedup``) with its hashing mapped onto a local Dask
cluster (``flows.mapped``, the ``ingest(task_runner="dask")`` path), on the photos of
``/work/shared/corpus/voc150`` (or generated ones), a fresh catalog per run; throughput = images
hashed / the step's hashing seconds, after the workers have imported everything (a warm-up map).

Cleaning: a PostgreSQL server (Debian's binaries, a temp folder), `prefect server start`, the
`clean/after-ingest` deployment from prefect.yaml, then N workers (`prefect worker start --limit 1`)
and N runs of the deployment on one catalog of watermarked images (a small remover: UNet base 16,
depth 3; 64-px tiles; one torch thread per worker). Throughput = images / (last claim done − first
claim taken), i.e. the time the workers were cleaning, without Prefect's scheduling and process
start-up, which is also reported (end to end, from the first run created to the last image).

Each worker is one process with one thread, so on a machine with fewer free cores than workers
(or busy with other jobs) the speed-ups say so. Figures: bench/results/scale.json; a dated section
in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import BENCH, write_results

ROOT = BENCH.parent
CORPUS = Path("/work/shared/corpus/voc150")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
sys.path.insert(0, str(ROOT / "tests" / "servers"))  # the PostgreSQL and Prefect server helpers the tests use
from prefectserver import (  # noqa: E402
    Processes,
    create_process_pool,
    free_port,
    prefect_bin,
    prefect_env,
    start_server,
    wait_for,
)


def photos(n: int) -> list[bytes]:
    """``n`` JPEG photos: the shared corpus, else skimage's sample photos at several crops."""
    files = sorted(CORPUS.glob("*.jpg"))[:n] if CORPUS.exists() else []
    if len(files) >= n:
        return [f.read_bytes() for f in files]
    import numpy as np
    from PIL import Image
    from skimage import data

    base = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    out = []
    for i in range(n):
        arr = base[i % len(base)]
        rng = np.random.default_rng(i)
        y, x = rng.integers(0, arr.shape[0] // 4), rng.integers(0, arr.shape[1] // 4)
        buf = io.BytesIO()
        Image.fromarray(arr[y:, x:]).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


# --- hashing on Dask -----------------------------------------------------------------------------


def hash_run(base_home: Path, work: Path, workers: int) -> dict:
    from prefect import flow, unmapped

    from flows import mapped
    from flows.runtime import task_runner
    from pipeline import dedup
    from pipeline.config import load_settings
    from pipeline.workspace import open_workspace

    home = work / f"hash-{workers}"
    shutil.copytree(base_home, home)
    settings = load_settings(home=home, dask_workers=workers, dedup_chunk_size=8)

    @flow(name="bench-hash", validate_parameters=False)
    def bench_hash(settings):
        with open_workspace(settings) as (catalog, blobs):
            # warm-up: every worker imports the hashing code and opens the blob store once
            with catalog.session() as s:
                from storage.models import Image

                jobs = [(i, k) for i, k in s.execute(Image.__table__.select().with_only_columns(
                    Image.id, Image.blob_key).limit(2 * workers))]
            for fut in mapped.hash_chunk.map(unmapped(settings), [[j] for j in jobs]):
                fut.result()
            t0 = time.perf_counter()
            summary = dedup.dedup(catalog, blobs, settings, hasher=mapped._mapped_hasher)
            return {"summary": summary, "wall_s": time.perf_counter() - t0}

    out = bench_hash.with_options(task_runner=task_runner("dask", settings))(settings)
    s = out["summary"]
    return {"workers": workers, "images": s["hashed"], "hash_s": s["seconds"]["hash"],
            "images_per_s": s["hashed"] / s["seconds"]["hash"], "dedup_s": out["wall_s"]}


def bench_hash(n: int, work: Path) -> dict:
    from pipeline.config import load_settings
    from storage import BlobStore, open_catalog
    from storage import queries as q

    base = work / "hash-base"
    settings = load_settings(home=base)
    cat, blobs = open_catalog(settings.storage), BlobStore.from_settings(settings.storage)
    from PIL import Image

    rows = []
    for data in photos(n):
        sha, key = blobs.put(data)
        w, h = Image.open(io.BytesIO(data)).size
        rows.append(dict(sha256=sha, blob_key=key, mime="image/jpeg", width=w, height=h, bytes=len(data)))
    with cat.write() as s:
        q.add_images(s, rows)
    cat.dispose()
    runs = [hash_run(base, work, k) for k in (1, 2)]
    return {"runs": runs, "speedup": runs[1]["images_per_s"] / runs[0]["images_per_s"]}


# --- cleaning with Prefect workers on PostgreSQL ---------------------------------------------------


def _remover(path: Path) -> bytes:
    import torch

    from model.remover.network import UNet, save_checkpoint

    torch.manual_seed(0)
    net = UNet(base=16, depth=3, mask_head=True)
    with torch.no_grad():
        net.head.weight.normal_(std=0.3)
        net.mask_out.weight.normal_(std=0.3)
    return save_checkpoint(net, path).read_bytes()


def _fill_catalog(settings, n: int, version: str, remover: bytes) -> None:
    from PIL import Image

    from storage import BlobStore, open_catalog, status
    from storage import queries as q

    cat, blobs = open_catalog(settings.storage), BlobStore.from_settings(settings.storage)
    _, key = blobs.put(remover)
    with cat.write() as s:
        q.register_model(s, version, "remover", key, config={}, metrics={})
        q.promote_model(s, version)
    rows = []
    for data in photos(n):
        sha, key = blobs.put(data)
        w, h = Image.open(io.BytesIO(data)).size
        rows.append(dict(sha256=sha, blob_key=key, mime="image/jpeg", width=w, height=h, bytes=len(data)))
    with cat.write() as s:
        for sha, image_id in q.add_images(s, rows).items():
            status.mark_reviewed(s, image_id, sha, "watermarked")
    cat.dispose()


def clean_run(workers: int, n: int, pg, tmp: Path, env_base: dict, api: str) -> dict:
    from sqlalchemy import func, select

    from pipeline.config import load_settings
    from storage import claims, open_catalog
    from storage.models import Claim

    url = pg.create_database(f"bench{workers}")
    home = tmp / f"clean-{workers}"
    settings = load_settings(home=home, catalog_url=url)
    version = f"remover-bench-{workers}"
    _fill_catalog(settings, n, version, _remover(tmp / "remover.pt"))
    env = {**env_base, "UNMARK_HOME": str(home), "UNMARK_CATALOG_URL": url}
    procs = Processes(tmp)
    try:
        for w in range(workers):
            procs.start(f"worker-{workers}-{w}", [prefect_bin(), "worker", "start", "--pool", "unmark-gpu", "--name",
                                                  f"bench-{workers}-{w}", "--limit", "1"], env)
        for w in range(workers):
            wait_for(lambda w=w: "started" in procs.log(f"worker-{workers}-{w}"), 120, f"worker {w}")
        import httpx

        dep = httpx.get(f"{api}/deployments/name/clean/after-ingest", timeout=10).json()
        t0 = time.time()
        for _ in range(workers):  # what `prefect deployment run clean/after-ingest` does, N times at once
            r = httpx.post(f"{api}/deployments/{dep['id']}/create_flow_run", timeout=10,
                           json={"parameters": {"write_report": False}})
            r.raise_for_status()
        cat = open_catalog(settings.storage)
        stage = f"clean:{version}"

        def done() -> bool:
            with cat.session() as s:
                p = claims.progress(s, stage)
            return p["total"] == n and p["done"] == n

        wait_for(done, 1800, f"{workers} worker(s) to clean {n} images", every=1.0)
        with cat.session() as s:
            first, last = s.execute(select(func.min(Claim.claimed_at), func.max(Claim.done_at))
                                    .where(Claim.stage == stage)).one()
            per_worker = dict(s.execute(select(Claim.worker, func.count()).where(Claim.stage == stage)
                                        .group_by(Claim.worker)).all())
        cat.dispose()
        window = (last - first).total_seconds()
        return {"workers": workers, "images": n, "cleaning_s": window, "images_per_s": n / window,
                "end_to_end_s": last.timestamp() - t0, "images_per_worker": sorted(per_worker.values())}
    finally:
        procs.stop_all()


def bench_clean(n: int, work: Path, api: str, env: dict) -> dict:
    from pgserver import PostgresServer, find_pg_bindir

    bindir = find_pg_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL binaries not found (apt-get install postgresql)")
    pg = PostgresServer(bindir).start()
    env = {**env, "PREFECT_WORKER_QUERY_SECONDS": "1", "UNMARK_ROOT": str(ROOT),
           "UNMARK_CLAIM_BATCH": "2", "UNMARK_CLEAN_CHUNK_IMAGES": "2", "UNMARK_NUM_WORKERS": "0",
           "UNMARK_CLEAN_TILE": "64", "UNMARK_CLEAN_OVERLAP": "16", "OMP_NUM_THREADS": "1"}
    try:
        create_process_pool(api, "unmark-gpu")
        r = subprocess.run([prefect_bin(), "--no-prompt", "deploy", "--name", "after-ingest"], env=env,
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
        if r.returncode:
            raise RuntimeError(r.stdout + r.stderr)
        runs = [clean_run(k, n, pg, work, env, api) for k in (1, 2)]
    finally:
        pg.stop()
    return {"runs": runs, "speedup": runs[1]["images_per_s"] / runs[0]["images_per_s"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hash-images", type=int, default=150)
    ap.add_argument("--clean-images", type=int, default=32)
    ap.add_argument("--skip-clean", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="print only (no results JSON, no RESULTS.md)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="unmark-bench-scale-"))
    # `prefect server start` on a free loopback port with its own PREFECT_HOME; this process and
    # every worker talk to it (no ephemeral server)
    port = free_port()
    env = prefect_env(work, port)
    server = Processes(work)
    api = start_server(server, env, port, timeout=300)
    os.environ.update({"PREFECT_HOME": env["PREFECT_HOME"], "PREFECT_API_URL": api})
    try:
        hashed = bench_hash(args.hash_images, work)
        for r in hashed["runs"]:
            print(f"hash  {r['workers']} Dask worker(s): {r['images_per_s']:.1f} images/s "
                  f"({r['images']} in {r['hash_s']:.2f} s)")
        print(f"hash  speed-up with 2 workers: {hashed['speedup']:.2f}x (scaling efficiency "
              f"{hashed['speedup'] / 2:.0%})")
        cleaned = None if args.skip_clean else bench_clean(args.clean_images, work, api, env)
        if cleaned:
            for r in cleaned["runs"]:
                print(f"clean {r['workers']} Prefect worker(s): {r['images_per_s']:.2f} images/s "
                      f"({r['images']} in {r['cleaning_s']:.1f} s; {r['end_to_end_s']:.1f} s end to end; "
                      f"per worker {r['images_per_worker']})")
            print(f"clean speed-up with 2 workers: {cleaned['speedup']:.2f}x (scaling efficiency "
                  f"{cleaned['speedup'] / 2:.0%})")
    finally:
        server.stop_all()
        shutil.rmtree(work, ignore_errors=True)

    figures = {
        "hash_speedup_2_workers": round(hashed["speedup"], 3),
        "hash_images_per_s": {str(r["workers"]): round(r["images_per_s"], 2) for r in hashed["runs"]},
        "hash_images": args.hash_images,
    }
    lines = ["| step | workers | images | seconds | images/s |", "|---|---|---|---|---|"]
    for r in hashed["runs"]:
        lines.append(f"| hashing (Dask) | {r['workers']} | {r['images']} | {r['hash_s']:.2f} | {r['images_per_s']:.1f} |")
    if cleaned:
        figures.update({
            "clean_speedup_2_workers": round(cleaned["speedup"], 3),
            "clean_images_per_s": {str(r["workers"]): round(r["images_per_s"], 3) for r in cleaned["runs"]},
            "clean_end_to_end_s": {str(r["workers"]): round(r["end_to_end_s"], 1) for r in cleaned["runs"]},
            "clean_images": args.clean_images,
        })
        for r in cleaned["runs"]:
            lines.append(f"| cleaning (Prefect workers, PostgreSQL) | {r['workers']} | {r['images']} | "
                         f"{r['cleaning_s']:.1f} | {r['images_per_s']:.2f} |")
    body = "\n".join(lines) + "\n\n" + (
        f"**hash_speedup_2_workers = {figures['hash_speedup_2_workers']}** (scaling efficiency "
        f"{hashed['speedup'] / 2:.0%})"
        + (f"; **clean_speedup_2_workers = {figures['clean_speedup_2_workers']}** (scaling efficiency "
           f"{cleaned['speedup'] / 2:.0%}); cleaning end to end (runs created → last image): "
           + ", ".join(f"{k} worker(s) {v} s" for k, v in figures["clean_end_to_end_s"].items()) if cleaned else "")
        + ".\n\nHashing: the dedup step with its hashing mapped onto a local Dask cluster (one thread per "
        "worker process), photos from /work/shared/corpus/voc150, seconds = the step's hashing phase after a "
        "warm-up map. Cleaning: `clean/after-ingest` runs on `prefect worker start --limit 1` workers, one "
        "PostgreSQL catalog, images claimed 2 at a time; seconds = first claim taken to last claim done; "
        "remover UNet base 16 / depth 3, 64-px tiles, one torch thread per worker. Every worker is one busy "
        "core: on this 2-core machine shared with other jobs, the load average above bounds what a second "
        "worker can add."
    )
    if args.no_write:
        print(body)
    else:
        write_results("scale", figures, body)


if __name__ == "__main__":
    main()
