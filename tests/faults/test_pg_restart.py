"""PostgreSQL restarts under the pipeline (a fast shutdown, what ``pg_ctl restart -m fast`` does,
on a real server of this module's own): a transaction in flight is retried whole, connections
come back through pool pre-ping and connect retries, only connection-level errors are retried,
and a scrape and a two-worker clean through a restart end with exactly the rows of a run that
never saw one."""

from __future__ import annotations

import json
import subprocess
import time

import psycopg
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from pipeline.config import load_settings
from storage import open_catalog
from storage.models import Cleaning, Failure
from storage.retry import CatalogUnavailable
from tests.faults import catalog_state as cs
from tests.faults.test_sigterm import CLEAN_ROWS, N_CLEAN, _clean_env, _clean_pool, reference_clean

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def pg():
    """A PostgreSQL server that this module alone restarts."""
    from pgserver import running_server

    with running_server() as server:
        yield server


def _count(pg, url: str, table: str) -> int:
    try:
        with psycopg.connect(pg.dsn(url.rsplit("/", 1)[1]), connect_timeout=2) as conn:
            return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    except psycopg.Error:
        return 0


def test_transaction_in_flight_when_its_connection_dies_is_retried_whole(pg, tmp_path):
    url = pg.create_database()
    cat = open_catalog(load_settings(home=tmp_path / "h", catalog_url=url).storage)
    attempts = []

    def work(s):
        attempts.append(1)
        s.add(Failure(stage="probe", subject=f"row-{len(attempts)}", error_class="X", message="m", attempts=1))
        s.flush()
        if len(attempts) == 1:  # the server ends this session mid-transaction, as a restart does
            with psycopg.connect(pg.dsn("postgres"), autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (s.execute(text("SELECT pg_backend_pid()")).scalar(),))
        s.execute(text("SELECT 1"))

    try:
        cat.transact(work)
        with cat.session() as s:
            subjects = s.scalars(select(Failure.subject)).all()
        assert len(attempts) == 2 and subjects == ["row-2"]  # the first attempt rolled back whole

        # not a connection error: raised at once, never retried
        calls = []

        def duplicate(s):
            calls.append(1)
            s.add(Failure(stage="probe", subject="row-2", error_class="X", message="m", attempts=1))
            s.flush()

        with pytest.raises(IntegrityError):
            cat.transact(duplicate)
        assert len(calls) == 1
    finally:
        cat.dispose()


def test_server_that_stays_down_is_a_clear_error_after_the_deadline(pg, tmp_path):
    from pgserver import free_port

    settings = load_settings(home=tmp_path / "h", catalog_url=f"postgresql+psycopg://unmark@127.0.0.1:{free_port()}/x",
                             catalog_retry_s=1.5)
    cat = open_catalog(settings.storage, migrate_schema=False)
    t = time.monotonic()
    try:
        with pytest.raises(CatalogUnavailable, match="unreachable for"):
            cat.read(lambda s: s.execute(text("SELECT 1")).scalar())
    finally:
        cat.dispose()
    assert 1.4 < time.monotonic() - t < 10


def test_restart_mid_scrape_completes_with_the_rows_of_a_fault_free_run(pg, tmp_path, unmark_env):
    url = pg.create_database()
    settings = load_settings(home=tmp_path / "home", catalog_url=url)
    with cs.crawl_site() as site:
        proc, _ = cs.scrape_until(site.url("/"), dict(unmark_env, UNMARK_CATALOG_URL=url), lambda: _count(pg, url, "images"))
        pg.restart(down_s=2.0)
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-3000:]
        assert "connection lost" in err or json.loads(out)["pages_fetched"]  # it rode the restart out
        got = cs.snapshot(settings)
        want = cs.reference_scrape(site.url("/"), tmp_path / "reference")
    assert want["n_images"] == 30 * 4 + 1
    cs.assert_same_rows(got, want, ("n_images", "images", "n_sightings", "sightings", "pages", "failures"))


def test_restart_mid_clean_with_two_workers_cleans_each_image_once(pg, tmp_path, unmark_env):
    url = pg.create_database()
    settings = load_settings(home=tmp_path / "home", catalog_url=url)
    _clean_pool(settings, tmp_path)
    env = {**_clean_env(unmark_env), "UNMARK_CATALOG_URL": url, "UNMARK_CLAIM_BATCH": "2"}
    cmd = cs.unmark("clean", "--json", "--device", "cpu")
    workers = [cs.popen(cmd, env), cs.popen(cmd, env)]
    deadline = time.monotonic() + 120
    while _count(pg, url, "cleanings") < 2 and all(w.poll() is None for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _count(pg, url, "cleanings") < N_CLEAN, "the clean finished before the restart"
    pg.restart(down_s=2.0)
    outs = []
    for w in workers:
        out, err = w.communicate(timeout=300)
        assert w.returncode == 0, err[-3000:]
        outs.append(json.loads(out))
    assert sum(o["cleaned"] for o in outs) == N_CLEAN  # each image cleaned by exactly one worker

    got = cs.snapshot(settings)
    assert got["n_cleanings"] == N_CLEAN
    cs.assert_same_rows(got, reference_clean(tmp_path), CLEAN_ROWS)
    cat = open_catalog(settings.storage)
    try:
        with cat.session() as s:
            assert s.scalar(select(func.count()).select_from(Cleaning)) == N_CLEAN
    finally:
        cat.dispose()


def _triage_pg(pg, tmp_path, unmark_env):
    from tests.faults.test_sigterm_steps import triage_env, triage_pool

    url = pg.create_database()
    settings = load_settings(home=tmp_path / "home", catalog_url=url)
    triage_pool(settings)
    return url, settings, {**triage_env(unmark_env), "UNMARK_CATALOG_URL": url}


def _scored(pg, url: str) -> int:
    try:
        with psycopg.connect(pg.dsn(url.rsplit("/", 1)[1]), connect_timeout=2) as conn:
            return conn.execute("SELECT count(*) FROM images WHERE detector_version IS NOT NULL").fetchone()[0]
    except psycopg.Error:
        return 0


def _until_scored(pg, url: str, proc, at_least: int = 2) -> None:
    deadline = time.monotonic() + 120
    while _scored(pg, url) < at_least and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "triage finished before the restart"


def test_restart_mid_triage_completes_with_the_rows_of_a_fault_free_run(pg, tmp_path, unmark_env):
    from tests.faults.test_sigterm_steps import N_TRIAGE, reference_triage, triage_rows

    url, settings, env = _triage_pg(pg, tmp_path, unmark_env)
    proc = cs.popen(cs.unmark("triage", "--json"), env)
    _until_scored(pg, url, proc)
    pg.restart(down_s=2.0)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert json.loads(out)["scored"] == N_TRIAGE
    assert triage_rows(settings) == reference_triage(tmp_path)


def test_restart_longer_than_the_deadline_stops_triage_clearly_and_the_rerun_is_exact(pg, tmp_path, unmark_env):
    from tests.faults.test_sigterm_steps import N_TRIAGE, reference_triage, triage_rows

    url, settings, env = _triage_pg(pg, tmp_path, unmark_env)
    proc = cs.popen(cs.unmark("triage", "--json"), {**env, "UNMARK_CATALOG_RETRY_S": "2"})
    _until_scored(pg, url, proc)
    pg.restart(down_s=8.0)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 4, err[-3000:]  # EXIT_UNAVAILABLE
    assert "unreachable for" in err and "Traceback" not in err
    at_stop = _scored(pg, url)
    assert 0 < at_stop < N_TRIAGE and at_stop % 2 == 0  # whole chunks, the one in flight rolled back

    r = subprocess.run(cs.unmark("triage", "--json"), env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["scored"] == N_TRIAGE - at_stop
    assert triage_rows(settings) == reference_triage(tmp_path)
