"""A rendered crawl killed with its browser (SIGKILL to the whole process group) and run again
ends with the rows of an uninterrupted rendered run, as the static crawl does."""

from __future__ import annotations

import json
import os
import sys

from pipeline.config import load_settings
from pipeline.scrape.crawl import scrape
from storage import BlobStore, open_catalog
from tests.pipeline.scrape_site import Site, png_bytes
from tests.pipeline.test_scrape_render import needs_browser
from tests.pipeline.test_scrape_resume import kill_then_rerun, snapshot

N_PAGES = 16
PAGE = """<html><body><div id="g"></div><a href="/p{next}.html">next</a><script>
fetch("/api/{i}.json").then(r => r.json()).then(items => {{
  for (const src of items) {{ const img = document.createElement("img"); img.src = src; img.alt = "page {i}";
    document.getElementById("g").appendChild(img); }}
}});
</script></body></html>"""


def build(site: Site) -> None:
    site.static("/robots.txt", b"User-agent: *\nAllow: /\n", "text/plain")
    site.page("/", "".join(f"<a href='/p{i}.html'>{i}</a>" for i in range(N_PAGES)))
    for i in range(N_PAGES):
        srcs = [f"/img/{i}-{k}.png" for k in range(3)] + ["/img/shared.png"]
        site.page(f"/p{i}.html", PAGE.format(i=i, next=(i + 1) % N_PAGES))
        site.static(f"/api/{i}.json", json.dumps(srcs).encode(), "application/json")
        for k in range(3):
            site.static(f"/img/{i}-{k}.png", png_bytes(7000 + i * 10 + k), "image/png")
    site.static("/img/shared.png", png_bytes(6999), "image/png")


@needs_browser
def test_kill_9_with_the_browser_then_rerun_gives_exact_counts(tmp_path, unmark_env, settings):
    site = Site(latency_s=0.02)
    try:
        build(site)
        env = dict(unmark_env, UNMARK_WRITE_BATCH_SIZE="4", UNMARK_GLOBAL_CONCURRENCY="2",
                   UNMARK_RENDER_CONCURRENCY="1")
        cmd = [sys.executable, "-m", "flows.cli", "scrape", site.url("/"), "--allow-private-hosts", "--json",
               "--render", "always"]
        db = str(settings.home / "catalog.sqlite")
        # the crawl, the Playwright driver and the browser, all at once
        killed_at, done = kill_then_rerun(cmd, env, db, 10, 90, os.killpg)
        assert killed_at < N_PAGES * 3 + 1 and json.loads(done.stdout)["pages_rendered"] >= 1
        resumed = snapshot(settings)

        ref = load_settings(home=tmp_path / "reference")
        cat = open_catalog(ref.storage)
        try:
            scrape([site.url("/")], cat, BlobStore.from_settings(ref.storage), ref, allow_private_hosts=True, render="always")
        finally:
            cat.dispose()
        want = snapshot(ref)
    finally:
        site.close()

    assert want["n_images"] == N_PAGES * 3 + 1 and want["n_sightings"] == N_PAGES * 4
    for key in ("n_images", "images", "n_sightings", "sightings", "n_pages", "pages", "failures"):
        assert resumed[key] == want[key], key
    assert resumed["blobs"] == resumed["image_blobs"]
