"""Suite-wide set-up: isolated Prefect state, quiet libraries, one torch thread, and the network
guard (no connection outside loopback, from this process or any Python subprocess)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

# --- environment, before anything imports prefect / albumentations / torch -----------------
_TMP = Path(tempfile.mkdtemp(prefix="unmark-tests-"))
os.environ["PREFECT_HOME"] = str(_TMP / "prefect-home")
os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(_TMP / "prefect-storage")
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "90"
os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
os.environ["MPLBACKEND"] = "Agg"
os.environ.pop("PREFECT_API_URL", None)
# tests build their own settings, never the user's catalog; the switches of the suite itself stay
# (UNMARK_SOAK: the soak cases, which bench/faults.py runs; UNMARK_REQUIRE_BROWSER: .ci/run's)
SUITE_SWITCHES = ("UNMARK_SOAK", "UNMARK_REQUIRE_BROWSER")
for _k in [k for k in os.environ if k.startswith("UNMARK_") and k not in SUITE_SWITCHES]:
    os.environ.pop(_k)

_GUARD_DIR = Path(__file__).parent / "netguard"
_GUARD_LOG = _TMP / "netguard.log"
_GUARD_LOG.touch()
os.environ["UNMARK_NETGUARD_LOG"] = str(_GUARD_LOG)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_GUARD_DIR), os.environ.get("PYTHONPATH")]))
sys.path.insert(0, str(_GUARD_DIR))
import netguard  # noqa: E402

netguard.install()

import pytest  # noqa: E402

# Real servers on loopback, started by the fixtures and stopped by PID: PostgreSQL (postgres_server,
# pg_url) and an S3 API (s3_server, s3_bucket). A folder of its own on sys.path, appended so that
# tests/storage never shadows the storage package.
sys.path.append(str(Path(__file__).parent / "servers"))
from pgserver import pg_url, postgres_server  # noqa: E402,F401
from s3server import s3_bucket, s3_server  # noqa: E402,F401

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # storage tests run without torch too
    pass


@pytest.fixture(autouse=True)
def _network_guard():
    """Fail the test if it (or a subprocess) tried to reach anything but loopback."""
    start = _GUARD_LOG.stat().st_size
    before = len(netguard.VIOLATIONS)
    yield
    with open(_GUARD_LOG) as fh:
        fh.seek(start)
        new = fh.read().strip()
    if new or len(netguard.VIOLATIONS) > before:
        pytest.fail(f"test tried to reach the network outside loopback:\n{new or netguard.VIOLATIONS[before:]}")


@pytest.fixture
def settings(tmp_path):
    """Settings on a fresh UNMARK_HOME in a temp folder."""
    from pipeline.config import load_settings

    return load_settings(home=tmp_path / "home")


@pytest.fixture
def catalog(settings):
    from storage import open_catalog

    cat = open_catalog(settings.storage)
    yield cat
    cat.dispose()


@pytest.fixture
def blobs(settings):
    from storage import BlobStore

    return BlobStore.from_settings(settings.storage)


@pytest.fixture
def unmark_env(settings):
    """Environment for running the ``unmark`` CLI in a subprocess on the test's home."""
    env = dict(os.environ)
    env["UNMARK_HOME"] = str(settings.home)
    return env
