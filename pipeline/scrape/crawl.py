"""``unmark scrape``'s crawl: pages from seed URLs, their images fetched politely and safely
into the catalog. The stages it drives are mapped in ``pipeline.scrape``'s docstring. A bounded
thread pool runs the network and the hashing (``pipeline.scrape.workers``); the calling thread
keeps the frontier, decides what to download and hands rows to the writer.

Idempotent and resumable: each image's blob is written (atomically) before its row, and made
durable by one ``BlobStore.sync`` before the transaction that holds the row; a page gets its
validators (ETag / Last-Modified) only in the transaction that holds its last sighting, so a page
with validators is complete, and a re-run re-fetches it conditionally (a 304 re-uses the stored
links) while image URLs already sighted are not downloaded again. A run killed at any point and
started again ends with the same rows as an uninterrupted run.
"""

from __future__ import annotations

import queue
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

from pipeline.config import Settings
from pipeline.scrape.extract import ImageRef, normalize_url
from pipeline.scrape.fetch import Fetcher
from pipeline.scrape.render_step import check_mode
from pipeline.scrape.seeds import expand_seeds, site_of
from pipeline.scrape.sheets import SHEET_STAGE
from pipeline.scrape.ssrf import Resolver
from pipeline.scrape.workers import ImageResult, PageResult, Workers
from pipeline.scrape.writer import FLUSH_EVERY_S, Writer
from pipeline.stopping import StopFlag
from storage import BlobStore, Catalog
from storage import queries as q
from storage.models import utcnow

PAGE_STAGE, IMAGE_STAGE, ROBOTS_STAGE = "scrape.page", "scrape.image", "scrape.robots"
# Image failures that a re-run does not retry: the bytes at that URL were judged, not missed.
PERMANENT = {"not-image", "format", "too-small", "too-many-pixels", "corrupt", "too-large", "http-404", "http-410"}


@dataclass
class _PendingPage:
    outstanding: int
    etag: str | None
    last_modified: str | None


# --- the crawl --------------------------------------------------------------------------


class Crawl:
    """One scrape run. Pool threads run ``Workers.page`` / ``Workers.image``; everything else
    runs on the calling thread."""

    def __init__(self, catalog: Catalog, blobs: BlobStore, settings: Settings, max_pages: int, max_depth: int,
                 allow_private_hosts: bool, resolver: Resolver | None,
                 progress: Callable[[dict], None] | None = None, render: str | None = None,
                 site_render: dict[str, str] | None = None, stop: StopFlag | None = None):
        self.catalog, self.blobs, self.settings = catalog, blobs, settings
        self.stop = stop  # once set: no new pages; those in flight finish with their images
        self.max_pages, self.max_depth = max_pages, max_depth
        self.fetcher = Fetcher(settings.scrape, allow_private_hosts=allow_private_hosts, resolver=resolver)
        self.site_render = dict(site_render or {})
        self.work = Workers(settings, self.fetcher, blobs, render or settings.scrape.render, self.site_render)
        self.writer = Writer(catalog, blobs, settings.storage.write_batch_size)
        self.progress = progress
        self.sites: set[str] = set()
        self.seen_pages: set[str] = set()
        self.frontier: deque[tuple[str, int, bool]] = deque()  # (url, depth, counts toward max_pages)
        self.pages_started = 0
        self.pages_in_flight = 0
        self.retrying: set[str] = set()  # image URLs with a failure row from an earlier run
        self.futures: dict[Future, str] = {}  # in flight: future -> "page" | "image"
        self._done: queue.SimpleQueue[Future] = queue.SimpleQueue()
        self._pool: ThreadPoolExecutor | None = None
        self.image_state: dict[str, str | int | None] = {}  # url -> sha256 | image id | None (failed) | "" pending
        self.waiters: dict[str, list[tuple[str, ImageRef]]] = {}
        self.pending_pages: dict[str, _PendingPage] = {}
        self.seeds: set[str] = set()  # set by run(): a seed whose own fetch fails counts in seeds_failed
        self.memory = {"validators": True, "sightings": True, "image_failures": True}  # set by run()
        self._known: dict[str, int] = {}  # image URL -> image id, for the page batch in hand
        self._failed: dict[str, str] = {}  # image URL -> failure class, for the page batch in hand
        self.stats: dict = {
            "seeds": 0, "seeds_failed": 0, "pages_fetched": 0, "pages_not_modified": 0, "pages_failed": 0, "pages_opted_out": 0,
            "pages_disallowed": 0, "sitemaps": 0, "images_found": 0, "images_fetched": 0, "images_new": 0,
            "images_known_url": 0, "images_too_small": 0, "images_opted_out": 0, "images_failed": 0,
            "images_skipped_failed": 0, "images_candidates": 0, "sheets_fetched": 0, "sheets_failed": 0, "bytes": 0,
            "failures": {},
        }

    def enqueue(self, url: str, depth: int, counted: bool = True) -> None:
        if url in self.seen_pages or depth > self.max_depth:
            return
        self.seen_pages.add(url)
        self.frontier.append((url, depth, counted))

    def run(self, seeds: list[str]) -> dict:
        started = time.monotonic()
        self.stats["seeds"] = len(seeds)
        self.seeds = set(seeds)
        # what earlier runs left; this run's own pages and image URLs are remembered in memory
        self.memory = self.catalog.read(q.scrape_memory, IMAGE_STAGE)
        for url in seeds:
            self.sites.add(site_of(url))
            path = urlsplit(url).path.lower()
            self.enqueue(url, 0, counted=not (path.endswith(".xml") or "sitemap" in path))
        page_window = max(2, self.settings.scrape.global_concurrency)
        with ThreadPoolExecutor(max_workers=max(1, self.settings.scrape.global_concurrency),
                                thread_name_prefix="unmark-scrape") as pool:
            self._pool = pool
            try:
                while True:
                    batch: list[tuple[str, int]] = []
                    stopping = self.stop is not None and self.stop.requested
                    while self.frontier and not stopping and self.pages_in_flight + len(batch) < page_window:
                        url, depth, counted = self.frontier.popleft()
                        if counted and self.pages_started >= self.max_pages:
                            continue
                        self.pages_started += counted
                        batch.append((url, depth))
                    if batch:
                        validators = self._validators([url for url, _ in batch])
                        for url, depth in batch:
                            self.pages_in_flight += 1
                            # a page rendered every time is read again whole, not answered by a 304
                            kept = (None, None) if self.work.render.always(url) else validators.get(url, (None, None))
                            self._submit("page", self.work.page, url, depth, kept)
                    if not self.futures:
                        break
                    done = [(self.futures.pop(fut), fut.result()) for fut in self._completed(FLUSH_EVERY_S)]
                    self._prefetch_image_state([res for kind, res in done if kind == "page"])
                    for kind, res in done:
                        if kind == "page":
                            self.pages_in_flight -= 1
                            self._on_page(res)
                        else:
                            self._on_image(res)
                    self._drain_robots_failures()
                    if self.writer.due():
                        self.writer.flush()
                        self._report_progress(started)
            finally:
                # a crash or Ctrl-C still commits what finished; pending pages stay incomplete
                for fut in self.futures:
                    fut.cancel()
                self._drain_robots_failures()
                try:
                    self.work.render.close()
                    self.writer.close()
                finally:
                    self.fetcher.close()
        if self.stop is not None:
            self.stop.check("scrape", self._summary(started))
        return self._summary(started)

    def _submit(self, kind: str, fn: Callable, *args) -> None:
        fut = self._pool.submit(fn, *args)
        self.futures[fut] = kind
        fut.add_done_callback(self._done.put)  # O(1) per completion, unlike wait() over every future

    def _completed(self, timeout: float) -> list[Future]:
        """Futures that finished: waits up to ``timeout`` for the first, then takes what is ready."""
        try:
            out = [self._done.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                out.append(self._done.get_nowait())
            except queue.Empty:
                return out

    def _validators(self, urls: list[str]) -> dict[str, tuple[str | None, str | None]]:
        """The stored ETag / Last-Modified of those ``urls`` that have any (one query)."""
        if not self.memory["validators"]:
            return {}
        return self.catalog.read(q.page_validators, urls)

    def _prefetch_image_state(self, pages: list[PageResult]) -> None:
        """What the catalog knows of the image URLs these pages show that this run has not met:
        one query for the batch of pages instead of one per page (``_images_of`` reads it)."""
        fresh = list(dict.fromkeys(r.url for p in pages if p.error is None for r in p.images
                                   if r.url not in self.image_state))
        self._known, self._failed = {}, {}
        if fresh and (self.memory["sightings"] or self.memory["image_failures"]):
            with self.catalog.session() as s:
                if self.memory["sightings"]:
                    self._known = q.image_ids_by_url(s, fresh)
                if self.memory["image_failures"]:
                    self._failed = q.failure_classes(s, IMAGE_STAGE, [u for u in fresh if u not in self._known])

    def _fail(self, stage: str, subject: str, exc: Exception) -> None:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        self.stats["failures"][reason] = self.stats["failures"].get(reason, 0) + 1
        self.writer.failure(stage, subject, exc)

    def _drain_robots_failures(self) -> None:
        while self.work.robots_failures:
            url, exc = self.work.robots_failures.pop()
            self._fail(ROBOTS_STAGE, url, exc)

    def _follow(self, page: PageResult, links: Iterable[str]) -> None:
        if page.depth + 1 > self.max_depth:
            return
        for link in links:
            if site_of(link) in self.sites:
                self.enqueue(link, page.depth + 1)

    def _on_page(self, page: PageResult) -> None:
        st, w = self.stats, self.writer
        now = utcnow()
        if page.final_url and page.final_url != page.url:
            self.seen_pages.add(page.final_url)
        if page.error is not None:
            st["seeds_failed"] += page.url in self.seeds
            if getattr(page.error, "reason", "") == "robots":
                st["pages_disallowed"] += 1
            else:
                st["pages_failed"] += 1
                # validators stay: a page that failed this time is not known to have changed
                w.page(page.url, status=page.status, depth=page.depth, fetched_at=now, error=str(page.error)[:2000])
            self._fail(PAGE_STAGE, page.url, page.error)
            return
        w.batch.cleared.append((PAGE_STAGE, page.url))
        for stage, subject, exc in page.failures:
            st["sheets_failed"] += stage == SHEET_STAGE
            self._fail(stage, subject, exc)
        st["sheets_fetched"] += sum(stage == SHEET_STAGE for stage, _ in page.cleared)
        w.batch.cleared.extend(page.cleared)
        if page.sitemap is not None:
            st["sitemaps"] += 1
            kind, locs = page.sitemap
            w.page(page.url, status=page.status, depth=page.depth, fetched_at=now, error=None)
            for loc in locs:
                url = normalize_url(loc)
                if url:
                    self.sites.add(site_of(url))
                    if site_of(page.url) in self.site_render:  # listed sites render as the sitemap's
                        self.site_render.setdefault(site_of(url), self.site_render[site_of(page.url)])
                    # listed pages are seeds (depth of the sitemap); listed sitemaps are not pages
                    self.enqueue(url, page.depth, counted=kind == "urlset")
            return
        if page.not_modified:
            st["pages_not_modified"] += 1
            w.page(page.url, status=304, fetched_at=now, error=None)
            with self.catalog.session() as s:
                row = q.get_page(s, page.url)
                links = list(row.outlinks or []) if row is not None else []
            self._follow(page, links)
            return
        st["pages_fetched"] += 1
        if page.opted_out:
            st["pages_opted_out"] += 1
        links = [u for u in page.links if site_of(u) in self.sites]
        w.page(page.url, status=page.status, depth=page.depth, fetched_at=now, error=None,
               opted_out=page.opted_out, outlinks=links, etag=None, last_modified=None)
        self._follow(page, links)
        outstanding = self._images_of(page)
        if outstanding:
            self.pending_pages[page.url] = _PendingPage(outstanding, page.etag, page.last_modified)
        else:
            w.batch.completed[page.url] = (page.etag, page.last_modified)

    def _images_of(self, page: PageResult) -> int:
        """Sightings for known images, downloads for new URLs; returns how many are awaited."""
        st = self.stats
        st["images_found"] += len(page.images)
        known, failed = self._known, self._failed  # filled by _prefetch_image_state for this batch
        outstanding = 0
        for ref in page.images:
            state = self.image_state.get(ref.url, "?")
            if state == "?":
                if ref.url in known:
                    st["images_known_url"] += 1
                    self.image_state[ref.url] = state = known[ref.url]
                elif failed.get(ref.url) in PERMANENT:
                    st["images_skipped_failed"] += 1
                    self.image_state[ref.url] = None
                    continue
                else:
                    if ref.url in failed:
                        self.retrying.add(ref.url)  # its failure row goes once it succeeds
                    self.image_state[ref.url] = ""
                    self.waiters[ref.url] = []
                    self._submit("image", self.work.image, ref.url)
                    state = ""
            if state == "":
                self.waiters[ref.url].append((page.url, ref))
                outstanding += 1
            elif state is not None:
                self._sight(page.url, state, ref)
        return outstanding

    def _sight(self, page_url: str, image: str | int, ref: ImageRef) -> None:
        """A sighting of ``image`` at ``ref.url``, and one for each of its lesser candidates (the
        same picture at other sizes: not downloaded, and from now on known as this image)."""
        sightings = self.writer.batch.sightings
        sightings.append((page_url, image, ref))
        for url in ref.also:
            if self.image_state.get(url, "?") in ("?", image):
                self.image_state[url] = image
                self.stats["images_candidates"] += 1
                sightings.append((page_url, image, ImageRef(url, ref.alt, "candidate")))

    def _on_image(self, res: ImageResult) -> None:
        st, w = self.stats, self.writer
        waiters = self.waiters.pop(res.url, [])
        if res.error is not None:
            reason = getattr(res.error, "reason", "")
            key = {"too-small": "images_too_small", "opted-out": "images_opted_out"}.get(reason, "images_failed")
            st[key] += 1
            self.image_state[res.url] = None
            self._fail(IMAGE_STAGE, res.url, res.error)
        else:
            st["images_fetched"] += 1
            st["bytes"] += res.row["bytes"]
            self.image_state[res.url] = res.sha256
            w.batch.images[res.sha256] = res.row
            if res.url in self.retrying:
                w.batch.cleared.append((IMAGE_STAGE, res.url))
            for page_url, ref in waiters:
                self._sight(page_url, res.sha256, ref)
        for page_url, _ in waiters:
            pending = self.pending_pages[page_url]
            pending.outstanding -= 1
            if pending.outstanding == 0:
                del self.pending_pages[page_url]
                w.batch.completed[page_url] = (pending.etag, pending.last_modified)

    def _summary(self, started: float) -> dict:
        elapsed = time.monotonic() - started
        st = dict(self.stats)
        st["images_new"] = self.writer.new_images
        st.update(self.work.render.stats)
        st["elapsed_s"] = round(elapsed, 3)
        pages = st["pages_fetched"] + st["pages_not_modified"]
        st["pages_per_s"] = round(pages / elapsed, 2) if elapsed > 0 else 0.0
        st["images_per_s"] = round(st["images_fetched"] / elapsed, 2) if elapsed > 0 else 0.0
        return st

    def _report_progress(self, started: float) -> None:
        if self.progress is not None:
            self.progress(self._summary(started))


def scrape(
    seeds: Iterable[str],
    catalog: Catalog,
    blobs: BlobStore,
    settings: Settings,
    max_pages: int | None = None,
    max_depth: int | None = None,
    allow_private_hosts: bool = False,
    resolver: Resolver | None = None,
    progress: Callable[[dict], None] | None = None,
    render: str | None = None,
    stop: StopFlag | None = None,
) -> dict:
    """Crawl from ``seeds`` (page URLs, sitemap.xml URLs, or files listing URLs) and store every
    image found into ``blobs`` and ``catalog``. Returns counts for the run (seeds and the seeds
    whose own fetch failed, pages fetched / not modified / failed / opted out, images found / fetched / new / too small / failed, failures by
    reason, pages_per_s, images_per_s).

    ``allow_private_hosts`` lets the crawl reach loopback (tests, the demo); ``resolver(host,
    port) -> [address]`` replaces DNS (tests); ``progress(summary)`` hears about each batch.
    ``render`` (``never`` / ``auto`` / ``always``; default ``settings.scrape.render``) loads pages in
    headless Chromium too (``pipeline.scrape.render``); a seed's own ``render=`` option wins for its site.
    Raises ``SeedError`` for a bad seed, ``RenderModeError`` for a bad mode, ``RenderUnavailable``
    when rendering is asked for and cannot run, all before any request. Once ``stop`` is set, no
    new page is started; the pages in flight finish, everything is committed and ``Stopped`` is
    raised (``pipeline.stopping``)."""
    site_render: dict[str, str] = {}
    urls = expand_seeds(seeds, site_render)
    crawl = Crawl(
        catalog, blobs, settings,
        max_pages=settings.scrape.max_pages if max_pages is None else max_pages,
        max_depth=settings.scrape.max_depth if max_depth is None else max_depth,
        allow_private_hosts=allow_private_hosts, resolver=resolver, progress=progress,
        render=check_mode(render, "--render") if render is not None else None, site_render=site_render, stop=stop,
    )
    return crawl.run(urls)
