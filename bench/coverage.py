"""Static-crawl coverage on a real website no test here saw: of the raster images headless
Chromium loads on the pages the crawl fetched, the share the static crawl sighted.

The site is a folder of HTML served as it is on 127.0.0.1 (default: the Rust documentation that
rustup installs, ``~/.rustup/toolchains/*/share/doc/rust/html``: mdBook books and rustdoc pages,
written by other people for browsers). The crawl runs as ``unmark scrape`` does (static mode);
then every page it fetched is loaded in the system chromium, scrolled to the bottom, and each image
response it gets from the site is counted when it is raster (PNG, JPEG, GIF, WebP, AVIF, BMP).
Nothing leaves the machine: the crawl's resolver refuses every name, and the browser's requests to
other hosts are aborted (an image on another host counts on neither side).

    python bench/coverage.py [--root DIR] [--seeds book/index.html,cargo/index.html] [--max-pages 300] [--name N]

Writes ``bench/results/coverage.json`` (``static_share``, with and without ``--icons``) and
appends to RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import glob
import sys
import tempfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results

RASTER = ("image/png", "image/jpeg", "image/gif", "image/webp", "image/avif", "image/bmp", "image/x-icon",
          "image/vnd.microsoft.icon")
DEFAULT_SEEDS = "book/index.html,cargo/index.html,rustc/index.html,embedded-book/index.html"


def serve(root: Path) -> tuple[ThreadingHTTPServer, int]:
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def no_dns(host: str, port: int) -> list[str]:
    raise OSError(f"{host}: this benchmark resolves no name")


def static_crawl(seeds: list[str], max_pages: int, icons: bool) -> tuple[list[str], set[str], set[str]]:
    """(pages fetched that did not opt out, image URLs sighted, image URLs found but refused by the
    size policy: fetched, decoded and below ``min_image_side``, a failure row "too-small")."""
    from sqlalchemy import select

    from pipeline.config import load_settings
    from pipeline.scrape.crawl import scrape
    from pipeline.workspace import open_workspace
    from storage.models import Failure, Page, Sighting

    with tempfile.TemporaryDirectory() as home:
        settings = load_settings(home=Path(home), scrape_icons=icons, max_depth=20)
        with open_workspace(settings) as (catalog, blobs):
            summary = scrape(seeds, catalog, blobs, settings, max_pages=max_pages, allow_private_hosts=True,
                             resolver=no_dns)
            with catalog.session() as s:
                # a page that opts out (noindex …) is the crawl's policy, not an extraction miss
                rows = s.execute(select(Page.url, Page.status, Page.opted_out)).all()
                pages = [u for u, st, out in rows if st == 200 and not out]
                print(f"pages opted out: {sum(1 for _, st, out in rows if st == 200 and out)}", flush=True)
                sighted = set(s.scalars(select(Sighting.image_url)))
                small = set(s.scalars(select(Failure.subject).where(Failure.error_class == "too-small")))
    print(f"static crawl (icons={icons}): {summary['pages_fetched']} pages, {len(sighted)} image URLs, "
          f"{len(small)} below the size floor", flush=True)
    return pages, sighted, small


async def browser_images(pages: list[str], origin: str) -> dict[str, set[str]]:
    """For each page, the raster image URLs of the site that Chromium loaded (scrolled to the end)."""
    from playwright.async_api import async_playwright

    from pipeline.scrape.render import QUIET_ARGS, check_available
    from pipeline.scrape.render_dom import SCROLL_JS

    loaded: dict[str, set[str]] = {}
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=check_available(), headless=True,
                                           proxy={"server": "http://127.0.0.1:9", "bypass": "127.0.0.1"},
                                           args=list(QUIET_ARGS))
        ctx = await browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")

        async def only_the_site(route) -> None:
            if route.request.url.startswith(origin):
                await route.continue_()
            else:
                await route.abort("blockedbyclient")

        await ctx.route("**/*", only_the_site)
        for url in pages:
            got: set[str] = set()
            tab = await ctx.new_page()

            def on_response(resp, got=got) -> None:
                kind = (resp.headers.get("content-type") or "").split(";")[0].strip().lower()
                if resp.request.resource_type == "image" and resp.status == 200 and kind in RASTER:
                    got.add(resp.url)

            tab.on("response", on_response)
            try:
                await tab.goto(url, wait_until="load", timeout=20_000)
                for _ in range(40):
                    at_bottom, _h = await tab.evaluate(SCROLL_JS)
                    if at_bottom:
                        break
                await tab.wait_for_timeout(100)
            except Exception as exc:  # noqa: BLE001 - a page that fails in the browser counts nothing
                print(f"browser: {url}: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
            await tab.close()
            loaded[url] = got
        await browser.close()
    return loaded


def main() -> None:
    ap = argparse.ArgumentParser()
    found = sorted(glob.glob(str(Path.home() / ".rustup/toolchains/*/share/doc/rust/html")))
    ap.add_argument("--root", default=found[0] if found else None)
    ap.add_argument("--seeds", default=DEFAULT_SEEDS)
    ap.add_argument("--max-pages", type=int, default=300)
    ap.add_argument("--name", default="coverage", help="result name: bench/results/NAME.json (one per site)")
    args = ap.parse_args()
    if not args.root or not Path(args.root).is_dir():
        sys.exit("no site folder: pass --root DIR (a folder of HTML pages)")
    from pipeline.scrape.extract import normalize_url

    server, port = serve(Path(args.root))
    origin = f"http://127.0.0.1:{port}/"
    seeds = [origin + s.strip().lstrip("/") for s in args.seeds.split(",") if s.strip()]
    try:
        pages, sighted, small = static_crawl(seeds, args.max_pages, icons=False)
        _, sighted_icons, small_icons = static_crawl(seeds, args.max_pages, icons=True)
        loaded = asyncio.run(browser_images(pages, origin))
    finally:
        server.shutdown()
    browser = {normalize_url(u) for urls in loaded.values() for u in urls} - {None}
    hit, hit_icons = browser & sighted, browser & sighted_icons
    found = browser & (sighted | small)  # the extractor read it; the size policy may then refuse it
    missed = sorted(urlsplit(u).path for u in browser - sighted - small)
    floored = sorted(urlsplit(u).path for u in browser & (small - sighted))
    figures = {
        "site": args.root, "seeds": args.seeds, "pages": len(pages), "browser_raster_images": len(browser),
        "static_found": len(hit), "static_share": round(len(hit) / len(browser), 4) if browser else None,
        "static_found_with_icons": len(hit_icons),
        "static_share_with_icons": round(len(hit_icons) / len(browser), 4) if browser else None,
        "found_by_extractor": len(found), "extractor_share": round(len(found) / len(browser), 4) if browser else None,
        "below_size_floor": floored[:50], "found_with_icons": len(browser & (sighted_icons | small_icons)),
        "missed": missed[:50],
    }
    print(figures, flush=True)
    body = (f"Site: `{args.root}` (served as it is on 127.0.0.1), seeds `{args.seeds}`, {len(pages)} pages "
            f"fetched by the static crawl and not opted out (`noindex` pages such as mdBook's print.html are "
            f"left out on both sides).\n\n"
            "| | raster images Chromium loads | found by the extractor | of them kept (sighted) | found share | kept share |\n"
            "| --- | --- | --- | --- | --- | --- |\n"
            f"| default (no icons) | {len(browser)} | {len(found)} | {len(hit)} | **{figures['extractor_share']}** | "
            f"{figures['static_share']} |\n"
            f"| `--icons` | {len(browser)} | {figures['found_with_icons']} | {len(hit_icons)} | – | "
            f"{figures['static_share_with_icons']} |\n\n"
            f"Found, then refused by the size floor (`min_image_side`, a `too-small` failure row): "
            f"{', '.join(floored[:20]) or 'none'}  \nMissed by the extractor (default): {', '.join(missed[:20]) or 'none'}\n")
    write_results(args.name, figures, body)


if __name__ == "__main__":
    main()
