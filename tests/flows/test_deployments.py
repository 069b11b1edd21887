"""The real deployment path, on loopback: ``prefect server start`` at a free port, both work pools,
``prefect --no-prompt deploy --all`` with this repository's prefect.yaml, a worker per pool, then
``train/retrain`` (tiny profile) and ``ingest/nightly`` (against a local site) run to Completed
and land in the catalog; ``clean/after-ingest`` fires by itself after ingest. Every process is
started in its own process group and stopped by its PID."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prefectserver import Processes, create_process_pool, free_port, prefect_env, start_server, wait_for
from sqlalchemy import update

from pipeline import summaries
from pipeline.config import load_settings
from pipeline.workspace import open_workspace
from storage import queries as q
from storage import reports
from storage.models import Image

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def run(args: list[str], env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def label_from_manifest(settings, manifest, site_url: str) -> None:
    """Set every scraped image's triage label (and a clean image's split) from the site's truth."""
    truth = {p: "clean" for p in manifest.clean + manifest.near_duplicates}
    truth.update({p: "watermarked" for p in manifest.watermarked})
    with open_workspace(settings) as (catalog, _), catalog.write() as s:
        for row in q.list_images(s):
            label = truth[row["url"].removeprefix(site_url)]
            s.execute(update(Image).where(Image.id == row["id"]).values(
                label=label, status=label, split=q.split_for(row["sha256"]) if label == "clean" else None))


def flow_runs(api: str, deployment: str) -> list[dict]:
    dep = httpx.get(f"{api}/deployments/name/{deployment}", timeout=10).json()
    resp = httpx.post(f"{api}/flow_runs/filter", timeout=10,
                      json={"flow_runs": {"deployment_id": {"any_": [dep["id"]]}}})
    return [r for r in resp.json() if r["state_type"] != "SCHEDULED"]


@pytest.fixture
def prefect_server(tmp_path, small_steps):
    port = free_port()
    env = prefect_env(tmp_path, port, PREFECT_WORKER_QUERY_SECONDS="2", UNMARK_HOME=str(tmp_path / "unmark-home"),
                      **small_steps)
    procs = Processes(tmp_path)
    # A SIGTERM to pytest (a CI timeout) must still stop the servers: turn it into an interrupt
    # so that the finally below runs.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        api = start_server(procs, env, port, timeout=120)
        yield api, env, procs
    finally:
        procs.stop_all()
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def test_deploy_all_then_retrain_and_nightly_ingest_complete(prefect_server, tiny_site, tmp_path):
    api, env, procs = prefect_server
    manifest, site_url = tiny_site
    prefect = str(BIN / "prefect")
    for pool in ("unmark-cpu", "unmark-gpu"):
        create_process_pool(api, pool)
    r = run([prefect, "--no-prompt", "deploy", "--all"], env)
    assert r.returncode == 0, r.stdout + r.stderr
    names = {d["name"] for d in httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()}
    assert names == {"nightly", "retrain", "after-ingest", "full"}
    nightly = httpx.get(f"{api}/deployments/name/ingest/nightly", timeout=10).json()
    assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 2 * * *"]
    assert nightly["work_pool_name"] == "unmark-cpu"

    for pool in ("unmark-cpu", "unmark-gpu"):
        procs.start(f"worker-{pool}", [prefect, "worker", "start", "--pool", pool, "--name", f"test-{pool}"], env)
    for pool in ("unmark-cpu", "unmark-gpu"):
        wait_for(lambda pool=pool: "started" in procs.log(f"worker-{pool}"), 60, f"the {pool} worker")

    watch = ["--watch", "--watch-interval", "1", "--watch-timeout", "400"]
    r = run([prefect, "deployment", "run", "ingest/nightly", "--param", f"seeds={json.dumps([site_url])}",
             "--param", "allow_private_hosts=true", "--param", "max_pages=50", *watch], env, timeout=450)
    assert r.returncode == 0 and "Completed" in r.stdout, (r.stdout + r.stderr + procs.log("worker-unmark-cpu"))[-6000:]

    settings = load_settings(home=env["UNMARK_HOME"])
    with open_workspace(settings) as (catalog, _), catalog.session() as s:
        stats = q.catalog_stats(s)
    assert stats["pages"] > 0 and sum(stats["images"].values()) > 0
    assert "fetched" not in stats["images"]  # every image triaged

    # ingest/nightly completing fires clean/after-ingest (no remover yet: it completes, cleaning nothing).
    done = wait_for(lambda: [r for r in flow_runs(api, "clean/after-ingest") if r["state_type"] == "COMPLETED"],
                    120, "clean/after-ingest to be triggered and complete")
    assert len(done) == 1

    # What triage decided is not under test here (a test-sized detector is a coin toss): give
    # train/retrain and clean/after-ingest the site's true labels, as a reviewer would.
    label_from_manifest(settings, manifest, site_url)

    r = run([prefect, "deployment", "run", "train/retrain", "--param", "profile=tiny", "--param", "perceptual=off",
             *watch], env, timeout=450)
    assert r.returncode == 0 and "Completed" in r.stdout, (r.stdout + r.stderr + procs.log("worker-unmark-gpu"))[-6000:]
    with open_workspace(settings) as (catalog, _), catalog.session() as s:
        models = [(m.version, m.promoted) for m in q.list_models(s, "remover")]
        run_row = reports.latest_training_run(s)
        trained = (run_row.status, run_row.model_version) if run_row else None
    assert len(models) == 1 and models[0][1]  # registered and promoted (the first remover)
    assert trained == ("completed", models[0][0])

    # Run by hand now (the trigger fired before any remover existed): cleans the watermarked pool.
    with open_workspace(settings) as (catalog, _):
        pending = summaries.pending_cleanings(catalog, models[0][0])
    r = run([prefect, "deployment", "run", "clean/after-ingest", *watch], env, timeout=450)
    assert r.returncode == 0 and "Completed" in r.stdout, (r.stdout + r.stderr + procs.log("worker-unmark-gpu"))[-6000:]
    with open_workspace(settings) as (catalog, _):
        assert summaries.pending_cleanings(catalog, models[0][0]) == 0
        with catalog.session() as s:
            made = reports.count_cleanings(s, models[0][0])
    assert made >= pending > 0
