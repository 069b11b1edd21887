"""The ingest flow's own tasks, scrape then dedup, as a flow of their own (the real ``ingest``
ends with triage, which would train a detector in a catalog that has none). Run as a script by
``test_prefect_server.py``: ``python tests/faults/prefect_ingest.py SEED HOME``; prints the
flow's result as JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from prefect import flow

from flows.ingest import dedup_task, scrape_batch
from flows.runtime import flow_settings


@flow(name="ingest-without-triage")
def ingest_without_triage(seed: str, home: str) -> dict:
    settings = flow_settings(home)
    scraped = scrape_batch(settings, [seed], 200, 3, True)
    return {"scrape": scraped, "dedup": dedup_task(settings)}


if __name__ == "__main__":
    print(json.dumps(ingest_without_triage(sys.argv[1], sys.argv[2]), default=str))
