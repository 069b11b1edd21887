"""Every element that makes a browser fetch an image, on the loopback site: input type=image,
object data, embed src, video poster, SVG <image>, srcset candidates, CSS image-set, linked and
imported stylesheets (fetched under the page rules), preload links, icons when asked for."""

from __future__ import annotations

import pytest

from pipeline.scrape.sheets import SHEET_STAGE
from pipeline.scrape.styles import css_refs
from tests.pipeline.scrape_site import Site, png_bytes
from tests.pipeline.test_scrape import counts, failures, run, sightings

PAGE = """<html><head>
<link rel="stylesheet" href="/css/main.css"><link rel="alternate stylesheet" href="/css/alt.css">
<link rel="stylesheet" href="/private/hidden.css"><link rel="stylesheet" href="/css/missing.css">
<link rel="stylesheet" href="/css/huge.css">
<link rel="preload" as="image" href="/img/pre-1x.png" imagesrcset="/img/pre-1x.png 1x, /img/pre-2x.png 2x">
<link rel="preload" as="image" href="/img/pre-plain.png"><link rel="preload" as="script" href="/app.js">
<link rel="icon" href="/img/icon.png"><link rel="apple-touch-icon" href="/img/touch.png">
<style>@import url("/css/imported.css"); .b { background: image-set("/img/set-1x.png" 1x, "/img/set-2x.png" 2x) }
@font-face { font-family: F; src: url("/fonts/f.woff2") format("woff2") }</style>
</head><body>
<form><input type="image" src="/img/button.png" alt="send"><input type="text" src="/img/not-input.png"></form>
<object data="/img/object.png" type="image/png" title="an object"></object>
<object data="/doc.html"></object><object data="/clip.swf" type="application/x-shockwave-flash"></object>
<embed src="/img/embed.png"><embed src="/movie.mp4" type="video/mp4">
<video poster="/img/poster.jpg" title="a video"><source src="/movie.mp4"></video>
<svg><image href="/img/svg-href.png"></image><image xlink:href="/img/svg-xlink.png"></image></svg>
<img src="/img/x1.png" srcset="/img/x1.png 1x, /img/x2.png 2x, /img/x3.png 3x" alt="density">
<img src="/img/w-fallback.png" srcset="/img/w-400.png 400w, /img/w-1600.png 1600w, /img/w-800.png 800w" alt="width">
<div style="background-image: -webkit-image-set(url(/img/inline-1x.png) 1x, url('/img/inline-2x.png') 2x)">i</div>
<a href="/other.html">other</a>
</body></html>"""

OTHER = """<html><head><link rel="stylesheet" href="/css/main.css"></head><body><p>no images of its own</p></body></html>"""

FETCHED = {  # path -> found_by: each downloaded once
    "/img/button.png": "input", "/img/object.png": "object", "/img/embed.png": "embed", "/img/poster.jpg": "poster",
    "/img/svg-href.png": "svg", "/img/svg-xlink.png": "svg", "/img/x3.png": "srcset", "/img/w-1600.png": "srcset",
    "/img/inline-2x.png": "css", "/img/set-2x.png": "css", "/img/pre-2x.png": "preload",
    "/img/pre-plain.png": "preload", "/img/sheet.png": "stylesheet", "/img/sheet-set-2x.png": "stylesheet",
    "/img/imported.png": "stylesheet", "/img/deep-import.png": "stylesheet",
}
CANDIDATES = {  # lesser candidates: sightings of the image fetched in their place, never downloaded
    "/img/x1.png": "/img/x3.png", "/img/x2.png": "/img/x3.png", "/img/w-400.png": "/img/w-1600.png",
    "/img/w-800.png": "/img/w-1600.png", "/img/w-fallback.png": "/img/w-1600.png",
    "/img/inline-1x.png": "/img/inline-2x.png", "/img/set-1x.png": "/img/set-2x.png",
    "/img/pre-1x.png": "/img/pre-2x.png", "/img/sheet-set-1x.png": "/img/sheet-set-2x.png",
}
NEVER = ("/img/not-input.png", "/doc.html", "/clip.swf", "/movie.mp4", "/fonts/f.woff2", "/css/alt.css",
         "/private/hidden.css", "/img/hidden-by-robots.png", "/img/icon.png", "/img/touch.png", "/app.js")


@pytest.fixture
def site():
    s = Site()
    s.static("/robots.txt", b"User-agent: *\nDisallow: /private/\n", "text/plain")
    s.page("/", PAGE)
    s.page("/other.html", OTHER)
    css = "text/css; charset=utf-8"
    s.static("/css/main.css", b""".c { background-image: url(../img/sheet.png) }
        .d { background: image-set(url(/img/sheet-set-1x.png) 1x, url(/img/sheet-set-2x.png) 2dppx) }
        /* url(/img/commented-out.png) */ @font-face { src: url(/fonts/g.woff) }""", css)
    s.static("/css/imported.css", b'@import "deeper.css"; .e { background: url("/img/imported.png") }', css)
    s.static("/css/deeper.css", b".f { background: url(/img/deep-import.png) }", css)
    s.static("/private/hidden.css", b".g { background: url(/img/hidden-by-robots.png) }", css)
    s.static("/css/huge.css", b"/*" + b"x" * 65536 + b"*/ .h { background: url(/img/huge.png) }", css)
    for i, path in enumerate(list(FETCHED) + list(CANDIDATES) + list(NEVER) + ["/img/huge.png"]):
        s.static(path, png_bytes(100 + i), "image/png")
    yield s
    s.close()


def test_every_element_that_fetches_an_image(site, catalog, blobs, fast):
    settings = fast.updated(max_page_bytes=16384)  # huge.css is over the page cap
    summary = run(site, catalog, blobs, settings)

    got = sightings(catalog)
    assert {p: fb for p, (fb, _, _) in got.items() if fb != "candidate"} == FETCHED
    assert {p for p, (fb, _, _) in got.items() if fb == "candidate"} == set(CANDIDATES)
    for small, big in CANDIDATES.items():
        assert got[small][2] == got[big][2]  # the same image row
    assert got["/img/button.png"][1] == "send" and got["/img/object.png"][1] == "an object"
    assert got["/img/x2.png"][1] == "density" and got["/img/poster.jpg"][1] == "a video"
    paths = site.paths()
    for path in FETCHED:
        assert paths.count(path) == 1, path
    for path in list(CANDIDATES) + list(NEVER) + ["/img/huge.png", "/img/commented-out.png", "/fonts/g.woff"]:
        assert path not in paths, path
    assert paths.count("/css/main.css") == 1  # linked by two pages, fetched once
    sheet_failures = failures(catalog, SHEET_STAGE)
    assert sheet_failures == {"/css/missing.css": "http-404", "/css/huge.css": "too-large",
                              "/private/hidden.css": "robots"}
    assert summary["sheets_fetched"] == 3 and summary["sheets_failed"] == 3
    assert summary["images_candidates"] == len(CANDIDATES) + 1  # main.css's 1x is sighted on both pages
    assert counts(catalog)["images"] == len(FETCHED) and summary["pages_fetched"] == 2


def test_icons_only_when_asked_for(site, catalog, blobs, fast):
    run(site, catalog, blobs, fast.updated(scrape_icons=True), max_depth=0)
    got = sightings(catalog)
    assert got["/img/icon.png"][0] == "icon" and got["/img/touch.png"][0] == "icon"


def test_a_rerun_fetches_no_sheet_image_again_and_clears_healed_sheet_failures(site, catalog, blobs, fast):
    run(site, catalog, blobs, fast)
    assert "/css/missing.css" in failures(catalog, SHEET_STAGE)
    site.static("/css/missing.css", b".x { background: url(/img/healed.png) }", "text/css")
    site.static("/img/healed.png", png_bytes(999), "image/png")
    site.page("/", PAGE + "<!-- changed -->")  # a new ETag: the page is read again, not a 304
    before = len(site.paths())
    run(site, catalog, blobs, fast.updated(max_retries=0))
    new = site.paths()[before:]
    assert "/img/healed.png" in new and not any(p in new for p in FETCHED)
    assert "/css/missing.css" not in failures(catalog, SHEET_STAGE)
    assert sightings(catalog)["/img/healed.png"][0] == "stylesheet"


def test_sheets_past_the_per_page_cap_and_imports_past_the_depth_are_never_requested(catalog, blobs, fast):
    site = Site()
    try:
        css = "text/css"
        links = "".join(f'<link rel="stylesheet" href="/css/s{i}.css">' for i in range(5))
        site.page("/", f"<html><head>{links}</head><body>five sheets</body></html>")
        site.page("/chain.html", '<html><head><link rel="stylesheet" href="/css/c0.css"></head><body>x</body></html>')
        for i in range(5):
            site.static(f"/css/s{i}.css", f".s{i} {{ background: url(/img/s{i}.png) }}".encode(), css)
            site.static(f"/css/c{i}.css", (f'@import "c{i + 1}.css"; ' if i < 4 else "").encode()
                        + f".c{i} {{ background: url(/img/c{i}.png) }}".encode(), css)
        for i in range(5):
            site.static(f"/img/s{i}.png", png_bytes(700 + i), "image/png")
            site.static(f"/img/c{i}.png", png_bytes(800 + i), "image/png")
        site.page("/both.html", "<a href='/'>a</a><a href='/chain.html'>b</a>")
        run(site, catalog, blobs, fast.updated(max_stylesheets_per_page=3, max_import_depth=1), path="/both.html")
        paths = site.paths()
        assert [p for p in paths if p.startswith("/css/s")] == ["/css/s0.css", "/css/s1.css", "/css/s2.css"]
        assert [p for p in paths if p.startswith("/css/c")] == ["/css/c0.css", "/css/c1.css"]  # the page's, one import
        got = sightings(catalog)
        assert {p for p in got if p.startswith(("/img/s", "/img/c"))} == {
            "/img/s0.png", "/img/s1.png", "/img/s2.png", "/img/c0.png", "/img/c1.png"}
    finally:
        site.close()


@pytest.mark.parametrize(
    ("css", "images", "imports"),
    [
        ('a{b:url("x.png")}', [("x.png", ())], []),
        ("a{b:image-set('a.png' 1x, 'b.png' 2x)}", [("b.png", ("a.png",))], []),
        ("a{b:image-set(url(a.png) 300dpi, url(b.png) 2x)}", [("a.png", ("b.png",))], []),  # 300dpi = 3.125x
        ("a{b:-webkit-image-set(url(a.png) 1x)}", [("a.png", ())], []),
        ('@import url(one.css); @import "two.css" screen; a{b:url(c.png)}', [("c.png", ())], ["one.css", "two.css"]),
        ("@font-face{src:url(f.woff2)} a{b:url(f.woff)} c{d:url(e.png)}", [("e.png", ())], []),
        ("/* url(gone.png) */ a{b:url()}", [], []),
        ("a{b:image-set(", [], []),  # unterminated: nothing, no error
        ("a{b:image-set(1x, 2x)}", [], []),
        ('a{b:url("p(1).png")}', [("p(1).png", ())], []),
    ],
)
def test_css_refs(css, images, imports):
    refs = css_refs(css)
    assert [(i.url, i.also) for i in refs.images] == images and refs.imports == imports
