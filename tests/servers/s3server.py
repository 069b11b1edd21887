"""An S3 API server on loopback for the tests: moto's standalone server (``python -m
moto.server``) on 127.0.0.1 at a free port, started once per session and stopped by PID.

Fixtures (imported by ``tests/conftest.py``): ``s3_server`` (session) gives the endpoint URL;
``s3_bucket`` creates a fresh bucket per test and returns its name.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pgserver import free_port

# moto accepts any credentials; these only have to be consistent.
S3_KEY_ID = "unmark-test-key"
S3_SECRET = "unmark-test-secret"
S3_REGION = "us-east-1"


@dataclass
class S3Server:
    endpoint: str
    proc: subprocess.Popen
    log: Path
    _names: itertools.count = field(default_factory=itertools.count)

    def create_bucket(self, prefix: str = "unmark-test") -> str:
        import boto3

        name = f"{prefix}-{os.getpid()}-{next(self._names)}"
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=S3_KEY_ID,
            aws_secret_access_key=S3_SECRET,
            region_name=S3_REGION,
        )
        client.create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def s3_env() -> dict:
    """Environment for anything that talks to the test server: no AWS config files, no instance
    metadata lookups, a fixed region."""
    return {
        "AWS_ACCESS_KEY_ID": S3_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_DEFAULT_REGION": S3_REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


def start_s3_server(timeout_s: float = 60.0) -> S3Server:
    log = Path(tempfile.mkdtemp(prefix="unmark-moto-")) / "moto.log"
    env = {**os.environ, **s3_env()}
    for _attempt in range(5):
        port = free_port()
        with open(log, "ab") as fh:
            proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=fh, stderr=fh, env=env,
            )
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
                return S3Server(endpoint, proc, log)
            time.sleep(0.2)
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    raise RuntimeError(f"moto server did not start; log:\n{log.read_text(errors='replace')[-4000:]}")


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 for the whole session."""
    pytest.importorskip("moto.server", reason="moto[server] not installed (pip install -e .[dev])")
    pytest.importorskip("s3fs", reason="s3fs not installed (pip install -e .[dev])")
    for k, v in s3_env().items():
        os.environ.setdefault(k, v)
    server = start_s3_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh, empty bucket on the session's S3 server."""
    return s3_server.create_bucket()
