"""The report at 10,000 cleanings: how long ``unmark report`` takes, and how fast its pages load
in the real browser, against the same catalog at 100 cleanings.

    python bench/report.py [--cleanings 10000] [--small 100] [--photos 14]

A fresh home gets the shipped models (``unmark init``) and ``--photos`` real cleanings:
``unmark clean-files --no-triage`` on the offline photos at 1024×768 with seeded marks
(``bench/clean_files.make_folder``), so every cleaning has its output, mask and metrics. The
catalog is then grown to ``--small`` and to ``--cleanings`` rows by copying those cleanings
onto new image rows (distinct sha256, the same blobs; PSNRs drawn at random so the worst-first
pages have an order). At each size: ``unmark report``'s wall time, then each page
(``index.html``, ``cleanings-1.html``, ``worst-1.html``, the last ``cleanings-N.html``) opened in
headless Chromium through Playwright from ``file://``: DOMContentLoaded and load (the navigation
timing), the HTML's bytes, the ``<img>`` count, the images decoded at load (eager ones) and the
console errors (a report writes none).

Figures: ``report_s`` and, per page, ``load_ms`` at both sizes, and ``slowest_load_ratio`` (the
slowest page's load at 10,000 over the same page at 100; paging and lazy thumbnails keep it near
1). Writes ``bench/results/report.json`` and a section of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import write_results
from clean_files import make_folder, unmark

PAGES = ("index.html", "cleanings-1.html", "worst-1.html")


def grow(home: Path, n: int) -> int:
    """Copy the home's real cleanings onto new image rows until it holds ``n``; returns the count."""
    import numpy as np
    from sqlalchemy import func, insert, select

    from flows.cli_base import open_all
    from pipeline.config import load_settings
    from storage.models import Cleaning, Image

    os.environ["UNMARK_HOME"] = str(home)
    _, cat, _ = open_all(load_settings())
    with cat.session() as s:
        have = s.scalar(select(func.count()).select_from(Cleaning))
        real = [(im, c) for c, im in s.execute(select(Cleaning, Image).join(Image, Image.id == Cleaning.image_id)
                                                .order_by(Cleaning.id).limit(64))]
        real = [(dict(blob_key=im.blob_key, mime=im.mime, width=im.width, height=im.height, bytes=im.bytes),
                 dict(model_version=c.model_version, output_key=c.output_key, source=c.source,
                      ssim_vs_input=c.ssim_vs_input, changed_fraction=c.changed_fraction, metrics=c.metrics))
                for im, c in real]
    rng = np.random.default_rng(0)
    todo = n - have
    for start in range(0, max(0, todo), 2000):
        k = min(2000, todo - start)
        with cat.write() as s:
            base = s.scalar(select(func.max(Image.id))) or 0
            s.execute(insert(Image), [dict(sha256=f"{base + i + 1:064x}", status="cleaned", label="watermarked",
                                           **real[i % len(real)][0]) for i in range(k)])
            ids = s.scalars(select(Image.id).where(Image.id > base).order_by(Image.id)).all()
            s.execute(insert(Cleaning), [dict(image_id=iid, psnr_vs_input=float(rng.uniform(20, 50)),
                                              **real[i % len(real)][1]) for i, iid in enumerate(ids)])
    cat.engine.dispose()
    return max(n, have)


def browse(reports: Path, pages: list[str]) -> dict[str, dict]:
    """Each page's load figures in headless Chromium (see the module docstring)."""
    from playwright.sync_api import sync_playwright

    out: dict[str, dict] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=shutil.which("chromium"), headless=True,
                                     args=["--no-sandbox", "--disable-gpu"])
        for name in pages:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("console", lambda m, errors=errors: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
            page.goto((reports / name).as_uri(), wait_until="load")
            t = page.evaluate("""() => { const n = performance.getEntriesByType('navigation')[0];
                const imgs = [...document.images];
                return {dcl: n.domContentLoadedEventEnd, load: n.loadEventEnd, imgs: imgs.length,
                        eager: imgs.filter(i => i.loading !== 'lazy').length,
                        decoded: imgs.filter(i => i.complete && i.naturalWidth > 0).length}; }""")
            out[name] = {"dcl_ms": round(t["dcl"], 1), "load_ms": round(t["load"], 1), "images": t["imgs"],
                         "eager_images": t["eager"], "decoded_at_load": t["decoded"],
                         "html_kb": round((reports / name).stat().st_size / 1024, 1), "console_errors": len(errors)}
            page.close()
        browser.close()
    return out


def measure(home: Path, n: int) -> dict:
    grow(home, n)
    t = time.perf_counter()
    _, wall, _ = unmark(["report", "--json"], home, 1)
    report_s = round(time.perf_counter() - t, 2)
    reports = home / "reports"
    last = sorted(reports.glob("cleanings-*.html"), key=lambda p: int(p.stem.split("-")[1]))[-1].name
    pages = browse(reports, [*PAGES, last] if last not in PAGES else list(PAGES))
    return {"cleanings": n, "report_s": report_s, "report_wall_s": round(wall, 2), "pages": pages,
            "page_files": len(list(reports.glob("*.html")))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cleanings", type=int, default=10_000)
    ap.add_argument("--small", type=int, default=100)
    ap.add_argument("--photos", type=int, default=14)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home, folder = Path(tmp) / "home", Path(tmp) / "in"
        unmark(["init"], home, 1)
        make_folder(folder, args.photos, (1024, 768))
        unmark(["clean-files", str(folder), "--out", str(Path(tmp) / "out"), "--no-triage", "--json"], home, 1)
        small = measure(home, args.small)
        big = measure(home, args.cleanings)
    ratios = {p: round(big["pages"][p]["load_ms"] / max(1.0, small["pages"][p]["load_ms"]), 2) for p in PAGES}
    figures = {"small": small, "big": big, "load_ratio": ratios, "slowest_load_ratio": max(ratios.values()),
               "console_errors": sum(v["console_errors"] for r in (small, big) for v in r["pages"].values())}
    rows = "\n".join(
        f"| {p} | {small['pages'][p]['load_ms']} | {big['pages'][p]['load_ms']} | {big['pages'][p]['html_kb']} | "
        f"{big['pages'][p]['images']} ({big['pages'][p]['eager_images']} eager) | {ratios[p]} |" for p in PAGES)
    body = f"""`unmark report` on a catalog of {args.cleanings:,} cleanings (copied from {args.photos} real
1024×768 cleanings) took {big['report_s']} s ({big['page_files']} HTML pages); at {args.small} cleanings
{small['report_s']} s. Page loads in headless Chromium (Playwright, `file://`, navigation timing):

| page | load at {args.small} (ms) | load at {args.cleanings:,} (ms) | HTML (KB) | images | ratio |
| --- | --- | --- | --- | --- | --- |
{rows}

Slowest page ratio {figures['slowest_load_ratio']}; console errors {figures['console_errors']}."""
    print(body)
    write_results("report", figures, body)


if __name__ == "__main__":
    sys.exit(main())
