"""``unmark report``: a static HTML report about the catalog and its cleanings.

``UNMARK_HOME/reports/`` holds ``index.html``, the paged lists of every cleaning
(``cleanings-N.html`` newest first, ``worst-N.html`` worst first) and ``assets/`` (thumbnails,
mask overlays, zoomed marked regions, plots), linked relatively, so the folder opens from disk or
any static host with no server.

The stages of a report, one module each:
- ``cleanings``: the catalog's cleanings as rows, their ranking, the before/after table and the pages;
- ``assets``: the pictures (written once, reused by later reports);
- ``training``: the promoted remover's training curves and the figures its run drew;
- ``html``: escaping, formats, the page shell and its script (image and error checks, sorting).

``index.html`` shows the counts per status, dedup role and failure stage; the promoted remover
with its test metrics, curves and figures; the latest cleanings; the best and worst; real pairs
(model output against the clean copy); recent failures. Every value that came from the web
(URLs, error messages) is HTML-escaped.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from model.api import WEIGHTS_DIR
from pipeline.config import Settings
from pipeline.report.assets import Assets, write_atomic
from pipeline.report.cleanings import (
    PAGE_SIZE,
    cleaning_rows,
    page_name,
    pair_table,
    rank,
    worst_first,
    write_pages,
)
from pipeline.report.html import e, kv_table, page
from pipeline.report.training import training_section
from storage import BlobStore, Catalog
from storage import queries as q

__all__ = ["PAGE_SIZE", "report"]


def _catalog_cards(stats: dict) -> list[str]:
    totals = {"pages": stats["pages"], "cleanings": stats.get("cleanings"),
              **{f"models ({k})": v for k, v in stats.get("models", {}).items()}}
    return ["<h2>Catalog</h2><div class=cards>",
            f'<div class=card><b>images per status</b>{kv_table(stats["images"])}</div>',
            f'<div class=card><b>dedup roles</b>{kv_table(stats.get("dedup", {}))}</div>',
            f'<div class=card><b>failures per stage</b>{kv_table(stats["failures"])}</div>',
            f"<div class=card><b>totals</b>{kv_table(totals)}</div>", "</div>"]


def _failures_table(fails: list[tuple]) -> str:
    if not fails:
        return '<p class="muted">none</p>'
    return ("<table><tr><th>stage</th><th>subject</th><th>error</th><th>attempts</th><th>last</th></tr>"
            + "".join(f"<tr><td>{e(a)}</td><td>{e(b)}</td><td>{e(c)}: {e(d)}</td><td class=num>{x}</td><td>{e(t)}</td></tr>"
                      for a, b, c, d, x, t in fails) + "</table>")


def report(catalog: Catalog, blobs: BlobStore, settings: Settings, pairs: int = 24, extremes: int = 5,
           page_size: int = PAGE_SIZE) -> Path:
    """Write ``reports/index.html``, the cleanings' pages and their assets; return the index's path."""
    if page_size < 1 or pairs < 0 or extremes < 0:
        raise ValueError(f"page_size must be >= 1 and pairs, extremes >= 0; got {page_size}, {pairs}, {extremes}")
    out_dir = Path(settings.reports_dir)
    assets_dir = out_dir / "assets"
    assets = Assets(assets_dir, blobs, settings.images.max_image_pixels)
    with catalog.session() as s:
        stats = q.catalog_stats(s)
        remover = q.promoted_model(s, "remover")
        detector = q.promoted_model(s, "detector")
        rv = (remover.version, dict(remover.metrics or {})) if remover else None
        dv = detector.version if detector else None
        fails = [(f.stage, f.subject, f.error_class, f.message, f.attempts, f.last_at) for f in q.failures(s)[:20]]
    version = rv[0] if rv else None
    rows = cleaning_rows(catalog, version)
    if not rows:  # nothing by the promoted remover yet: show whatever was cleaned
        rows = cleaning_rows(catalog, None)
    real = [r for r in rows if r["metrics"].get("vs_clean")]
    criterion, ranked = rank(rows)
    n_show = min(extremes, len(ranked) // 2) if len(ranked) > 1 else len(ranked)
    generated = f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S}"
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = write_pages(out_dir, {"latest": rows, "worst": worst_first(rows, ranked)}, criterion, assets,
                         generated, page_size)

    remover_metrics = {k: v for k, v in (rv[1] if rv else {}).items() if not isinstance(v, dict | list)}
    by = f" by {e(version)}" if version and rows and rows[0]["model_version"] == version else ""
    body = [
        *_catalog_cards(stats),
        "<h2>Models</h2>",
        f"<p>remover: <b>{e(version) if version else 'none promoted'}</b>" + (f" · detector: <b>{e(dv)}</b>" if dv else "") + "</p>",
        kv_table(remover_metrics) if remover_metrics else "",
        "<h3>Training curves</h3>",
        training_section(catalog, settings.runs_dir, version, assets_dir,
                         Path(settings.models.shipped_weights or WEIGHTS_DIR)),
        f"<h2>Before / after ({min(pairs, len(rows))} latest of {len(rows)} cleanings{by})</h2>",
        f'<p id="all-cleanings">all {len(rows)} cleanings: <a href="{page_name("latest", 1)}">newest first</a> '
        f'({counts["latest"]} pages) · <a href="{page_name("worst", 1)}">worst first</a> ({counts["worst"]} pages)</p>',
        pair_table(rows[:pairs], assets),
        f"<h2>Best cleanings</h2><p class=muted>by {e(criterion)}</p>",
        pair_table(ranked[:n_show], assets, eager=0),
        f"<h2>Worst cleanings</h2><p class=muted>by {e(criterion)}</p>",
        pair_table(list(reversed(ranked[len(ranked) - n_show:])) if n_show else [], assets, eager=0),
        f"<h2>Real pairs ({len(real)})</h2><p class=muted>watermarked images with a clean copy in their dedup group: "
        "the model's output and the input, each against the clean copy (resized to match)</p>",
        pair_table(real[:pairs], assets, eager=0),
        "<h2>Recent failures</h2>",
        _failures_table(fails),
    ]
    index = out_dir / "index.html"
    write_atomic(index, page("Unmark report", generated, body))
    return index
