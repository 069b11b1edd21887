"""Work claiming on both backends: leases, expiry, ownership on completion, and processes
claiming one catalog at once (one of them killed mid-batch)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from sqlalchemy import select

from storage import claims
from storage import queries as q
from storage.models import Claim, Cleaning

STAGE = "clean:r-test"


def _images(catalog, n: int) -> list[int]:
    rows = []
    for i in range(n):
        sha = hashlib.sha256(f"img-{i}".encode()).hexdigest()
        rows.append({"sha256": sha, "blob_key": sha, "mime": "image/png", "width": 64, "height": 64, "bytes": 1})
    with catalog.write() as s:
        ids = sorted(q.add_images(s, rows).values())
        claims.enqueue(s, STAGE, ids)
    return ids


def test_claim_complete_release_and_progress(catalog):
    ids = _images(catalog, 10)
    with catalog.write() as s:
        assert claims.enqueue(s, STAGE, ids[:3]) == 3  # idempotent
    a, b = claims.worker_id("a"), claims.worker_id("b")
    got_a = claims.claim(catalog, STAGE, a, limit=4)
    got_b = claims.claim(catalog, STAGE, b, limit=4)
    assert got_a == ids[:4] and got_b == ids[4:8]
    with catalog.write() as s:
        assert claims.complete(s, STAGE, b, got_a) == []  # not b's
        assert claims.complete(s, STAGE, a, got_a[:2]) == got_a[:2]
        assert claims.complete(s, STAGE, a, got_a[:2]) == []  # done already
    with catalog.session() as s:
        assert claims.progress(s, STAGE) == {"total": 10, "done": 2, "held": 6, "free": 2, "given_up": 0}
        assert claims.holders(s, STAGE) == {a: 2, b: 4}
    assert claims.release(catalog, STAGE, b) == 4
    assert claims.renew(catalog, STAGE, a, ids) == got_a[2:]
    # b's released rows come back first (lowest ids), then the never-claimed ones
    assert claims.claim(catalog, STAGE, b, limit=10) == ids[4:]
    with catalog.session() as s:
        released = s.scalars(select(Claim.attempts).where(Claim.image_id.in_(ids[4:8]))).all()
        assert released == [1, 1, 1, 1]  # the release did not count as an attempt


def test_expired_lease_is_reclaimable_and_old_holder_loses_it(catalog):
    ids = _images(catalog, 3)
    a, b = "worker-a", "worker-b"
    assert claims.claim(catalog, STAGE, a, limit=3, lease_s=0.5) == ids
    assert claims.claim(catalog, STAGE, b, limit=3) == []  # a's lease is live
    time.sleep(0.7)
    assert claims.claim(catalog, STAGE, b, limit=2) == ids[:2]
    with catalog.write() as s:
        # a finishes late: only the row nobody took over is still a's to complete
        assert claims.complete(s, STAGE, a, ids) == [ids[2]]
        assert claims.complete(s, STAGE, b, ids) == ids[:2]
    with catalog.session() as s:
        p = claims.progress(s, STAGE)
        assert p["done"] == 3 and p["held"] == 0
        assert s.scalars(select(Claim.attempts).order_by(Claim.image_id)).all() == [2, 2, 1]


def test_rows_that_keep_failing_are_given_up(catalog):
    ids = _images(catalog, 2)
    for _ in range(3):
        assert claims.claim(catalog, STAGE, "w", limit=1, lease_s=-1, max_attempts=3) == ids[:1]
    assert claims.claim(catalog, STAGE, "w", limit=5, lease_s=-1, max_attempts=3) == ids[1:]
    with catalog.session() as s:
        assert claims.progress(s, STAGE, max_attempts=3)["given_up"] == 1


# A claimer process: claims batches until the stage is done, "does" each image by adding its
# Cleaning row (unique per image and version: a second cleaning of one image would fail the
# transaction) in the same transaction as complete(), and prints what it claimed and completed.
CLAIMER = textwrap.dedent(
    """
    import json, sys, time
    from storage import claims, open_catalog
    from storage.models import Cleaning

    url, stage, name, lease, limit, mode, start_at = sys.argv[1:8]
    cat = open_catalog(url=url)
    me = claims.worker_id(name)
    while time.time() < float(start_at):
        time.sleep(0.001)
    while True:
        got = claims.claim(cat, stage, me, limit=int(limit), lease_s=float(lease))
        if not got:
            with cat.session() as s:
                p = claims.progress(s, stage)
            if p["done"] == p["total"]:
                break
            time.sleep(0.2)  # others hold the rest (perhaps a dead worker until its lease ends)
            continue
        print(json.dumps({"claimed": got}), flush=True)
        if mode == "die":
            time.sleep(3600)  # killed by the test while holding the batch
        time.sleep(0.01 * len(got))  # the work
        with cat.write() as s:
            mine = claims.complete(s, stage, me, got)
            for i in mine:
                s.add(Cleaning(image_id=i, model_version="r-test", output_key=f"out-{i}"))
        print(json.dumps({"done": mine}), flush=True)
    """
)


def _claimer(catalog, name: str, lease: float, limit: int, mode: str = "work", start_at: float = 0.0):
    return subprocess.Popen(
        [sys.executable, "-c", CLAIMER, catalog.url, STAGE, name, str(lease), str(limit), mode, str(start_at)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
    )


def _results(procs) -> tuple[list[list[int]], list[list[int]]]:
    claimed, done = [], []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        claimed.append([i for d in lines for i in d.get("claimed", [])])
        done.append([i for d in lines for i in d.get("done", [])])
    return claimed, done


def test_concurrent_claimers_never_share_an_id(catalog):
    ids = _images(catalog, 60)
    start_at = time.time() + 3.0  # all three start claiming at the same instant
    procs = [_claimer(catalog, f"w{k}", lease=120, limit=4, start_at=start_at) for k in range(3)]
    claimed, done = _results(procs)
    flat = [i for c in claimed for i in c]
    assert sorted(flat) == ids  # every id claimed, and by exactly one worker, once
    assert sorted(i for d in done for i in d) == ids
    assert sum(1 for c in claimed if c) >= 2  # the work was really shared
    with catalog.session() as s:
        assert s.query(Cleaning).count() == 60
        assert claims.progress(s, STAGE)["done"] == 60


@pytest.mark.slow
def test_killed_claimer_work_comes_back_after_expiry_and_is_done_once(catalog):
    ids = _images(catalog, 40)
    victim = _claimer(catalog, "victim", lease=3, limit=10, mode="die")
    first = json.loads(victim.stdout.readline())["claimed"]
    assert first == ids[:10]
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    killed_at = time.monotonic()
    survivors = [_claimer(catalog, f"s{k}", lease=120, limit=4) for k in range(2)]
    claimed, done = _results(survivors)
    assert time.monotonic() - killed_at >= 2.0  # the victim's ids waited for its lease to end
    flat = [i for c in claimed for i in c]
    assert sorted(flat) == ids  # the survivors took everything once, the victim's ids included
    assert sorted(i for d in done for i in d) == ids
    with catalog.session() as s:
        assert s.query(Cleaning).count() == 40
        attempts = dict(s.execute(select(Claim.image_id, Claim.attempts)).all())
        assert all(attempts[i] == 2 for i in first) and all(attempts[i] == 1 for i in ids[10:])


def test_dead_local_holder_is_freed_at_once(catalog):
    """A claimer on this machine that was killed (its pid is gone) does not make a re-run wait for
    its lease; a live one, or one on another machine, keeps its claims."""
    ids = _images(catalog, 6)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # a pid that is certainly dead now
    host = claims.socket.gethostname()
    dead, live, remote = f"clean@{host}:{proc.pid}:dead", claims.worker_id("live"), f"clean@elsewhere:{proc.pid}:x"
    assert claims.claim(catalog, STAGE, dead, limit=2) == ids[:2]
    assert claims.claim(catalog, STAGE, live, limit=2) == ids[2:4]
    assert claims.claim(catalog, STAGE, remote, limit=2) == ids[4:]
    assert claims.free_dead_local(catalog, STAGE) == 2
    assert claims.claim(catalog, STAGE, live, limit=10) == ids[:2]
    with catalog.session() as s:
        assert claims.holders(s, STAGE) == {live: 4, remote: 2}


def test_reopen_retries_failures_but_never_completed_results(catalog):
    """A new run reopens work that ended without a result (a failure), never work whose result
    exists, even when that result lands between the run's look-up and its reopen."""
    from sqlalchemy import exists

    ids = _images(catalog, 3)
    assert claims.claim(catalog, STAGE, "w", limit=3) == ids
    with catalog.write() as s:
        assert claims.complete(s, STAGE, "w", ids) == ids
        s.add(Cleaning(image_id=ids[0], model_version="r-test", output_key="out"))  # ids[1:] failed
    has_result = exists().where(Cleaning.image_id == Claim.image_id, Cleaning.model_version == "r-test")
    with catalog.write() as s:
        assert claims.reopen(s, STAGE, ids, unless=has_result) == 2
    assert claims.claim(catalog, STAGE, "w2", limit=5) == ids[1:]
    with catalog.session() as s:
        assert claims.progress(s, STAGE) == {"total": 3, "done": 1, "held": 2, "free": 0, "given_up": 0}
