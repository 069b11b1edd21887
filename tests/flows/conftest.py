"""Fixtures for the flow tests: one Prefect test harness for this folder (about 10 s to start,
paid once, and only by the suites that ask for it) and a tiny sample site on 127.0.0.1."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def prefect_harness():
    """A throwaway Prefect API (its own temp database) for every flow run in the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


# Steps sized for tests (a detector of a few steps on 64 px crops): the flows read UNMARK_*.
SMALL_STEPS_ENV = {
    "UNMARK_DETECTOR_STEPS": "8",
    "UNMARK_DETECTOR_CROP": "64",
    "UNMARK_DETECTOR_BATCH_SIZE": "4",
    "UNMARK_DETECTOR_VAL_SAMPLES": "12",
    "UNMARK_TRIAGE_BATCH_SIZE": "8",
    "UNMARK_DEDUP_WORKERS": "1",
}


@pytest.fixture
def small_steps(monkeypatch):
    """The environment that makes the flows' steps test-sized in this process."""
    for key, value in SMALL_STEPS_ENV.items():
        monkeypatch.setenv(key, value)
    return dict(SMALL_STEPS_ENV)


@pytest.fixture(scope="session")
def tiny_site(tmp_path_factory):
    """The demo's site at 128 px from three photos: ``(manifest, base_url)``."""
    from pipeline.demo import build_site, serve_site

    manifest = build_site(tmp_path_factory.mktemp("site"), max_side=128, photos=["astronaut", "chelsea", "coffee"])
    with serve_site(manifest.root) as url:
        yield manifest, url
