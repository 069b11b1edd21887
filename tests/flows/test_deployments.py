"""The real deployment path, on loopback: ``prefect server start`` at a free port, both work pools,
``prefect --no-prompt deploy --all`` with this repository's prefect.yaml, a worker per pool, then
``train/retrain`` (tiny profile) and ``ingest/nightly`` (against a local site) run to Completed
and land in the catalog; ``clean/after-ingest`` fires by itself after ingest. Every process is
started in its own process group and stopped by its PID."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update

from pipeline import summaries
from pipeline.config import load_settings
from pipeline.workspace import open_workspace
from storage import queries as q
from storage.models import Image

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """Background processes, each in its own process group, stopped by PID at the end."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, args: list[str], env: dict) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop_all(self) -> None:
        # Workers first (SIGTERM is a graceful stop), then the server; SIGKILL after a grace period.
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for _, proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        # The process groups may hold children (flow-run subprocesses, uvicorn): none may survive.
        for _, proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def run(args: list[str], env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def wait_for(predicate, timeout: float, what: str, every: float = 0.5):  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def create_process_pool(api: str, name: str) -> None:
    """What ``prefect work-pool create NAME --type process`` does, through the REST API. The CLI
    first asks the server for Prefect's collection registry, which the server looks up on GitHub
    (falling back to its bundled copy offline); that lookup alone would trip the network guard."""
    from prefect.workers.process import ProcessWorker

    resp = httpx.post(f"{api}/work_pools/", timeout=10, json={
        "name": name, "type": "process", "base_job_template": ProcessWorker.get_default_base_job_template()})
    assert resp.status_code == 201, resp.text


def label_from_manifest(settings, manifest, site_url: str) -> None:  # noqa: ANN001
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
    api = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ)
    env.update({
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api,
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(tmp_path / "prefect-storage"),
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "UNMARK_HOME": str(tmp_path / "unmark-home"),
        "UNMARK_ROOT": str(ROOT),
        **small_steps,
    })
    procs = Processes(tmp_path)
    # A SIGTERM to pytest (a CI timeout) must still stop the servers: turn it into an interrupt
    # so that the finally below runs.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        procs.start("server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port),
                               "--analytics-off"], env)

        def healthy() -> bool:
            try:
                return httpx.get(f"{api}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, 120, f"the Prefect server on port {port}:\n{procs.log('server')[-2000:]}")
        yield api, env, procs
    finally:
        procs.stop_all()
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):  # noqa: ANN001
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
        run_row = q.latest_training_run(s)
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
            made = q.count_cleanings(s, models[0][0])
    assert made >= pending > 0
