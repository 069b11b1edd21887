"""The Prefect server goes away mid-flow (SIGKILL) and comes back on the same port with the same
database. The flow run rides it out on Prefect's client retries and ends COMPLETED, with exactly
the rows of a fault-free run; the next run finds nothing new to do."""

from __future__ import annotations

import json
import sys
import time

import httpx

from tests.faults import catalog_state as cs
from tests.pipeline.test_scrape_resume import count_images


def _last_json(log: str) -> dict:
    return json.loads([line for line in log.splitlines() if line.startswith("{")][-1])


def test_server_killed_mid_flow_and_restarted_the_run_completes_exactly(tmp_path):
    from prefectserver import Processes, free_port, prefect_env, start_server, wait_for

    from pipeline.config import load_settings

    procs = Processes(tmp_path)
    port = free_port()
    home = tmp_path / "home"
    env = prefect_env(tmp_path, port, UNMARK_PER_HOST_CONCURRENCY="2", UNMARK_WRITE_BATCH_SIZE="8",
                      UNMARK_GLOBAL_CONCURRENCY="4")
    script = [sys.executable, str(cs.ROOT / "tests/faults/prefect_ingest.py")]
    try:
        api = start_server(procs, env, port)
        with cs.crawl_site() as site:
            run = procs.start("flow", [*script, site.url("/"), str(home)], env)
            wait_for(lambda: count_images(str(home / "catalog.sqlite")) >= 25 or run.poll() is not None, 120,
                     "the flow to be mid-scrape", every=0.05)
            assert run.poll() is None, f"the flow ended before the fault: {procs.log('flow', 3000)}"
            procs.kill_tree("server")
            time.sleep(2.0)
            start_server(procs, env, port)
            run.wait(timeout=300)
            assert run.returncode == 0, procs.log("flow", 4000)
            runs = httpx.post(f"{api}/flow_runs/filter", json={}, timeout=10).json()
            assert [r["state_type"] for r in runs] == ["COMPLETED"], [(r["name"], r["state_type"]) for r in runs]
            got = cs.snapshot(load_settings(home=home))

            again = procs.start("flow-again", [*script, site.url("/"), str(home)], env)
            again.wait(timeout=300)
            assert again.returncode == 0, procs.log("flow-again", 3000)
            assert _last_json(procs.log("flow-again"))["scrape"]["images_new"] == 0  # no work done twice
            want = cs.reference_scrape(site.url("/"), tmp_path / "reference")
    finally:
        procs.stop_all()
    cs.assert_same_rows(got, want, ("n_images", "images", "n_sightings", "sightings", "pages", "failures"))
