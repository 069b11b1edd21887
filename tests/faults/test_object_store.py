"""The object store stops answering (the network to the real S3 API server goes down: connections
reset, the port refuses) and comes back, during ingest (scrape, import, dedup, triage) and during
cleaning.
Gets and puts are retried with backoff and ride the outage out; past the deadline a step fails
with a clear, named error and exit 4; no catalog row ever points at a blob that was not written,
no image stays claimed, and a re-run ends with the rows and objects of a fault-free run.

The network goes, not the server: moto keeps its objects in memory, so a killed server would
come back empty, which is a lost store, not an outage."""

from __future__ import annotations

import json
import subprocess
import threading
import time

import pytest

from pipeline.config import load_settings
from storage import BlobStore
from storage.blobs import BlobStoreUnavailable, blob_key, sha256_bytes
from tests.faults import catalog_state as cs
from tests.faults.test_sigterm import CLEAN_ROWS, N_CLEAN, clean_pool_env, reference_clean, start_clean
from tests.faults.test_sigterm_steps import (
    _groups,
    _scalar,
    _wait,
    groups_after_dedup,
    import_dedup_pool,
    reference_triage,
    triage_env,
    triage_pool,
    triage_rows,
)
from tests.pipeline.scrape_site import png_bytes


@pytest.fixture
def store(s3_server, s3_bucket):
    """(proxy in front of the session's S3 server, bucket, UNMARK_* environment for it)."""
    from s3server import S3_KEY_ID, S3_REGION, S3_SECRET, s3_env
    from tcpproxy import TcpProxy

    proxy = TcpProxy(int(s3_server.endpoint.rsplit(":", 1)[1]))
    env = {**s3_env(), "UNMARK_BLOB_ROOT": f"s3://{s3_bucket}/blobs", "UNMARK_BLOB_ENDPOINT_URL": proxy.endpoint,
           "UNMARK_BLOB_KEY_ID": S3_KEY_ID, "UNMARK_BLOB_SECRET": S3_SECRET, "UNMARK_BLOB_REGION": S3_REGION}
    try:
        yield proxy, s3_bucket, env
    finally:
        proxy.close()


def _settings(home, env: dict, **more):
    return load_settings(home=home, blob_root=env["UNMARK_BLOB_ROOT"], blob_endpoint_url=env["UNMARK_BLOB_ENDPOINT_URL"],
                         blob_key_id=env["UNMARK_BLOB_KEY_ID"], blob_secret=env["UNMARK_BLOB_SECRET"],
                         blob_region=env["UNMARK_BLOB_REGION"], **more)


def test_put_rides_out_an_outage_and_gives_up_clearly_past_its_deadline(store, tmp_path):
    proxy, _, env = store
    blobs = BlobStore.from_settings(_settings(tmp_path / "h", env, blob_retry_s=20.0).storage)
    blobs.put(b"warm-up")  # a live connection in the pool, which the outage resets
    proxy.down()
    threading.Timer(2.0, proxy.up).start()
    t = time.monotonic()
    sha, key = blobs.put(b"written during the outage")
    assert time.monotonic() - t >= 1.5  # it waited for the store rather than failing
    assert blobs.get(key) == b"written during the outage" and sha == sha256_bytes(b"written during the outage")

    short = BlobStore.from_settings(_settings(tmp_path / "h", env, blob_retry_s=1.0).storage)
    proxy.down()
    t = time.monotonic()
    with pytest.raises(BlobStoreUnavailable, match="unreachable for"):
        short.put(b"never written")
    assert time.monotonic() - t < 30
    proxy.up()
    assert not short.exists(blob_key(sha256_bytes(b"never written")))


def test_outage_mid_scrape_completes_with_the_rows_and_objects_of_a_fault_free_run(store, tmp_path, unmark_env):
    proxy, _, env = store
    settings = _settings(tmp_path / "home", env)
    db = str(settings.home / "catalog.sqlite")
    from tests.pipeline.test_scrape_resume import count_images

    with cs.crawl_site() as site:
        proc, _ = cs.scrape_until(site.url("/"), {**unmark_env, **env}, lambda: count_images(db))
        proxy.down()
        time.sleep(3.0)
        proxy.up()
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-3000:]
        assert json.loads(out)["images_failed"] == 0  # no image lost to the outage
        got = cs.snapshot(settings)
        want = cs.reference_scrape(site.url("/"), tmp_path / "reference")
    cs.assert_same_rows(got, want, ("n_images", "images", "n_sightings", "sightings", "pages", "failures"))


def test_store_down_past_the_deadline_fails_import_clearly_and_the_rerun_is_exact(store, tmp_path, unmark_env):
    proxy, _, env = store
    src = tmp_path / "src"
    src.mkdir()
    for i in range(8):
        (src / f"{i}.png").write_bytes(png_bytes(300 + i, 64, 48))
    run_env = {**unmark_env, **env, "UNMARK_BLOB_RETRY_S": "1", "UNMARK_WRITE_BATCH_SIZE": "3"}
    settings = _settings(tmp_path / "home", env)
    proxy.down()
    try:
        r = subprocess.run(cs.unmark("import", str(src), "--json"), env=run_env, capture_output=True, text=True,
                           cwd=cs.ROOT, timeout=120)
    finally:
        proxy.up()
    assert r.returncode == 4, r.stderr[-2000:]
    assert "unreachable" in r.stderr and "Traceback" not in r.stderr
    assert cs.snapshot(settings)["n_images"] == 0  # no row for a blob that was never written

    r = subprocess.run(cs.unmark("import", str(src), "--json"), env=run_env, capture_output=True, text=True,
                       cwd=cs.ROOT, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    ref = load_settings(home=tmp_path / "reference")
    r = subprocess.run(cs.unmark("import", str(src), "--json"), env={**unmark_env, "UNMARK_HOME": str(ref.home)},
                       capture_output=True, text=True, cwd=cs.ROOT, timeout=120)
    assert r.returncode == 0
    cs.assert_same_rows(cs.snapshot(settings), cs.snapshot(ref), ("images", "n_images", "failures"))


# --- cleaning ----------------------------------------------------------------------------------


def _clean_on_store(tmp_path, env: dict, unmark_env: dict, **more: str):
    """(settings, environment) of ``unmark clean`` over ``_clean_pool`` kept in the object store."""
    settings = _settings(tmp_path / "home", env)
    return settings, clean_pool_env(settings, tmp_path, unmark_env, **env, **more)


def cleanings(settings) -> int:
    return _scalar(settings.home / "catalog.sqlite", "SELECT count(*) FROM cleanings")


# longer than botocore's and s3fs's own retries ride out (about 7 s here): the step's deadline
# (blob_retry_s) is what carries the run through
OUTAGE_S = 10.0


def test_outage_mid_clean_is_ridden_out_and_the_rows_are_exact(store, tmp_path, unmark_env):
    proxy, _, env = store
    # one decoding process: its reads ride the outage out under the same deadline as the puts
    settings, run_env = _clean_on_store(tmp_path, env, unmark_env, UNMARK_BLOB_RETRY_S="30", UNMARK_NUM_WORKERS="1")
    proc = start_clean(run_env, lambda: cleanings(settings))
    proxy.down()
    time.sleep(OUTAGE_S)
    assert proc.poll() is None, "the clean ended during the outage"
    proxy.up()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads(out)
    assert summary["cleaned"] == N_CLEAN and summary["failed"] == 0  # no image lost to the outage
    cs.assert_same_rows(cs.snapshot(settings), reference_clean(tmp_path), CLEAN_ROWS)


@pytest.mark.parametrize("workers", ["0", "1"], ids=["decode-in-process", "decode-worker"])
def test_store_down_past_the_deadline_stops_clean_clearly_and_the_rerun_is_exact(store, tmp_path, unmark_env,
                                                                                 workers):
    proxy, _, env = store
    settings, run_env = _clean_on_store(tmp_path, env, unmark_env, UNMARK_BLOB_RETRY_S="1",
                                        UNMARK_NUM_WORKERS=workers)
    proc = start_clean(run_env, lambda: cleanings(settings))
    proxy.down()
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        proxy.up()
    assert proc.returncode == 4, err[-3000:]  # EXIT_UNAVAILABLE
    assert "unreachable for" in err and "Traceback" not in err
    state = cs.snapshot(settings)
    at_stop = state["n_cleanings"]
    assert 0 < at_stop < N_CLEAN and at_stop % 2 == 0, f"whole chunks only, mid-run ({at_stop} of {N_CLEAN})"
    assert not state["dangling"], f"rows naming blobs never written: {sorted(state['dangling'])[:3]}"
    assert not state["held_claims"], "claims left held after the outage"
    assert not state["failures"], "the outage was recorded as the images' failures"

    r = subprocess.run(cs.unmark("clean", "--json", "--device", "cpu"), env=run_env, capture_output=True, text=True,
                       cwd=cs.ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["cleaned"] == N_CLEAN - at_stop  # nothing done twice
    cs.assert_same_rows(cs.snapshot(settings), reference_clean(tmp_path), CLEAN_ROWS)


# --- dedup and triage: the store goes down mid-step ---------------------------------------------


def _down_mid_step(proxy, proc, progress, what: str) -> tuple[str, str]:
    """Take the store down once ``progress()`` shows the step under way; (stdout, stderr) at its end."""
    _wait(proc, progress, what)
    proxy.down()
    try:
        return proc.communicate(timeout=180)
    finally:
        proxy.up()


def _assert_stopped_on_the_store(proc, err: str, db) -> None:
    assert proc.returncode == 4, err[-3000:]  # EXIT_UNAVAILABLE
    assert "unreachable for" in err and "Traceback" not in err
    assert _scalar(db, "SELECT count(*) FROM failures") == 0, "the outage was recorded as the images' failures"
    assert _scalar(db, "SELECT count(*) FROM images WHERE status = 'failed'") == 0


DEDUP_POOL = (120, 24)  # distinct pictures, near copies
TRIAGE_POOL = (12, 256)  # photos, side


def test_store_down_mid_dedup_stops_it_clearly_and_the_rerun_is_exact(store, tmp_path, unmark_env):
    proxy, _, env = store
    settings = _settings(tmp_path / "home", env)
    import_dedup_pool(settings, tmp_path / "src", *DEDUP_POOL)
    db = settings.home / "catalog.sqlite"
    hashed_sql = "SELECT count(*) FROM images WHERE phash IS NOT NULL"
    run_env = {**unmark_env, **env, "UNMARK_BLOB_RETRY_S": "1", "UNMARK_DEDUP_WORKERS": "2",
               "UNMARK_DEDUP_CHUNK_SIZE": "8", "UNMARK_WRITE_BATCH_SIZE": "8"}
    proc = cs.popen(cs.unmark("dedup", "--json"), run_env)
    _, err = _down_mid_step(proxy, proc, lambda: _scalar(db, hashed_sql) >= 16, "dedup")
    _assert_stopped_on_the_store(proc, err, db)
    hashed = _scalar(db, hashed_sql)
    assert 0 < hashed < sum(DEDUP_POOL), f"the outage did not land mid-hashing ({hashed})"

    r = subprocess.run(cs.unmark("dedup", "--json"), env=run_env, capture_output=True, text=True, cwd=cs.ROOT,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["hashed"] == sum(DEDUP_POOL) - hashed  # nothing hashed twice, nothing lost
    ref = load_settings(home=tmp_path / "reference")
    import_dedup_pool(ref, tmp_path / "src-reference", *DEDUP_POOL)
    got, want = _groups(settings), groups_after_dedup(ref, DEDUP_POOL[1])
    assert got["n"] == want["n"] == sum(DEDUP_POOL) and got["windows"] == want["windows"]
    assert got["rows"] == want["rows"], f"lost {list(want['rows'] - got['rows'])[:3]}"


def test_store_down_mid_triage_stops_it_clearly_and_the_rerun_is_exact(store, tmp_path, unmark_env):
    proxy, _, env = store
    settings = _settings(tmp_path / "home", env)
    triage_pool(settings, *TRIAGE_POOL)
    db = settings.home / "catalog.sqlite"
    scored_sql = "SELECT count(*) FROM images WHERE detector_version IS NOT NULL"
    run_env = {**triage_env(unmark_env), **env, "UNMARK_BLOB_RETRY_S": "1"}
    proc = cs.popen(cs.unmark("triage", "--json"), run_env)
    _, err = _down_mid_step(proxy, proc, lambda: _scalar(db, scored_sql) >= 2, "triage")
    _assert_stopped_on_the_store(proc, err, db)
    at_stop = _scalar(db, scored_sql)
    n = TRIAGE_POOL[0]
    assert 0 < at_stop < n and at_stop % 2 == 0, f"whole chunks only, mid-run ({at_stop} of {n})"

    r = subprocess.run(cs.unmark("triage", "--json"), env=run_env, capture_output=True, text=True, cwd=cs.ROOT,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["scored"] == n - at_stop  # nothing scored twice
    assert triage_rows(settings) == reference_triage(tmp_path, "reference", *TRIAGE_POOL)
