"""Pages that draw their images with JavaScript, served by the loopback ``Site``: a gallery filled
from a JSON endpoint, an infinite scroll, a client-rendered app, and a page whose script reaches
for refused addresses. The static crawl finds none of their scripted images; a rendered crawl
must find all of them (``SCRIPTED``)."""

from __future__ import annotations

import json

from tests.pipeline.scrape_site import Site, png_bytes

GALLERY = """<html><head><title>gallery</title></head><body><div id="g"></div>
<script>
fetch("/api/gallery.json").then(r => r.json()).then(items => {
  for (const it of items) {
    const img = document.createElement("img"); img.src = it.src; img.alt = it.alt;
    document.getElementById("g").appendChild(img);
  }
});
const preload = new Image(); preload.src = "/img/req-only.png";  // requested, never put in the page
</script></body></html>"""

SCROLL = """<html><head><style>.spacer { height: 3000px }</style></head><body>
<div id="feed"><div class="spacer"></div></div><div id="end"></div>
<script>
let next = 1, busy = false;
async function more() {
  if (busy || next > 3) return;
  busy = true;
  const items = await (await fetch("/api/feed?page=" + next)).json();
  const feed = document.getElementById("feed");
  for (const src of items) { const img = document.createElement("img"); img.src = src; feed.appendChild(img); }
  const spacer = document.createElement("div"); spacer.className = "spacer"; feed.appendChild(spacer);
  next += 1; busy = false;
}
new IntersectionObserver(es => { if (es.some(e => e.isIntersecting)) more(); }).observe(document.getElementById("end"));
</script></body></html>"""

APP = """<!doctype html><html><head><script src="/static/app.js" defer></script></head>
<body><div id="root">Loading…</div></body></html>"""

APP_JS = """
const root = document.getElementById("root");
root.innerHTML = `
  <h1>App</h1>
  <picture><source srcset="/img/app-pic-s.png 400w, /img/app-pic-l.png 1200w"><img src="/img/app-pic-l.png" alt="pic"></picture>
  <div class="hero" style="background-image: url('/img/app-hero.png'); width: 10px; height: 10px"></div>
  <img srcset="/img/app-1x.png 1x, /img/app-2x.png 2x" alt="dense">
  <a href="/from-js.html">made by script</a>`;
const lazy = document.createElement("img");
lazy.loading = "lazy"; lazy.src = "/img/app-lazy.png"; lazy.style.marginTop = "4000px";
document.body.appendChild(lazy);
"""

EVIL = """<html><head><link rel="preconnect" href="http://10.0.0.4/"></head><body><p>nothing to see</p>
<script>
try { new WebSocket("ws://10.0.0.3/live"); } catch (e) {}
fetch("http://10.0.0.1/steal.json").catch(() => {});
fetch("http://internal.test:{port}/metadata.json").catch(() => {});
fetch("/private/data.json").catch(() => {});
fetch("/api/gallery.json", {method: "POST", body: "x"}).catch(() => {});
const img = document.createElement("img"); img.src = "http://10.0.0.2/pixel.png"; document.body.appendChild(img);
const ok = document.createElement("img"); ok.src = "/img/evil-ok.png"; document.body.appendChild(ok);
</script></body></html>"""

# path -> found_by, for every image a browser shows on those pages and the static parse misses
SCRIPTED = {
    "/img/gallery-1.png": "render:dom", "/img/gallery-2.png": "render:dom", "/img/gallery-3.png": "render:dom",
    "/img/feed-1a.png": "render:dom", "/img/feed-1b.png": "render:dom", "/img/feed-2a.png": "render:dom",
    "/img/feed-2b.png": "render:dom", "/img/feed-3a.png": "render:dom", "/img/feed-3b.png": "render:dom",
    "/img/app-pic-l.png": "render:dom", "/img/app-hero.png": "render:dom", "/img/app-2x.png": "render:dom",
    "/img/app-lazy.png": "render:dom", "/img/evil-ok.png": "render:dom", "/img/js-child.png": "img",
    "/img/req-only.png": "render:request",
}
CANDIDATES = {"/img/app-pic-s.png": "/img/app-pic-l.png", "/img/app-1x.png": "/img/app-2x.png"}


def add_render_pages(site: Site) -> None:
    site.static("/robots.txt", b"User-agent: *\nDisallow: /private/\n", "text/plain")
    site.page("/", "".join(f"<a href='/{p}.html'>{p}</a>" for p in ("gallery", "scroll", "app", "evil", "static"))
              + "<img src='/img/home.png'><script>/* analytics */</script>")
    site.page("/gallery.html", GALLERY)
    site.static("/api/gallery.json", json.dumps([{"src": f"/img/gallery-{i}.png", "alt": f"photo {i}"}
                                                 for i in (1, 2, 3)]).encode(), "application/json")
    site.page("/scroll.html", SCROLL)

    def feed(req) -> None:
        n = int(req.path.rsplit("=", 1)[1])
        req.send(200, json.dumps([f"/img/feed-{n}a.png", f"/img/feed-{n}b.png"]).encode(),
                 content_type="application/json")

    site.routes["/api/feed"] = feed
    site.page("/app.html", APP)
    site.static("/static/app.js", APP_JS.encode(), "text/javascript")
    site.page("/from-js.html", "<img src='/img/js-child.png'>")
    site.page("/evil.html", EVIL.replace("{port}", str(site.port)))
    site.static("/private/data.json", b"{}", "application/json")
    site.page("/static.html", "<img src='/img/static.png' alt='plain'>")
    names = ["/img/home.png", "/img/static.png", *SCRIPTED, *CANDIDATES]
    for i, path in enumerate(names):
        site.static(path, png_bytes(500 + i), "image/png")
