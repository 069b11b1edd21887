"""Cleanings in the report: the rows, their ranking, the before/after table and the paged lists.

Every cleaning is listed on ``cleanings-N.html`` (newest first) and ``worst-N.html`` (worst first
by the ranking's criterion, then the cleanings it cannot rank), ``PAGE_SIZE`` to a page, so no page
grows with the catalog. The first ``EAGER_ROWS`` rows of a table load their pictures at once;
the rest are ``loading="lazy"``. Each row carries its metrics as ``data-*`` values for the
page's sort buttons.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from pipeline.report.assets import Assets, Zoom, write_atomic
from pipeline.report.html import e, fmt, img, page
from storage import Catalog, reports

PAGE_SIZE = 100
EAGER_ROWS = 3
ORDERS = {"latest": ("cleanings", "newest first"), "worst": ("worst", "worst first")}
SORTS = (("score_after", -1, "highest detector score after"), ("psnr", 1, "lowest PSNR vs input"),
         ("changed", -1, "most changed"), ("mask_area", -1, "largest mask"), ("id", -1, "newest"))


def cleaning_rows(catalog: Catalog, version: str | None) -> list[dict]:
    """Every cleaning (by ``version`` when given), newest first, with its image's keys and size."""
    with catalog.session() as s:
        return reports.cleaning_rows(s, version)


def rank(rows: list[dict]) -> tuple[str, list[dict]]:
    """Model cleanings ordered best first, and the criterion used: detector score after
    cleaning when a detector scored them, else PSNR vs input outside the changed region."""
    rows = [r for r in rows if r["source"] == "model"]
    scored = [r for r in rows if r["score_after"] is not None]
    if scored:
        return "detector score after cleaning (lower is better)", sorted(scored, key=lambda r: (r["score_after"], -r["id"]))
    fid = [r for r in rows if r["psnr_vs_input"] is not None]
    return ("PSNR vs input outside the changed region (higher is better)",
            sorted(fid, key=lambda r: (-r["psnr_vs_input"], -r["id"])))


def worst_first(rows: list[dict], ranked: list[dict]) -> list[dict]:
    """``ranked`` reversed, then the rows it leaves out (newest first)."""
    seen = {r["id"] for r in ranked}
    return list(reversed(ranked)) + [r for r in rows if r["id"] not in seen]


def _metrics_cell(r: dict) -> str:
    m = r["metrics"]
    items = [
        ("source", e(r["source"])),
        ("PSNR vs input (unchanged region)", fmt(r["psnr_vs_input"]) + " dB"),
        ("SSIM vs input (unchanged region)", fmt(r["ssim_vs_input"], 4)),
        ("changed", fmt(r["changed_fraction"], 2, pct=True)),
        ("mean residual", fmt(m.get("mean_residual"), 4)),
        ("predicted mask area", fmt(m.get("mask_area"), 2, pct=True)),
        ("detector score", f"{fmt(r['score_before'], 3)} → {fmt(r['score_after'], 3)}"),
        ("runtime", fmt(r["runtime_s"], 3) + " s"),
    ]
    vs = m.get("vs_clean")
    if vs:
        items.append(("vs clean copy (PSNR / SSIM)", f"{fmt(vs.get('input_psnr'))} → {fmt(vs.get('psnr'))} dB; "
                                                      f"{fmt(vs.get('input_ssim'), 4)} → {fmt(vs.get('ssim'), 4)}"))
    return '<table class="metrics">' + "".join(f"<tr><td class=muted>{k}</td><td>{v}</td></tr>" for k, v in items) + "</table>"


def _data(r: dict) -> str:
    """The row's sortable values as ``data-*`` attributes (empty when unknown: sorted last)."""
    vals = {"id": r["id"], "psnr": r["psnr_vs_input"], "changed": r["changed_fraction"],
            "mask_area": r["metrics"].get("mask_area"), "score_after": r["score_after"]}
    out = []
    for k, v in vals.items():
        ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        out.append(f'data-{k}="{v if ok else ""}"')
    return " ".join(out)


def _zoomed(src: str, alt: str, z: Zoom, lazy: bool) -> str:
    w, h = z.size
    k = z.magnify
    return (f'<img src="{e(src)}" alt="{e(alt)}" width="{w * k}" height="{h * k}" '
            f'loading="{"lazy" if lazy else "eager"}">')


FILTERS = (("all", "all"), ("model", "model cleanings"), ("duplicate", "real pairs"), ("marked", "a marked region"))


def _row(r: dict, assets: Assets, lazy: bool) -> str:
    sha = r["sha256"][:12]
    after_key = r["metrics"].get("model_output") or r["output_key"]
    mask_key = r["metrics"].get("mask_key")
    cells = [f'<td class="pair">{img(assets.thumb(r["input_key"]), "before " + sha, lazy)}'
             f'<div class=muted>{e(sha)} · {r["width"]}×{r["height"]}</div></td>',
             f'<td class="pair">{img(assets.thumb(after_key), "after " + sha, lazy)}'
             f'<div class=muted>{"model output" if after_key != r["output_key"] else "output"}</div></td>']
    if mask_key:
        cells.append(f'<td class="pair">{img(assets.overlay(r["input_key"], mask_key), "mask " + sha, lazy)}'
                     '<div class=muted>predicted mask (red)</div></td>')
        z = assets.zoom(r["input_key"], after_key, mask_key)
        cells.append(f'<td><div class="zoom">{_zoomed(z.before, "marked region before " + sha, z, lazy)}'
                     f'{_zoomed(z.after, "marked region after " + sha, z, lazy)}</div>'
                     f'<div class=muted>before | after · {e(z.note)}</div></td>' if z else
                     '<td class="muted">nothing marked</td>')
    else:
        z = None
        cells.append('<td class="pair muted">no mask head</td><td></td>')
    if r["source"] == "duplicate" and after_key != r["output_key"]:
        cells.append(f'<td class="pair">{img(assets.thumb(r["output_key"]), "clean copy " + sha, lazy)}'
                     '<div class=muted>clean copy (the asset)</div></td>')
    else:
        cells.append("<td></td>")
    cells.append(f"<td>{_metrics_cell(r)}</td>")
    return (f'<tr {_data(r)} data-source="{e(r["source"])}" data-marked="{1 if z else 0}">'
            + "".join(cells) + "</tr>")


def pair_table(rows: list[dict], assets: Assets, eager: int = EAGER_ROWS) -> str:
    """Before | after | predicted mask | zoomed marked region | reference | metrics, one row per
    cleaning; pictures beyond the first ``eager`` rows load lazily."""
    if not rows:
        return '<p class="muted">no cleanings yet</p>'
    body = "".join(_row(r, assets, lazy=i >= eager) for i, r in enumerate(rows))
    return ('<table class="cleanings"><thead><tr><th>before</th><th>after</th><th>predicted mask</th>'
            "<th>marked region (zoomed)</th><th>reference</th><th>metrics</th></tr></thead>"
            f"<tbody>{body}</tbody></table>")


def page_name(order: str, n: int) -> str:
    return f"{ORDERS[order][0]}-{n}.html"


def _nav(order: str, n: int, pages: int) -> str:
    orders = " ".join(f"<b>{e(label)}</b>" if o == order else f'<a href="{page_name(o, 1)}">{e(label)}</a>'
                      for o, (_, label) in ORDERS.items())
    shown = sorted({1, pages, *range(max(1, n - 5), min(pages, n + 5) + 1)})
    links, last = [], 0
    for k in shown:
        if k > last + 1:
            links.append("…")
        links.append(f"<b>{k}</b>" if k == n else f'<a href="{page_name(order, k)}">{k}</a>')
        last = k
    return f'<nav><a href="index.html">report</a> · order: {orders} · page: {" ".join(links)}</nav>'


def _sort_buttons() -> str:
    return ('<p class="sorts">sort this page: ' + "".join(
        f'<button type="button" data-sort="{k}" data-dir="{d}">{e(label)} first</button>' for k, d, label in SORTS)
        + ' <span id="sorted-by" class="muted"></span></p><p class="sorts">show: ' + "".join(
        f'<button type="button" data-filter="{k}">{e(label)}</button>' for k, label in FILTERS)
        + ' <span id="filtered-by" class="muted"></span></p>')


def write_pages(out_dir: Path, orders: dict[str, list[dict]], criterion: str, assets: Assets, generated: str,
                page_size: int = PAGE_SIZE) -> dict[str, int]:
    """Write every order's pages (and remove pages a larger catalog left behind); returns the
    number of pages of each order (at least one, which may say there are no cleanings)."""
    counts = {}
    for order, rows in orders.items():
        pages = max(1, math.ceil(len(rows) / page_size))
        for n in range(1, pages + 1):
            chunk = rows[(n - 1) * page_size : n * page_size]
            first = (n - 1) * page_size + 1
            what = (f"worst first by {criterion}" if order == "worst" else "newest first")
            body = [_nav(order, n, pages),
                    f"<p>cleanings {first}–{first + len(chunk) - 1} of {len(rows)}, {e(what)}</p>" if chunk else "",
                    _sort_buttons(), pair_table(chunk, assets), _nav(order, n, pages)]
            write_atomic(out_dir / page_name(order, n),
                         page(f"Unmark cleanings ({ORDERS[order][1]}), page {n} of {pages}", generated, body))
        pattern = re.compile(rf"{ORDERS[order][0]}-(\d+)\.html")
        for old in out_dir.glob(f"{ORDERS[order][0]}-*.html"):
            m = pattern.fullmatch(old.name)
            if m and int(m.group(1)) > pages:
                old.unlink()
        counts[order] = pages
    return counts
