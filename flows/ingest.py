"""``ingest``: scrape the seeds, fold duplicates, triage every image into clean / watermarked /
uncertain. Deployed as ``ingest/nightly`` (cron, 02:00 UTC)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.tasks import exponential_backoff
from pydantic import AnyHttpUrl, Field

from flows import artifacts
from flows.mapped import run_dedup_and_triage
from flows.runtime import chunks, flow_settings, merge_counts, small, task_runner
from pipeline import summaries
from pipeline.config import Settings
from pipeline.scrape.seeds import read_seed_file
from pipeline.workspace import open_workspace

SEEDS_FILE = "seeds.txt"  # in UNMARK_HOME: one URL a line, used when a run names no seeds


def seed_batches(seeds: list[str], hosts_per_batch: int) -> list[list[str]]:
    """Seeds grouped so that every host lands in exactly one batch: the scraper's per-host
    politeness (concurrency, delay, robots.txt) then holds across parallel batches."""
    by_host: dict[str, list[str]] = {}
    for url in dict.fromkeys(seeds):
        by_host.setdefault(urlsplit(url).netloc.lower(), []).append(url)
    return [sum(group, []) for group in chunks(list(by_host.values()), hosts_per_batch)]


def read_seeds(settings: Settings, seeds: list[str], seeds_file: str | None) -> list[str]:
    """The seeds named, plus those in ``seeds_file`` (or ``UNMARK_HOME/seeds.txt`` when no seed
    is named at all); blank lines and ``#`` comments are skipped."""
    out = list(seeds)
    path = Path(seeds_file) if seeds_file else (settings.home / SEEDS_FILE if not seeds else None)
    if path is not None and path.exists():
        for line in read_seed_file(path):
            url, *options = line.split()  # options (render=MODE) are the scraper's to check
            out.append(" ".join([str(AnyHttpUrl(url)), *options]))
    return list(dict.fromkeys(out))


# Network task: retried with backoff. The scrape step is idempotent (a re-run skips what it has),
# so a retry redoes only what the failed attempt did not record.
@task(name="scrape-batch", retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=5),
      retry_jitter_factor=0.5, cache_policy=NO_CACHE)
def scrape_batch(settings: Settings, seeds: list[str], max_pages: int, max_depth: int,
                 allow_private_hosts: bool, render: str | None = None) -> dict:
    from pipeline.scrape.crawl import scrape

    with open_workspace(settings) as (catalog, blobs):
        summary = scrape(seeds, catalog, blobs, settings, max_pages=max_pages, max_depth=max_depth,
                         allow_private_hosts=allow_private_hosts, render=render)
    return small(summary)


@task(name="dedup", cache_policy=NO_CACHE)
def dedup_task(settings: Settings) -> dict:
    from pipeline import dedup

    with open_workspace(settings) as (catalog, blobs):
        return small(dedup.dedup(catalog, blobs, settings))


@task(name="triage", cache_policy=NO_CACHE)
def triage_task(settings: Settings, retrain_detector: bool) -> dict:
    from pipeline import triage

    progress = artifacts.Progress("triage-progress", 100, "triage: detector training (cold start), then scoring")

    def report(stage: str, done: int, total: int) -> None:
        # The detector's training is the first half of the bar, scoring the second.
        share = done / total if total else 1.0
        progress.set(50.0 * share if stage == "detector" else 50.0 + 50.0 * share)

    with open_workspace(settings) as (catalog, blobs):
        out = small(triage.triage(catalog, blobs, settings, retrain_detector=retrain_detector, progress=report))
    progress.set(100.0)
    return out


@task(name="ingest-report", cache_policy=NO_CACHE)
def ingest_report(settings: Settings, summary: dict) -> dict:
    with open_workspace(settings) as (catalog, _):
        artifacts.publish_ingest(catalog, summary)
        return summaries.catalog_counts(catalog)


@flow(name="ingest", task_runner=task_runner(), validate_parameters=True)
def ingest(
    seeds: list[AnyHttpUrl] = [],  # noqa: B006 - Prefect copies parameter defaults per run
    seeds_file: str | None = None,
    max_pages: Annotated[int, Field(ge=1, le=1_000_000)] | None = None,
    max_depth: Annotated[int, Field(ge=0, le=50)] | None = None,
    allow_private_hosts: bool = False,
    render: Literal["never", "auto", "always"] | None = None,
    retrain_detector: bool = False,
    hosts_per_batch: Annotated[int, Field(ge=1, le=1000)] = 4,
    home: str | None = None,
    task_runner: Literal["thread", "dask"] | None = None,
) -> dict:
    """Scrape ``seeds`` (and the seeds file) in host batches, then dedup and triage the catalog.
    ``task_runner="dask"`` (default: ``UNMARK_TASK_RUNNER``) hashes and scores on Dask workers.
    ``max_pages`` bounds the whole run (shared between batches by their number of seeds);
    ``max_pages`` and ``max_depth`` default to ``UNMARK_MAX_PAGES`` and ``UNMARK_MAX_DEPTH``.
    ``allow_private_hosts`` permits loopback only (tests and the demo). ``render`` loads pages in
    headless Chromium too (default: ``UNMARK_RENDER``; a seed line ``URL render=MODE`` sets its
    own site). Returns counts."""
    log = get_run_logger()
    settings = flow_settings(home)
    max_pages = settings.scrape.max_pages if max_pages is None else max_pages
    max_depth = settings.scrape.max_depth if max_depth is None else max_depth
    urls = read_seeds(settings, [str(u) for u in seeds], seeds_file)
    batches = seed_batches(urls, hosts_per_batch)
    log.info("ingest: %d seeds in %d batches into %s", len(urls), len(batches), settings.storage.catalog_url)

    scraped: list[dict] = []
    if batches:
        progress = artifacts.Progress("ingest-progress", len(batches) + 2, "ingest: scrape batches, dedup, triage")
        futures = [
            scrape_batch.submit(settings, batch, max(1, math.ceil(max_pages * len(batch) / len(urls))),
                                max_depth, allow_private_hosts, render)
            for batch in batches
        ]
        for fut in as_completed(futures):
            scraped.append(fut.result())
            progress.advance()
    else:
        progress = artifacts.Progress("ingest-progress", 2, "ingest: dedup, triage (no seeds)")
        log.warning("ingest: no seeds given and no %s in %s; deduplicating and triaging the catalog as it is",
                    SEEDS_FILE, settings.home)
    if (task_runner or settings.scale.task_runner) == "dask":
        both = run_dedup_and_triage(settings, retrain_detector, "dask")
        deduped, triaged = both["dedup"], both["triage"]
        progress.advance(2)
    else:
        deduped = dedup_task(settings)
        progress.advance()
        triaged = triage_task(settings, retrain_detector)
        progress.advance()
    summary = {"seeds": len(urls), "batches": len(batches), "scrape": merge_counts(scraped),
               "dedup": deduped, "triage": triaged}
    summary["catalog"] = ingest_report(settings, summary)
    return summary
