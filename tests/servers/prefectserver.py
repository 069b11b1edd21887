"""A throwaway Prefect server, work pools and workers on loopback, for the deployment tests and
``bench/scale.py``: ``prefect server start`` at a free port, each process in its own session with
its output in a log file, everything stopped by PID (its descendants too) at the end.

    procs = Processes(tmp)
    env = prefect_env(tmp, port, UNMARK_HOME=...)
    try:
        api = start_server(procs, env, port)
        create_process_pool(api, "unmark-cpu")
        procs.start("worker", [prefect_bin(), "worker", "start", "--pool", "unmark-cpu"], env)
        wait_for(lambda: "started" in procs.log("worker"), 60, "the worker")
    finally:
        procs.stop_all()
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
from pgserver import free_port

__all__ = ["Processes", "create_process_pool", "free_port", "prefect_bin", "prefect_env", "start_server", "wait_for"]

ROOT = Path(__file__).resolve().parents[2]


def prefect_bin() -> str:
    """The ``prefect`` command of the running interpreter's environment."""
    return str(Path(sys.executable).parent / "prefect")


def wait_for(predicate: Callable[[], object], timeout: float, what: str, every: float = 0.5):
    """Poll ``predicate`` until it returns something truthy (returned), or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


class Processes:
    """Background processes, each in its own session (process group), logging to ``<logs>/<name>.log``."""

    def __init__(self, logs: Path):
        self.logs = Path(logs)
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, args: list[str], env: dict) -> subprocess.Popen:
        with open(self.logs / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs[name] = proc
        return proc

    def log(self, name: str, tail: int | None = None) -> str:
        path = self.logs / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return text[-tail:] if tail else text

    def kill_tree(self, name: str) -> list[int]:
        """SIGKILL a process and every descendant (a worker's flow-run subprocess has its own
        session, so its process group alone would miss it). Returns the PIDs killed."""
        pids = self.signal_tree(name, signal.SIGKILL)
        self.procs[name].wait(10)
        return pids

    def signal_tree(self, name: str, sig: int) -> list[int]:
        """Send ``sig`` to a process and every descendant (SIGSTOP / SIGCONT: freeze and thaw a
        machine). Returns the PIDs signalled."""
        tree = _tree(self.procs[name].pid)
        for p in tree:
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        return [p.pid for p in tree]

    def stop_all(self, grace: float = 20) -> None:
        """Workers first (SIGTERM is a graceful stop), then the server; SIGKILL after ``grace``
        seconds; then every descendant found at the start, so that nothing survives."""
        procs = list(reversed(self.procs.values()))
        descendants = [d for proc in procs for d in _tree(proc.pid)[1:]]
        for proc in procs:
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for proc in procs:
            _signal_group(proc.pid, signal.SIGKILL)
        for d in descendants:
            try:
                d.kill()
            except psutil.NoSuchProcess:
                pass


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def prefect_env(tmp: Path, port: int, **extra: str) -> dict:
    """The environment for the server, ``prefect`` commands and workers: Prefect's home, results
    and API URL under ``tmp`` and ``port``, analytics off, this repository as ``UNMARK_ROOT``."""
    env = dict(os.environ)
    env.update({
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "PREFECT_HOME": str(Path(tmp) / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(Path(tmp) / "prefect-storage"),
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "UNMARK_ROOT": str(ROOT),
        **extra,
    })
    return env


def start_server(procs: Processes, env: dict, port: int, timeout: float = 180) -> str:
    """``prefect server start`` on 127.0.0.1:``port`` as process ``server``; returns the API URL
    once ``/health`` answers."""
    api = f"http://127.0.0.1:{port}/api"
    procs.start("server", [prefect_bin(), "server", "start", "--host", "127.0.0.1", "--port", str(port),
                           "--analytics-off"], env)

    def healthy() -> bool:
        try:
            return httpx.get(f"{api}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, timeout, f"the Prefect server on port {port}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; its log:\n{procs.log('server', 2000)}") from None
    return api


def create_process_pool(api: str, name: str) -> None:
    """What ``prefect work-pool create NAME --type process`` does, through the REST API. The CLI
    first asks the server for Prefect's collection registry, which the server looks up on GitHub
    (falling back to its bundled copy offline); that lookup alone would trip the network guard."""
    from prefect.workers.process import ProcessWorker

    resp = httpx.post(f"{api}/work_pools/", timeout=10, json={
        "name": name, "type": "process", "base_job_template": ProcessWorker.get_default_base_job_template()})
    if resp.status_code != 201:
        raise AssertionError(f"creating work pool {name}: {resp.status_code} {resp.text}")
