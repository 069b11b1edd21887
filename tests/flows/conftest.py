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


@pytest.fixture(scope="session")
def tiny_site(tmp_path_factory):
    """The demo's site at 128 px from three photos: ``(manifest, base_url)``."""
    from pipeline.demo import build_site, serve_site

    manifest = build_site(tmp_path_factory.mktemp("site"), max_side=128, photos=["astronaut", "chelsea", "coffee"])
    with serve_site(manifest.root) as url:
        yield manifest, url
