"""A throwaway PostgreSQL server for the tests: Debian's binaries, ``initdb`` in a temp folder, a
free port on 127.0.0.1, stopped by PID at the end of the session.

The fixtures are imported by ``tests/conftest.py``: ``postgres_server`` (session) and ``pg_url``
(a fresh, empty database per test). They skip only when no PostgreSQL binaries exist.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest


def find_pg_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<v>/bin`` (Debian), else wherever ``initdb`` is on PATH."""

    def version(p: str) -> float:
        try:
            return float(Path(p).parent.parent.name)
        except ValueError:
            return 0.0

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One ``postgres`` process on 127.0.0.1 with trust auth for the user ``unmark``.

    initdb and postgres refuse to run as root; as root they run as the ``postgres`` system user
    (or ``nobody``), which gets the temp folder."""

    user = "unmark"

    def __init__(self, bindir: Path, root: Path | None = None):
        self.bindir = bindir
        self.root = Path(root or tempfile.mkdtemp(prefix="unmark-pg-"))
        self.data = self.root / "data"
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._names = itertools.count()
        self._run_as: dict = {}
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                with contextlib.suppress(KeyError):
                    pw = pwd.getpwnam(name)
                    self._run_as = {"user": pw.pw_uid, "group": pw.pw_gid}
                    break
            os.chmod(self.root, 0o700)
            os.chown(self.root, self._run_as["user"], self._run_as["group"])

    def _env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update({"LC_ALL": "C", "LANG": "C", "TZ": "UTC"})
        return env

    def start(self, timeout_s: float = 60.0) -> PostgresServer:
        subprocess.run(
            [str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user, "-A", "trust",
             "-E", "UTF8", "--locale=C", "--no-sync"],
            check=True, capture_output=True, env=self._env(), cwd=self.root, **self._run_as,
        )
        self._log = open(self.root / "postgres.log", "ab")
        for _attempt in range(5):
            self.port = free_port()
            self._spawn()
            if self._wait_ready(timeout_s):
                return self
        raise RuntimeError(f"postgres did not start; log:\n{self.log_tail()}")

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(
            [str(self.bindir / "postgres"), "-D", str(self.data), "-k", str(self.root),
             "-h", "127.0.0.1", "-p", str(self.port),
             # a test server: durability off, small memory
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "shared_buffers=32MB", "-c", "max_connections=200"],
            stdout=self._log, stderr=self._log, env=self._env(), cwd=self.root, **self._run_as,
        )

    def restart(self, down_s: float = 0.0, timeout_s: float = 60.0) -> None:
        """What ``pg_ctl restart -m fast`` does, by PID: a fast shutdown (SIGINT: every session is
        terminated, transactions in flight roll back), ``down_s`` with nothing listening, then the
        same data directory on the same port again."""
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(30)
        time.sleep(down_s)
        self._spawn()
        if not self._wait_ready(timeout_s):
            raise RuntimeError(f"postgres did not come back on port {self.port}; log:\n{self.log_tail()}")

    def _wait_ready(self, timeout_s: float) -> bool:
        import psycopg

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False  # e.g. the port was taken between free_port() and bind; retry
            try:
                psycopg.connect(self.dsn("postgres"), connect_timeout=2).close()
                return True
            except psycopg.OperationalError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"postgres not ready after {timeout_s}s; log:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "postgres.log").read_text(errors="replace")[-n:]
        return ""

    def dsn(self, dbname: str) -> str:
        return f"host=127.0.0.1 port={self.port} user={self.user} dbname={dbname}"

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)

    def stop(self) -> None:
        """Fast shutdown (SIGINT) by PID; SIGKILL if it does not stop in 30 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        with contextlib.suppress(Exception):
            self._log.close()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running_server():
    """A started ``PostgresServer``, stopped on exit (the test skips if PostgreSQL is not installed)."""
    bindir = find_pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL binaries not found (apt-get install postgresql; ./dev test does it)")
    server = PostgresServer(bindir).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server for the whole session (skips only if PostgreSQL is not installed)."""
    with running_server() as server:
        yield server


@pytest.fixture
def pg_url(postgres_server) -> str:
    """A fresh, empty database on the session's server: its ``postgresql+psycopg://`` URL."""
    return postgres_server.create_database()
