"""Fixtures the scraper suites share."""

from __future__ import annotations

import pytest


@pytest.fixture
def fast(settings):
    """Settings with short timeouts and backoff, so failure paths take fractions of a second."""
    return settings.updated(
        connect_timeout_s=1.0, read_timeout_s=0.5, download_deadline_s=2.0, retry_backoff_s=0.05,
        max_retries=2, per_host_concurrency=4, global_concurrency=8, write_batch_size=40)
