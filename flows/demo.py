"""``unmark demo``: the whole pipeline on the sample site, in Prefect's embedded mode.

Builds the site (``pipeline.demo``), serves it on 127.0.0.1, and runs the ``demo`` flow: the
nightly pipeline's ``ingest``, then ``quick-cpu`` training whose time cap shrinks so that the run
ends within ``minutes``, then ``clean`` (and the report). A live progress display (rich) reads
the catalog while the flow runs; a summary table and the report's path end it. The caller sets
the environment first (``demo_environment``).

The demo trusts its detector: triage labels the site with the shipped detector (registered
first, as ``unmark init`` does) and the summary shows how those labels compare with the site's
truth (``pipeline.demo.triage_agreement``: the demo built the site, so it knows). Nothing
replaces triage's labels. When they leave a split of the clean pool empty, training is skipped
(and says why) and the shipped remover cleans.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from flows.clean import clean
from flows.ingest import ingest
from flows.nightly import train_minutes
from flows.runtime import flow_settings
from flows.train import train
from pipeline import summaries
from pipeline.config import Settings
from pipeline.demo import build_site, serve_site, site_labels, triage_agreement
from pipeline.registry import register_shipped, register_shipped_detector
from pipeline.workspace import open_workspace


class LiveDisplay:
    """Progress bars for each stage, refreshed every second from the catalog in a thread."""

    def __init__(self, console: Console, settings: Settings, since: datetime, minutes: float, profile: str):
        self.settings, self.since, self.minutes = settings, since, minutes
        self.progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}", justify="left"), BarColumn(bar_width=30),
            TaskProgressColumn(), TimeElapsedColumn(), console=console, transient=False, refresh_per_second=4,
        )
        p = self.progress
        self.budget = p.add_task(f"demo (budget {minutes:.0f} min)", total=minutes * 60)
        self.ingest = p.add_task("ingest: scrape, dedup", total=None)
        self.triage = p.add_task("triage: detector cold start, scoring", total=None, start=False)
        self.profile = profile
        self.train = p.add_task(f"train: {profile} remover", total=100, start=False)
        self.clean = p.add_task("clean: watermarked pool", total=None, start=False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="demo-display", daemon=True)
        self._t0 = time.monotonic()

    def __enter__(self) -> LiveDisplay:
        self.progress.start()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._refresh(final=exc[0] is None)
        self.progress.stop()

    def _loop(self) -> None:
        with open_workspace(self.settings) as (catalog, _):
            self.catalog = catalog
            while not self._stop.wait(1.0):
                try:
                    self._refresh()
                except Exception:  # noqa: BLE001 - the catalog may be mid-migration; try again next second
                    continue

    def _refresh(self, final: bool = False) -> None:
        p = self.progress
        p.update(self.budget, completed=min(self.minutes * 60, time.monotonic() - self._t0))
        catalog = getattr(self, "catalog", None)
        if catalog is None:
            return
        snap = summaries.demo_snapshot(catalog, self.since)
        p.update(self.ingest, description=f"ingest: {snap['pages']} pages, {snap['images']} images, "
                                          f"{snap['failures']} failures")
        if snap["images"]:
            if snap["triaged"] or snap["detector"]:
                p.start_task(self.triage)
                p.update(self.ingest, total=1, completed=1)
            p.update(self.triage, total=snap["images"], completed=snap["triaged"],
                     description=f"triage: {snap['triaged']}/{snap['images']} images labelled"
                     + ("" if snap["detector"] else " (training the detector)"))
        train = snap["train"]
        if train:
            p.start_task(self.train)
            cap = train["max_minutes"]
            share = 100.0 if train["status"] == "completed" else (
                min(99.0, 100.0 * train["minutes"] / cap) if cap else 50.0)
            psnr = f", val PSNR {train['val_psnr']:.2f} dB" if train["val_psnr"] is not None else ""
            p.update(self.train, completed=share,
                     description=f"train: {self.profile}, epoch {train['epochs']}{psnr}"
                     + (f" (cap {cap:.1f} min)" if cap else ""))
        if train and train["status"] == "completed":
            p.start_task(self.clean)
            total = max(snap["watermarked_pool"], snap["cleaned"])
            p.update(self.clean, total=total or 1, completed=snap["cleaned"] if total else (1 if final else 0),
                     description=f"clean: {snap['cleaned']}/{total} images")


def summary_table(catalog, result: dict, manifest: dict, minutes: float) -> Table:
    """What the demo did, in one table."""
    counts = summaries.catalog_counts(catalog)
    train = result.get("train") or {}
    clean = result.get("clean") or {}
    test = train.get("metrics") or {}
    table = Table(title="Unmark demo", show_header=True, header_style="bold")
    table.add_column("what")
    table.add_column("result", overflow="fold")
    table.add_row("sample site", ", ".join(f"{k} {v}" for k, v in manifest.items()))
    table.add_row("pages fetched", str(counts["pages"]))
    table.add_row("images by status", ", ".join(f"{k} {v}" for k, v in sorted(counts["images"].items())))
    table.add_row("dedup roles", ", ".join(f"{k} {v}" for k, v in sorted(counts.get("dedup", {}).items())) or "—")
    table.add_row("failures", ", ".join(f"{r['stage']}/{r['reason']} {r['count']}"
                                        for r in summaries.failure_rows(catalog)) or "none")
    triage = (result.get("ingest") or {}).get("triage") or {}
    if triage:
        auc = summaries.model_metric(catalog, triage.get("detector"), "roc_auc")
        table.add_row("detector", f"{triage.get('detector')}: held-out-style ROC-AUC {_num(auc)}, "
                                  f"thresholds {_num((triage.get('thresholds') or {}).get('low'))} / "
                                  f"{_num((triage.get('thresholds') or {}).get('high'))}; labelled "
                                  f"clean {triage.get('clean')}, watermarked {triage.get('watermarked')}, "
                                  f"uncertain {triage.get('uncertain')}")
    review = result.get("review") or {}
    site = review.get("site") or {}
    on_site = (f"triage on the site: {site.get('right')} of {site.get('images')} images right, "
               f"{site.get('watermarked_found')} of {site.get('watermarked')} watermarked found, "
               f"{site.get('watermarked_called_clean')} called clean") if site.get("images") else "triage on the site: —"
    table.add_row("triage vs the site", on_site + (f" (accuracy {_num(review.get('accuracy'))})" if site else ""))
    if train.get("skipped"):
        table.add_row("remover", f"training skipped: {train['skipped']}")
    elif train:
        psnr = test.get("psnr")
        base = test.get("input_psnr")
        table.add_row("remover", f"{train.get('version')}: {train.get('epochs')} epochs in "
                                 f"{_num(train.get('train_minutes'))} min, perceptual={train.get('perceptual')}, "
                                 f"promoted={train.get('promoted')}")
        table.add_row("test split (synthetic)", f"PSNR {_num(psnr)} dB vs input {_num(base)} dB; "
                                                f"SSIM {_num(test.get('ssim'))}")
    if clean:
        table.add_row("cleaned", ", ".join(f"{k} {_num(clean[k])}" for k in
                                           ("cleaned", "duplicates", "failed", "images_per_s", "device", "skipped")
                                           if k in clean))
    table.add_row("wall time", f"{minutes:.1f} min")
    if clean.get("report"):
        table.add_row("report", str(clean["report"]))
    return table


def _num(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, float) else ("—" if v is None else str(v))


@task(name="triage-vs-site", cache_policy=NO_CACHE)
def review_triage(settings: Settings, labels: dict[str, str], site_url: str) -> dict:
    """How triage's labels compare with the site's truth, and the pools they leave; nothing is
    changed."""
    with open_workspace(settings) as (catalog, _):
        site = triage_agreement(catalog, labels, site_url)
        pools = summaries.pool_sizes(catalog)
    accuracy = site["right"] / site["images"] if site["images"] else None
    get_run_logger().info("demo: triage got %s of the site's %s images right; pools %s", site["right"],
                          site["images"], pools)
    return {"site": site, "accuracy": accuracy, "pools": pools}


@flow(name="demo", validate_parameters=True)
def demo(site_url: str, labels: dict[str, str], profile: str = "locate-cpu", perceptual: str = "off",
         finish_within_minutes: float = 12.0, home: str | None = None) -> dict:
    """The nightly pipeline on the demo's site: ``ingest``, the review above, ``train`` capped to
    fit ``finish_within_minutes`` (keeping two minutes for cleaning), ``clean`` and the report."""
    start = time.monotonic()
    settings = flow_settings(home)
    out: dict = {"ingest": ingest(seeds=[site_url + "index.html"], allow_private_hosts=True, max_pages=100,
                                  max_depth=3, home=home)}
    out["review"] = review_triage(settings, labels, site_url)
    empty = [k for k in ("train", "val", "test") if not out["review"]["pools"][k]]
    minutes = train_minutes(time.monotonic() - start, finish_within_minutes, 2.0, None)
    out["train"] = ({"skipped": f"triage left the clean pool's {', '.join(empty)} split(s) empty"} if empty else
                    train(profile=profile, max_minutes=minutes, perceptual=perceptual, home=home))
    out["clean"] = clean(device="auto", home=home)
    out["minutes"] = round((time.monotonic() - start) / 60.0, 2)
    return out


def run_demo(settings: Settings, minutes: float = 12.0, perceptual: str = "off",
             console: Console | None = None, profile: str = "locate-cpu", photos: list[str] | None = None,
             max_side: int = 640, use_shipped: bool = True) -> dict[str, Any]:
    """Build and serve the sample site, run ``nightly`` on it (ingest, ``profile`` training
    capped so that the run ends within ``minutes``, clean, report) and print the summary.
    Returns the flow's summary plus the site manifest, the report path and the wall time.
    ``profile``, ``photos`` and ``max_side`` exist for the tests (a smaller site, ``tiny``).
    With ``use_shipped`` the pretrained remover in ``model/weights/`` is registered first (as
    ``unmark init`` does), so training fine-tunes it and cleaning has it even if training loses."""
    console = console or Console()
    start, since = time.monotonic(), datetime.now(UTC)
    settings.home.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]Unmark demo[/bold] in {settings.home.resolve()} "
                  f"(catalog {settings.storage.catalog_url}); Prefect embedded, home {_prefect_home()}")
    console.print(f"perceptual loss: [bold]{perceptual}[/bold] (no ImageNet VGG16 weights offline; "
                  "`--perceptual random` uses random VGG features, slower per step)")
    with open_workspace(settings) as (catalog, blobs):
        detector = register_shipped_detector(catalog, blobs, settings.models.shipped_weights)
        shipped = register_shipped(catalog, blobs, settings.models.shipped_weights) if use_shipped else None
    for kind, got in (("detector", detector), ("remover", shipped)):
        if got:
            console.print(f"shipped {kind} registered and promoted: {got['version']}")
    manifest = build_site(settings.home / "demo-site", max_side=max_side, photos=photos)
    console.print(f"sample site: {manifest.as_dict()} in {manifest.root}")
    with serve_site(manifest.root) as url:
        console.print(f"serving it at {url}")
        with LiveDisplay(console, settings, since, minutes, profile):
            result = demo(
                site_url=url, labels=site_labels(manifest), profile=profile, perceptual=perceptual,
                finish_within_minutes=max(1.0, minutes - (time.monotonic() - start) / 60.0),
                home=str(settings.home),
            )
    wall = (time.monotonic() - start) / 60.0
    with open_workspace(settings) as (catalog, _):
        console.print(summary_table(catalog, result, manifest.as_dict(), wall))
    report = (result.get("clean") or {}).get("report")
    if report:
        console.print(f"[bold]report:[/bold] {report}")
    console.print("cleaned assets: [bold]unmark catalog images --status cleaned[/bold] "
                  "(or --format json); copy them out with [bold]unmark catalog export DEST[/bold]")
    return {**result, "site": manifest.as_dict(), "report": report, "wall_minutes": round(wall, 2)}


def _prefect_home() -> str:
    import os

    return os.environ.get("PREFECT_HOME", str(Path("~/.prefect").expanduser()))
