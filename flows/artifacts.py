"""Prefect artifacts a person looks at after a run: what ingest found, how training went, which
cleanings to inspect first, and progress bars while long steps run. The content comes from
``pipeline.summaries``; this module only hands it to Prefect."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from pipeline import summaries


def publish_ingest(catalog, summary: dict) -> None:
    create_table_artifact(
        key="ingest-counts",
        table=summaries.ingest_rows(catalog),
        description="Catalog after ingest: pages, images per status, dedup roles, failures per stage and reason "
        f"({summary.get('seeds', 0)} seeds).",
    )


def publish_training(catalog, model_version: str | None) -> None:
    create_markdown_artifact(
        key="train-report",
        markdown=summaries.training_markdown(catalog, model_version),
        description=f"Training run of {model_version or 'a remover'}: curves and test metrics.",
    )


def publish_worst_cleanings(catalog, model_version: str | None, limit: int = 10) -> None:
    rows = summaries.worst_cleaning_rows(catalog, model_version, limit)
    create_table_artifact(
        key="worst-cleanings",
        table=rows or [{"note": "no model cleanings with metrics yet"}],
        description=f"The {limit} cleanings by {model_version or 'any model'} with the lowest PSNR against their input.",
    )


class Progress:
    """A Prefect progress artifact that counts finished units of work out of a total."""

    def __init__(self, key: str, total: int, description: str):
        self.total = max(1, total)
        self.done = 0
        self.id = create_progress_artifact(progress=0.0, key=key, description=description)

    def advance(self, n: int = 1) -> None:
        self.done = min(self.total, self.done + n)
        self.set(100.0 * self.done / self.total)

    def set(self, percent: float) -> None:
        if self.id is not None:
            update_progress_artifact(artifact_id=self.id, progress=max(0.0, min(100.0, percent)))

    @contextlib.contextmanager
    def watch(self, percent: Callable[[], float | None], every_s: float = 5.0) -> Iterator[Progress]:
        """Update the artifact from ``percent()`` every ``every_s`` seconds while the block runs
        (for one long step that reports nothing itself; ``percent`` reads the catalog). The
        artifact ends at 100 when the block succeeds."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(every_s):
                try:
                    value = percent()
                except Exception:  # noqa: BLE001 - a progress bar must never fail the step
                    continue
                if value is not None:
                    self.set(value)

        thread = threading.Thread(target=loop, name=f"progress-{self.id}", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(timeout=every_s + 5)
        self.set(100.0)  # after the watcher stopped, so that no late poll overwrites it
