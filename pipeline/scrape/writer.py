"""The scrape's one catalog writer: the crawl thread fills a ``Batch`` of rows and a writer
thread commits the batches in order (blobs synced before the rows that name them)."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

from pipeline.scrape.extract import ImageRef
from pipeline.scrape.fetch import host_key
from storage import BlobStore, Catalog
from storage import queries as q

FLUSH_EVERY_S = 1.0


@dataclass
class Batch:
    """Rows for one write transaction, filled by the crawl thread."""

    pages: dict[str, dict] = field(default_factory=dict)
    images: dict[str, dict] = field(default_factory=dict)
    sightings: list[tuple[str, str | int, ImageRef]] = field(default_factory=list)  # (page url, sha256 | image id, ref)
    failures: list[tuple[str, str, str, str]] = field(default_factory=list)  # (stage, subject, error class, message)
    cleared: list[tuple[str, str]] = field(default_factory=list)
    completed: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)

    def size(self) -> int:
        return len(self.pages) + len(self.images) + len(self.sightings) + len(self.failures) + len(self.completed)


class Writer:
    """The catalog's one writer. The crawl thread fills the batch in hand (``batch``, through
    ``page`` and ``failure`` or directly) and ``flush`` hands it to a writer thread, which commits the
    batches one at a time, in order. The crawl thread goes on dispatching meanwhile: a commit (its
    ``syncfs`` and SQLite steps, each giving up the GIL and waiting to get it back among the
    fetching threads) would otherwise stall the crawl for a quarter of its time. ``close`` commits
    what is left and waits; an error of the writer thread is raised in the crawl thread at the next
    ``flush`` or at ``close``."""

    def __init__(self, catalog: Catalog, blobs: BlobStore, batch_size: int):
        self.catalog = catalog
        self.blobs = blobs
        self.batch_size = batch_size
        self.batch = Batch()
        self.page_ids: dict[str, int] = {}  # writer thread only
        self.last_flush = time.monotonic()
        self.new_images = 0
        self.error: BaseException | None = None
        self._queue: queue.Queue[Batch | None] = queue.Queue(maxsize=2)  # a bound on rows in waiting
        self._thread: threading.Thread | None = None  # started by the first flush

    def size(self) -> int:
        return self.batch.size()

    def page(self, url: str, **fields) -> None:
        self.batch.pages.setdefault(url, {}).update(fields)

    def failure(self, stage: str, subject: str, error: Exception) -> None:
        reason = getattr(error, "reason", None) or type(error).__name__
        self.batch.failures.append((stage, subject, reason, str(error)))

    def due(self) -> bool:
        return self.size() >= self.batch_size or (self.size() and time.monotonic() - self.last_flush >= FLUSH_EVERY_S)

    def flush(self) -> None:
        """Hand the batch in hand to the writer thread (it waits only while two are queued)."""
        self.last_flush = time.monotonic()
        if self.error is not None:
            raise self.error
        if not self.size():
            return
        self._hand_over()

    def _hand_over(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="unmark-scrape-writer", daemon=True)
            self._thread.start()
        batch, self.batch = self.batch, Batch()
        self._queue.put(batch)

    def close(self) -> None:
        """Commit what is in hand and everything queued; raises the writer thread's error."""
        try:
            if self.error is None and self.size():
                self._hand_over()
        finally:
            if self._thread is not None:
                self._queue.put(None)
                self._thread.join()
                self._thread = None
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            if self.error is not None:
                continue  # drained, not committed: the crawl thread raises the error
            try:
                self.catalog.retry(self._commit, batch)  # a lost connection: the batch again, whole
            except BaseException as exc:  # noqa: BLE001 - handed to the crawl thread
                self.error = exc

    def _commit(self, b: Batch) -> None:
        if b.images:
            self.blobs.sync()  # the workers' blobs are durable before any row names them
        new_images = 0  # counted once the transaction commits: a retried one is not counted twice
        with self.catalog.write() as s:
            if b.pages:
                self.page_ids.update(q.upsert_pages(s, [
                    {"url": url, **fields, "host": fields.get("host") or host_key(url)}
                    for url, fields in b.pages.items()
                ]))
            if b.images:
                ids, new = q.add_new_images(s, list(b.images.values()))
                new_images = len(new)
            else:
                ids = {}
            shas = [ref for _, ref, _ in b.sightings if isinstance(ref, str) and ref not in ids]
            if shas:
                ids.update(q.image_ids_by_sha(s, shas))
            missing = list(dict.fromkeys(p for p, _, _ in b.sightings if p not in self.page_ids))
            if missing:
                self.page_ids.update(q.page_ids_by_url(s, missing))
            q.add_sightings(s, [
                {"image_id": ids[ref] if isinstance(ref, str) else ref, "page_id": self.page_ids[p],
                 "image_url": r.url, "alt": r.alt, "found_by": r.found_by}
                for p, ref, r in b.sightings
            ])
            for stage, subject, reason, message in b.failures:
                q.record_failure(s, stage, subject, message, error_class=reason)
            by_stage: dict[str, list[str]] = {}
            for stage, subject in b.cleared:
                by_stage.setdefault(stage, []).append(subject)
            for stage, subjects in by_stage.items():
                q.clear_failures(s, stage, subjects)
            if b.completed:
                # the page's last sighting is in this transaction (or an earlier one): complete
                q.upsert_pages(s, [{"url": url, "host": host_key(url), "etag": etag, "last_modified": last_modified}
                                   for url, (etag, last_modified) in b.completed.items()])
        self.new_images += new_images
