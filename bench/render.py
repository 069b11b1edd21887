"""Rendered-crawl throughput on loopback: pages per second through headless Chromium, every
request answered by the crawl's guarded fetcher.

A loopback site (``tests.pipeline.scrape_site.Site``) serves ``--pages`` pages; each has no image
in its HTML and a script that fetches a JSON list of ``--per-page`` images and inserts them (the
gallery of ``tests/pipeline/render_site.py``). The crawl runs as ``unmark scrape --render always``
does (the Python API, one catalog on a temp folder), once per ``--concurrency`` value (pages in the
browser at once); the static crawl of the same site is timed beside it (and finds nothing).

    python bench/render.py [--pages 200] [--per-page 4] [--concurrency 2,4]

Writes ``bench/results/render.json`` (``pages_per_s`` at the best concurrency, and per value) and
appends to RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results

PAGE = """<html><head><title>p{n}</title></head><body><div id="g"></div><a href="/p{next}.html">next</a>
<script>
fetch("/api/{n}.json").then(r => r.json()).then(items => {{
  for (const src of items) {{ const i = document.createElement("img"); i.src = src; document.getElementById("g").appendChild(i); }}
}});
</script></body></html>"""


def make_site(pages: int, per_page: int):
    from tests.pipeline.scrape_site import Site, png_bytes

    site = Site()
    site.static("/robots.txt", b"User-agent: *\nAllow: /\n", "text/plain")
    links = "".join(f"<a href='/p{n}.html'>{n}</a>" for n in range(pages))
    site.page("/", f"<html><body>{links}</body></html>")
    for n in range(pages):
        site.page(f"/p{n}.html", PAGE.format(n=n, next=(n + 1) % pages))
        srcs = [f"/img/{n}-{k}.png" for k in range(per_page)]
        site.static(f"/api/{n}.json", json.dumps(srcs).encode(), "application/json")
        for k, src in enumerate(srcs):
            site.static(src, png_bytes(n * per_page + k, 96, 72), "image/png")
    return site


def crawl(site, pages: int, render: str, concurrency: int) -> dict:
    from pipeline.config import load_settings
    from pipeline.scrape.crawl import scrape
    from pipeline.workspace import open_workspace

    with tempfile.TemporaryDirectory() as home:
        settings = load_settings(home=Path(home), render_concurrency=concurrency)
        with open_workspace(settings) as (catalog, blobs):
            t, cpu = time.monotonic(), _cpu_s()
            summary = scrape([site.url("/")], catalog, blobs, settings, max_pages=pages + 1, max_depth=1,
                             allow_private_hosts=True, render=render)
            summary["wall_s"] = time.monotonic() - t
            summary["cpu_s"] = _cpu_s() - cpu  # the browser's processes are reaped by then
    return summary


def _cpu_s() -> float:
    """CPU seconds of this process (the crawl, the site's server) and of its reaped children (the
    Playwright driver and the browser processes it waited for)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=200)
    ap.add_argument("--per-page", type=int, default=4)
    ap.add_argument("--concurrency", default="2,4")
    args = ap.parse_args()
    site = make_site(args.pages, args.per_page)
    rows, figures = [], {"pages": args.pages, "per_page": args.per_page, "by_concurrency": {}}
    try:
        static = crawl(site, args.pages, "never", 2)
        figures["static_images"] = static["images_fetched"]
        for c in [int(x) for x in args.concurrency.split(",")]:
            s = crawl(site, args.pages, "always", c)
            rate = s["pages_rendered"] / s["wall_s"]
            per_page = s["cpu_s"] / max(1, s["pages_rendered"])
            figures["by_concurrency"][str(c)] = {
                "pages_per_s": round(rate, 2), "cpu_s_per_page": round(per_page, 3),
                "pages_per_s_two_free_cores": round(2 / per_page, 2),
                "pages_rendered": s["pages_rendered"], "wall_s": round(s["wall_s"], 2),
                "images_fetched": s["images_fetched"], "render_requests": s["render_requests"],
                "render_errors": s["render_errors"], "render_launches": s["render_launches"],
                "failures": s["failures"]}
            rows.append(f"| {c} | {s['pages_rendered']} | {s['wall_s']:.1f} | **{rate:.2f}** | {per_page:.3f} "
                        f"| {2 / per_page:.1f} | {s['images_fetched']} "
                        f"| {s['render_errors']} | {s['render_launches']} |")
            print(json.dumps({"concurrency": c, **figures["by_concurrency"][str(c)]}), flush=True)
    finally:
        site.close()
    best = max(figures["by_concurrency"].values(), key=lambda v: v["pages_per_s"])
    figures["pages_per_s"] = best["pages_per_s"]
    body = (f"Rendered crawl of {args.pages} loopback pages, each filling {args.per_page} images from a JSON "
            f"endpoint with script (`--render always`; the static crawl of the same site fetched "
            f"{figures['static_images']} images).\n\n"
            "| pages in the browser at once | pages rendered | wall s | pages/s | CPU s/page | pages/s if 2 cores were "
            "free (2 / CPU s per page) | images | render errors | launches |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n\n"
            f"Load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (another job's training "
            "holds one core; this run is the CPU time it was left).\n")
    write_results("render", figures, body)


if __name__ == "__main__":
    main()
