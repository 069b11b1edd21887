"""Two Prefect process workers on one pool clean one PostgreSQL catalog at the same time, and one
of them dies halfway (the worker and its flow-run process, SIGKILL: a machine lost). Every
watermarked image is still cleaned exactly once: the clean step claims its images
(storage/claims.py), the dead worker's claims come back when their lease runs out, and only a
claim's holder records a result.

Everything runs on loopback: PostgreSQL (tests/servers/pgserver.py), `prefect server start`, the
`clean/after-ingest` deployment from this repository's prefect.yaml, two `prefect worker start`."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image as PILImage
from prefectserver import Processes, create_process_pool, free_port, prefect_env, start_server, wait_for
from sqlalchemy import func, select, update

from pipeline.config import load_settings
from storage import BlobStore, claims, open_catalog
from storage import queries as q
from storage.models import Claim, Cleaning, Image

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
POOL = "unmark-gpu"  # the pool prefect.yaml gives clean/after-ingest
N_IMAGES = 40
LEASE_S = 8

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def _photo(seed: int, h: int = 208, w: int = 288) -> bytes:
    from skimage import data

    base = np.asarray(PILImage.fromarray(data.astronaut()).resize((w, h)))
    rng = np.random.default_rng(seed)
    arr = np.clip(base.astype(int) + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _remover_bytes(tmp_path: Path) -> bytes:
    import torch

    from model.remover.network import UNet, save_checkpoint

    torch.manual_seed(0)
    net = UNet(base=8, depth=3, mask_head=True)
    with torch.no_grad():  # the heads start at zero; randomise them so the model changes images
        net.head.weight.normal_(std=0.3)
        net.mask_out.weight.normal_(std=0.3)
    return save_checkpoint(net, tmp_path / "remover.pt").read_bytes()


def _catalog_with_pool(settings, tmp_path: Path) -> list[int]:
    cat, blobs = open_catalog(settings.storage), BlobStore.from_settings(settings.storage)
    _, key = blobs.put(_remover_bytes(tmp_path))
    ids = []
    with cat.write() as s:
        q.register_model(s, "remover-scale", "remover", key, config={}, metrics={})
        q.promote_model(s, "remover-scale")
    for i in range(N_IMAGES):
        data = _photo(i)
        sha, key = blobs.put(data)
        with cat.write() as s:
            iid = q.add_images(s, [dict(sha256=sha, blob_key=key, mime="image/png", width=288, height=208,
                                        bytes=len(data))])[sha]
            s.execute(update(Image).where(Image.id == iid).values(label="watermarked", status="watermarked"))
        ids.append(iid)
    cat.dispose()
    return ids


def _flow_runs(api: str) -> list[dict]:
    return httpx.post(f"{api}/flow_runs/filter", json={}, timeout=10).json()


def test_two_workers_one_killed_every_image_cleaned_exactly_once(tmp_path, pg_url):
    home = tmp_path / "home"
    settings = load_settings(home=home, catalog_url=pg_url)
    ids = _catalog_with_pool(settings, tmp_path)

    port = free_port()
    env = prefect_env(
        tmp_path, port,
        # every worker: the same catalog (PostgreSQL) and blob store, small claims, a short lease
        UNMARK_HOME=str(home),
        UNMARK_CATALOG_URL=pg_url,
        UNMARK_CLAIM_BATCH="2",
        UNMARK_CLAIM_LEASE_S=str(LEASE_S),
        UNMARK_CLEAN_CHUNK_IMAGES="1",
        UNMARK_NUM_WORKERS="0",
        UNMARK_CLEAN_TILE="64",
        UNMARK_CLEAN_OVERLAP="16",
        OMP_NUM_THREADS="1",
    )
    procs = Processes(tmp_path)
    try:
        api = start_server(procs, env, port)
        create_process_pool(api, POOL)
        r = subprocess.run([str(BIN / "prefect"), "--no-prompt", "deploy", "--name", "after-ingest"], env=env,
                           cwd=ROOT, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]

        for w in ("a", "b"):  # one flow run at a time each: two runs land on two workers
            procs.start(f"worker-{w}", [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--name",
                                        f"scale-{w}", "--limit", "1"], env)
        for w in ("a", "b"):
            wait_for(lambda w=w: "started" in procs.log(f"worker-{w}"), 120, f"worker {w}")
        # two runs of the deployment at once (what `prefect deployment run clean/after-ingest` does)
        dep = httpx.get(f"{api}/deployments/name/clean/after-ingest", timeout=10).json()
        for _ in range(2):
            r = httpx.post(f"{api}/deployments/{dep['id']}/create_flow_run", timeout=10,
                           json={"parameters": {"write_report": False}})
            assert r.status_code == 201, r.text

        cat = open_catalog(settings.storage)
        stage = "clean:remover-scale"

        def both_cleaning() -> bool:
            """Both runs have recorded cleanings and both hold a batch now."""
            with cat.session() as s:
                held = claims.holders(s, stage)
                done_by = dict(s.execute(select(Claim.worker, func.count())
                                         .where(Claim.stage == stage, Claim.done_at.is_not(None))
                                         .group_by(Claim.worker)).all())
            return len(held) >= 2 and set(held) <= set(done_by)

        wait_for(both_cleaning, 240, "both workers to be cleaning:\n" + procs.log("worker-a") + procs.log("worker-b"),
                 every=0.2)

        def kill_a_while_it_holds_a_batch() -> list[int] | None:
            """Freeze worker a (and its flow run); kill it if it holds a batch, else let it go on.
            Checking and killing a running worker raced: under load it could finish its batch in
            between, and die holding nothing."""
            pids = procs.signal_tree("worker-a", signal.SIGSTOP)
            with cat.session() as s:
                holds = any(int(w.rsplit(":", 2)[1]) in pids for w in claims.holders(s, stage))
            if holds:
                return procs.kill_tree("worker-a")
            procs.signal_tree("worker-a", signal.SIGCONT)
            return None

        victim_pids = wait_for(kill_a_while_it_holds_a_batch, 120, "worker a to hold a batch", every=0.05)
        with cat.session() as s:
            at_kill = claims.progress(s, stage)
            victim = {w for w in claims.holders(s, stage) if int(w.rsplit(":", 2)[1]) in victim_pids}
            victim_held = list(s.scalars(select(Claim.image_id).where(Claim.stage == stage, Claim.worker.in_(victim),
                                                                      Claim.done_at.is_(None))))
        assert victim and victim_held and at_kill["done"] < N_IMAGES, at_kill

        def finished() -> bool:
            with cat.session() as s:
                return claims.progress(s, stage)["done"] == N_IMAGES

        wait_for(finished, 300, "the surviving worker to finish the pool:\n" + procs.log("worker-b"))
        completed = wait_for(lambda: [r for r in _flow_runs(api) if r["state_type"] == "COMPLETED"], 120,
                             "the surviving flow run to complete")
        assert len(completed) == 1

        with cat.session() as s:
            cleanings = s.execute(select(Cleaning.image_id, Cleaning.output_key)).all()
            statuses = set(s.scalars(select(Image.status)))
            rows = {c.image_id: (c.done_at, c.attempts, c.worker)
                    for c in s.scalars(select(Claim).where(Claim.stage == stage))}
            by_worker = dict(s.execute(select(Claim.worker, func.count()).where(Claim.stage == stage)
                                       .group_by(Claim.worker)).all())
        cat.dispose()
        # exactly once: one cleaning per image (and its blob), each claim done once, by one worker
        assert sorted(i for i, _ in cleanings) == sorted(ids)
        blobs = BlobStore.from_settings(settings.storage)
        assert all(blobs.exists(k) for _, k in cleanings) and statuses == {"cleaned"}
        assert all(done_at is not None for done_at, _, _ in rows.values())
        # the dead worker's batch waited for its lease, then the survivor did it (a second attempt)
        assert all(rows[i][1] == 2 and rows[i][2] not in victim for i in victim_held)
        assert sum(by_worker.values()) == N_IMAGES and len(by_worker) == 2  # the victim's done ones + the survivor's
    finally:
        procs.stop_all()
