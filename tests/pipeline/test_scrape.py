"""The scraper against a real HTTP server on 127.0.0.1 serving a generated site (no mocks of
requests): every embedding style, robots.txt, opt-outs, SSRF refusals, retries, timeouts, caps,
hostile bytes and pages, politeness, conditional re-fetch, sitemaps and files of URLs."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select

from pipeline.scrape.crawl import IMAGE_STAGE, PAGE_STAGE, scrape
from storage.models import Failure, Image, Page, Sighting
from tests.pipeline.scrape_site import Site, bomb_png, jpeg_bytes, png_bytes, serve_tls


@pytest.fixture
def site():
    s = Site()
    s.static("/robots.txt", b"User-agent: *\nDisallow: /private/\n", "text/plain")
    yield s
    s.close()


def run(site, catalog, blobs, settings, path="/", **kw):
    kw.setdefault("allow_private_hosts", True)
    return scrape([site.url(path)], catalog, blobs, settings, **kw)


def path_of(url):
    return urlsplit(url).path


def sightings(catalog):
    """``{image path: (found_by, alt, sha256)}`` for every sighting."""
    with catalog.session() as s:
        rows = s.execute(select(Sighting.image_url, Sighting.found_by, Sighting.alt, Image.sha256)
                         .join(Image, Image.id == Sighting.image_id)).all()
    return {path_of(url): (fb, alt, sha) for url, fb, alt, sha in rows}


def failures(catalog, stage=IMAGE_STAGE):
    """``{path: error class}`` of the failures of ``stage``."""
    with catalog.session() as s:
        rows = s.execute(select(Failure.subject, Failure.error_class).where(Failure.stage == stage)).all()
    return {path_of(subj): cls for subj, cls in rows}


def counts(catalog):
    with catalog.session() as s:
        return {t.__tablename__: len(s.scalars(select(t.id)).all()) for t in (Page, Image, Sighting, Failure)}


# --- finding images ----------------------------------------------------------------------

EMBEDDING_PAGE = """<html><head>
<meta property="og:image" content="/img/og.png"><meta property="og:image:alt" content="og alt">
<meta name="twitter:image" content="/img/tw.png">
<link rel="image_src" href="/img/link.png">
<style>.hero { background-image: url("/img/style-block.png") }</style>
</head><body>
<img src="/img/plain.png" alt="plain alt">
<img src="/img/small.png" srcset="/img/small.png 1x, /img/big.png 2x" alt="srcset alt">
<img src="/img/placeholder.gif" data-src="/img/lazy.png" alt="lazy alt">
<img data-srcset="/img/lazyset-s.png 100w, /img/lazyset-l.png 800w">
<img data-lazy-src="/img/lazy2.png">
<picture><source srcset="/img/pic-s.png 320w, /img/pic-l.png 1280w" type="image/webp">
  <img src="/img/pic-fallback.png" alt="picture alt"></picture>
<div style="background-image: url('/img/css.png')">x</div>
<a href="/img/linked.jpg" title="linked alt">a photo</a>
<img src="/img/dup-a.png"><img src="/img/dup-b.png">
<img src="/img/tiny.png">
<img src="/private/hidden.png">
<a href="/child.html">child</a> <a href="/private/secret.html">secret</a>
<a href="http://elsewhere.test/page.html">other site</a>
</body></html>"""


def test_finds_every_embedding_style(site, catalog, blobs, fast):
    want = {  # path -> (found_by, alt)
        "/img/og.png": ("og:image", "og alt"), "/img/tw.png": ("twitter:image", None),
        "/img/link.png": ("link", None), "/img/style-block.png": ("css", None),
        "/img/plain.png": ("img", "plain alt"), "/img/big.png": ("srcset", "srcset alt"),
        "/img/lazy.png": ("lazy", "lazy alt"), "/img/lazyset-l.png": ("lazy", None), "/img/lazy2.png": ("lazy", None),
        "/img/pic-l.png": ("picture", "picture alt"), "/img/pic-fallback.png": ("img", "picture alt"),
        "/img/css.png": ("css", None), "/img/linked.jpg": ("href", "linked alt"),
        "/img/dup-a.png": ("img", None), "/img/dup-b.png": ("img", None),
        "/assets/based.png": ("img", "based"),
    }
    # lesser srcset candidates: sightings of the image fetched in their place, never downloaded
    candidates = {"/img/small.png": ("candidate", "srcset alt"), "/img/lazyset-s.png": ("candidate", None),
                  "/img/pic-s.png": ("candidate", "picture alt")}
    for i, path in enumerate(want):
        body = jpeg_bytes(i) if path.endswith(".jpg") else png_bytes(i)
        site.static(path, body, "image/jpeg" if path.endswith(".jpg") else "image/png")
    site.static("/img/dup-b.png", png_bytes(list(want).index("/img/dup-a.png")), "image/png")  # same bytes
    for path in ("/img/small.png", "/img/placeholder.gif", "/img/lazyset-s.png", "/img/pic-s.png"):
        site.static(path, png_bytes(999), "image/png")  # must not be fetched: not the best candidate
    site.static("/img/tiny.png", png_bytes(7, 16, 16), "image/png")
    site.static("/private/hidden.png", png_bytes(8), "image/png")
    site.page("/", EMBEDDING_PAGE)
    site.page("/child.html", '<html><head><base href="/assets/"></head><body><img src="based.png" alt="based"></body></html>')
    site.page("/private/secret.html", "<img src='/img/secret.png'>")

    summary = run(site, catalog, blobs, fast)

    got = sightings(catalog)
    assert {p: v[:2] for p, v in got.items()} == want | candidates
    assert got["/img/dup-a.png"][2] == got["/img/dup-b.png"][2]  # exact duplicates fold by sha256
    assert got["/img/small.png"][2] == got["/img/big.png"][2] and got["/img/pic-s.png"][2] == got["/img/pic-l.png"][2]
    c = counts(catalog)
    assert c["images"] == len(want) - 1 and c["sightings"] == len(want) + len(candidates)
    assert summary["images_candidates"] == len(candidates)
    assert summary["images_new"] == len(want) - 1 and summary["images_fetched"] == len(want)
    assert summary["images_too_small"] == 1 and failures(catalog)["/img/tiny.png"] == "too-small"
    assert summary["pages_fetched"] == 2 and summary["pages_disallowed"] == 1
    fetched = set(site.paths())
    for never in ("/img/small.png", "/img/placeholder.gif", "/img/lazyset-s.png", "/img/pic-s.png",
                  "/private/hidden.png", "/private/secret.html"):
        assert never not in fetched  # robots.txt obeyed, lesser candidates skipped
    with catalog.session() as s:
        for img in s.scalars(select(Image)):
            data = blobs.get(img.blob_key)
            assert len(data) == img.bytes and img.width >= 64 and img.mime in ("image/png", "image/jpeg")
        page = s.scalar(select(Page).where(Page.url == site.url("/")))
        assert page.status == 200 and page.etag and site.url("/child.html") in page.outlinks
        assert not any("elsewhere.test" in u for u in page.outlinks)  # other sites are not followed


def test_opt_outs_headers_and_meta(site, catalog, blobs, fast):
    site.page("/", "".join(f"<a href='/{p}.html'>{p}</a>" for p in ("noai", "meta", "ours", "other", "nofollow"))
              + "<img src='/img/optout.png'>")
    site.page("/noai.html", "<img src='/img/1.png'>", headers={"X-Robots-Tag": "noai"})
    site.page("/meta.html", "<meta name='robots' content='noimageai'><img src='/img/2.png'>")
    site.page("/ours.html", "<img src='/img/3.png'>", headers={"X-Robots-Tag": ["otherbot: all", "UnmarkBot: noindex"]})
    site.page("/other.html", "<img src='/img/4.png'>", headers={"X-Robots-Tag": "otherbot: noai, noimageai"})
    site.page("/nofollow.html", "<meta name='unmarkbot' content='nofollow'><img src='/img/5.png'><a href='/deeper.html'>d</a>")
    site.page("/deeper.html", "<img src='/img/6.png'>")
    for i in range(1, 7):
        site.static(f"/img/{i}.png", png_bytes(i), "image/png")
    site.static("/img/optout.png", png_bytes(9), "image/png", headers={"X-Robots-Tag": "noimageindex"})

    summary = run(site, catalog, blobs, fast)

    assert set(sightings(catalog)) == {"/img/4.png", "/img/5.png"}
    for p in ("/img/1.png", "/img/2.png", "/img/3.png", "/img/6.png", "/deeper.html"):
        assert p not in site.paths()
    assert failures(catalog)["/img/optout.png"] == "opted-out" and summary["images_opted_out"] == 1
    with catalog.session() as s:
        opted = dict(s.execute(select(Page.url, Page.opted_out)).all())
    assert opted[site.url("/noai.html")] == "noai"
    assert opted[site.url("/meta.html")] == "noimageai"
    assert opted[site.url("/ours.html")] == "noindex"
    assert opted[site.url("/other.html")] is None
    assert summary["pages_opted_out"] == 3


def test_hostile_pages_deep_nesting_many_links_and_charsets(site, catalog, blobs, fast):
    deep = "<html><body>" + "<div>" * 5000 + "<img src='/img/deep.png'>" + "</div>" * 5000 + "</body></html>"
    site.page("/", "<a href='/deep.html'>d</a><a href='/links.html'>l</a><a href='/latin.html'>x</a>"
                   "<a href='/sjis.html'>y</a><a href='/binary'>z</a>")
    site.static("/binary", b"PK\x03\x04" + b"\x00" * 2000, "text/html")  # a zip served as HTML
    site.page("/deep.html", deep)
    site.page("/links.html", "".join(f"<a href='/l/{i}.html'>{i}</a>" for i in range(10_000)) + "<img src='/img/l.png'>")
    site.static("/latin.html", "<img src='/img/c.png' alt='Café crème'>".encode("cp1252"),
                "text/html; charset=windows-1252")
    site.static("/sjis.html", '<meta charset="shift_jis"><img src="/img/n.png" alt="猫の写真">'.encode("shift_jis"),
                "text/html")
    for i, name in enumerate(("deep", "l", "c", "n")):
        site.static(f"/img/{name}.png", png_bytes(100 + i), "image/png")

    t = time.monotonic()
    summary = run(site, catalog, blobs, fast, max_pages=8, max_depth=2)
    assert time.monotonic() - t < 20

    got = sightings(catalog)
    assert set(got) == {"/img/deep.png", "/img/l.png", "/img/c.png", "/img/n.png"}
    assert got["/img/c.png"][1] == "Café crème" and got["/img/n.png"][1] == "猫の写真"
    assert summary["pages_fetched"] + summary["pages_failed"] == 8  # max_pages bounds the 10,000 links
    assert failures(catalog, PAGE_STAGE)["/binary"] == "not-html"
    with catalog.session() as s:
        links = s.scalar(select(Page.outlinks).where(Page.url == site.url("/links.html")))
    assert len(links) == 10_000


# --- SSRF ----------------------------------------------------------------------------------


def test_loopback_refused_without_the_flag(site, catalog, blobs, fast):
    site.page("/", "<img src='/img/a.png'>")
    summary = run(site, catalog, blobs, fast, allow_private_hosts=False)
    assert site.paths() == []  # refused before any connection
    assert summary["failures"] == {"refused-address": 1}
    assert failures(catalog, PAGE_STAGE)["/"] == "refused-address"


def test_redirects_to_private_addresses_and_private_names_refused(site, catalog, blobs, fast):
    internal = f"http://internal.test:{site.port}/img/x.png"
    site.page("/", f"""<img src='/r/chain1'><img src='/r/loop0'><img src='/r/private'><img src='/r/metadata'>
        <img src='{internal}'><img src='/r/to-internal'><img src='http://[::ffff:10.0.0.1]/x.png'>""")
    site.redirect("/r/chain1", "/r/chain2", 301)
    site.redirect("/r/chain2", site.url("/r/chain3"), 307)
    site.redirect("/r/chain3", "/img/chain.png", 308)
    site.static("/img/chain.png", png_bytes(1), "image/png")
    for i in range(7):
        site.redirect(f"/r/loop{i}", f"/r/loop{i + 1}")
    site.redirect("/r/private", "http://10.0.0.1/x.png")
    site.redirect("/r/metadata", "http://169.254.169.254/latest/meta-data/")
    site.redirect("/r/to-internal", internal)
    asked = []

    def resolver(host, port):
        asked.append(host)
        if host == "internal.test":
            return ["10.0.0.1"]
        raise OSError(f"no such host {host}")

    run(site, catalog, blobs, fast, resolver=resolver)

    assert set(sightings(catalog)) == {"/r/chain1"}  # the page's URL for the image, 3 hops resolved
    f = failures(catalog)
    assert f["/r/loop0"] == "too-many-redirects"
    assert sum(p.startswith("/r/loop") for p in site.paths()) == 6  # the first hop plus 5 redirects
    with catalog.session() as s:  # failures are keyed by the URL the page named
        by_subject = {subj: (cls, msg) for subj, cls, msg in
                      s.execute(select(Failure.subject, Failure.error_class, Failure.message)).all()}
    assert by_subject[site.url("/r/private")][0] == "refused-address"
    assert "10.0.0.1" in by_subject[site.url("/r/private")][1]
    assert by_subject[site.url("/r/metadata")][0] == "refused-address"
    assert "169.254.169.254" in by_subject[site.url("/r/metadata")][1]
    assert by_subject[internal][0] == "refused-address"
    assert by_subject[site.url("/r/to-internal")][0] == "refused-address"
    assert by_subject["http://[::ffff:10.0.0.1]/x.png"][0] == "refused-address"
    assert "internal.test" in asked
    # the network guard (conftest) fails this test had any packet gone to 10/8 or 169.254/16


def test_connects_to_the_checked_address_keeping_the_host_name(site, catalog, blobs, fast):
    site.page("/", "<img src='/img/a.png'>")
    site.static("/img/a.png", png_bytes(1), "image/png")
    resolved = []

    def resolver(host, port):
        resolved.append(host)
        return ["127.0.0.1"] if host == "pinned.test" else []

    summary = scrape([f"http://pinned.test:{site.port}/"], catalog, blobs, fast, allow_private_hosts=True,
                     resolver=resolver)
    # urllib3 never resolved "pinned.test" itself: the network guard blocks any real lookup of it
    assert summary["images_fetched"] == 1
    assert {r.headers["host"] for r in site.log} == {f"pinned.test:{site.port}"}
    assert resolved.count("pinned.test") == 1


# --- fetching: retries, timeouts, caps, hostile bytes ---------------------------------------


def test_retries_honour_retry_after_and_back_off(site, catalog, blobs, fast):
    calls = {"429": 0, "500": 0}

    def flaky(kind, status, headers):
        def route(req):
            calls[kind] += 1
            if calls[kind] == 1:
                req.send(status, b"busy", headers)
            else:
                req.send(200, png_bytes(int(kind)), {}, "image/png")
        return route

    site.routes["/img/429.png"] = flaky("429", 429, {"Retry-After": "1"})
    site.routes["/img/500.png"] = flaky("500", 500, {})
    site.routes["/img/503.png"] = lambda req: req.send(503, b"down")
    site.page("/", "<img src='/img/429.png'><img src='/img/500.png'><img src='/img/503.png'>")

    summary = run(site, catalog, blobs, fast)

    assert set(sightings(catalog)) == {"/img/429.png", "/img/500.png"}
    t429 = [r.t for r in site.requests_for("/img/429.png")]
    assert len(t429) == 2 and t429[1] - t429[0] >= 0.95  # waited for Retry-After: 1
    assert len(site.requests_for("/img/500.png")) == 2
    assert len(site.requests_for("/img/503.png")) == fast.scrape.max_retries + 1
    assert failures(catalog)["/img/503.png"] == "http-503"
    assert summary["images_failed"] == 1


def test_timeouts_caps_and_hostile_bytes(site, catalog, blobs, fast):
    sent = {"stream": 0, "declared": 0}

    def stream(kind, declare):
        def route(req):
            h = req.handler
            h.send_response(200)
            h.send_header("Content-Type", "image/png")
            if declare:
                h.send_header("Content-Length", str(200 * 1024 * 1024))
            h.send_header("Connection", "close")
            h.end_headers()
            chunk = png_bytes(5)[:16] + b"\0" * (256 * 1024 - 16)  # a PNG that never ends
            try:
                for _ in range(800):  # 200 MB, generated as it goes
                    h.wfile.write(chunk)
                    sent[kind] += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass
            h.close_connection = True
        return route

    def slow(req):
        time.sleep(1.5)
        req.send(200, png_bytes(3), {}, "image/png")

    def trickle(req):
        h = req.handler
        body = png_bytes(4)
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        try:
            for i in range(0, len(body), 64):
                h.wfile.write(body[i:i + 64])
                h.wfile.flush()
                time.sleep(0.2)
        except (BrokenPipeError, ConnectionResetError):
            pass

    site.routes["/img/huge.png"] = stream("stream", False)
    site.routes["/img/declared.png"] = stream("declared", True)
    site.routes["/img/slow.png"] = slow
    site.routes["/img/trickle.png"] = trickle
    site.static("/img/bomb.png", bomb_png(), "image/png")
    site.static("/img/truncated.jpg", jpeg_bytes(1, 256, 256)[:3000], "image/jpeg")
    site.static("/img/fake.jpg", b"<html><body>not an image</body></html>", "image/jpeg")
    site.static("/img/photo", jpeg_bytes(2), "text/html")  # a JPEG served as text/html
    site.page("/", "".join(f"<img src='/img/{n}'>" for n in (
        "huge.png", "declared.png", "slow.png", "trickle.png", "bomb.png", "truncated.jpg", "fake.jpg", "photo")))
    settings = fast.updated(max_retries=1)

    t = time.monotonic()
    run(site, catalog, blobs, settings)
    assert time.monotonic() - t < 15

    assert set(sightings(catalog)) == {"/img/photo"}  # judged by its bytes, not by Content-Type
    f = failures(catalog)
    assert f["/img/huge.png"] == "too-large" and f["/img/declared.png"] == "too-large"
    assert f["/img/slow.png"] == "timeout" and f["/img/trickle.png"] == "deadline"
    assert f["/img/bomb.png"] == "too-many-pixels"
    assert f["/img/truncated.jpg"] == "corrupt" and f["/img/fake.jpg"] == "not-image"
    cap = settings.scrape.max_image_bytes
    assert cap <= sent["stream"] < cap + 16 * 1024 * 1024  # aborted at the cap, not read to 200 MB
    assert sent["declared"] < 16 * 1024 * 1024  # refused on the declared length
    with catalog.session() as s:
        assert s.scalar(select(Failure.attempts).where(Failure.subject == site.url("/img/slow.png"))) == 1
    assert len(site.requests_for("/img/slow.png")) == 2  # a timeout is retried (max_retries=1)


# --- politeness --------------------------------------------------------------------------


def test_per_host_concurrency_global_bound_and_delays(catalog, blobs, fast):
    site = Site(latency_s=0.1)
    try:
        def resolver(host, port):
            return ["127.0.0.1"]

        imgs = "".join(f"<img src='/img/{i}.png'>" for i in range(8))
        site.page("/", imgs + f"<a href='http://b.test:{site.port}/'>b</a>")
        for i in range(8):
            site.static(f"/img/{i}.png", png_bytes(i), "image/png")
        settings = fast.updated(per_host_concurrency=2, global_concurrency=3)
        summary = scrape([f"http://a.test:{site.port}/", f"http://b.test:{site.port}/"], catalog, blobs, settings,
                         allow_private_hosts=True, resolver=resolver)
        assert summary["images_fetched"] == 16 and summary["images_new"] == 8  # same bytes on both hosts
        assert max(site.max_in_flight.values()) == 2  # per host
        assert site.max_in_flight_total == 3  # the bounded pool, across hosts
    finally:
        site.close()


def test_min_delay_and_robots_crawl_delay(settings, catalog, blobs, fast):
    for robots, delay_setting, gap in ((b"User-agent: *\nAllow: /\n", 0.15, 0.14),
                                       (b"User-agent: *\nCrawl-delay: 0.25\n", 0.0, 0.24)):
        site = Site()
        try:
            site.static("/robots.txt", robots, "text/plain")
            site.page("/", "".join(f"<img src='/img/{i}.png'>" for i in range(4)))
            for i in range(4):
                site.static(f"/img/{i}.png", png_bytes(i + int(gap * 100)), "image/png")
            run(site, catalog, blobs, fast.updated(per_host_delay_s=delay_setting))
            starts = sorted(r.t for r in site.log if r.path.startswith("/img/"))
            assert len(starts) == 4
            # The gate spaces request starts by the delay; the server stamps them when its thread
            # runs, which a busy machine postpones by tens of ms for one request and not the next.
            # So: each gap at least half the delay, the span of the three at least 80 % of them
            # (no delay at all gives gaps of ~1 ms).
            assert min(b - a for a, b in zip(starts, starts[1:], strict=False)) >= gap / 2
            assert starts[-1] - starts[0] >= 0.8 * 3 * gap
        finally:
            site.close()


# --- re-crawl and seeds ------------------------------------------------------------------


def test_recrawl_is_conditional_and_skips_known_images(site, catalog, blobs, fast):
    site.page("/", "<img src='/img/a.png'><a href='/b.html'>b</a>", etag='"v1"')
    site.page("/b.html", "<img src='/img/b.png'><img src='/img/a.png'><a href='/c.html'>c</a>", etag='"b1"')
    site.page("/c.html", "<img src='/img/c.png'>", etag='"c1"')
    for n in "abcd":
        site.static(f"/img/{n}.png", png_bytes(ord(n)), "image/png")

    first = run(site, catalog, blobs, fast)
    before = counts(catalog)
    assert first["images_new"] == 3 and before["sightings"] == 4
    n_log = len(site.log)

    second = run(site, catalog, blobs, fast)
    again = site.log[n_log:]
    assert second["pages_not_modified"] == 3 and second["images_fetched"] == 0
    assert all(r.path in ("/", "/b.html", "/c.html", "/robots.txt") for r in again)
    assert {r.headers.get("if-none-match") for r in again if r.path.endswith(".html") or r.path == "/"} == \
        {'"v1"', '"b1"', '"c1"'}
    assert counts(catalog) == before

    site.page("/b.html", "<img src='/img/b.png'><img src='/img/d.png'><a href='/c.html'>c</a>", etag='"b2"')
    n_log = len(site.log)
    third = run(site, catalog, blobs, fast)
    assert [r.path for r in site.log[n_log:] if r.path.startswith("/img/")] == ["/img/d.png"]
    assert third["pages_fetched"] == 1 and third["images_new"] == 1
    assert counts(catalog)["images"] == 4


def test_rerun_without_validators_skips_known_and_judged_images_and_blobs_are_synced(site, catalog, blobs, fast):
    """Pages without ETag / Last-Modified are fetched again, but their image URLs are not: a crawl
    looks URLs up in the catalog whenever it holds sightings or image failures (and skips the
    look-ups only on a catalog with neither). Every blob is synced before its row is committed."""
    site.page("/", "<img src='/img/a.png'><img src='/img/tiny.png'>", etag=None)
    site.static("/img/a.png", png_bytes(1), "image/png")
    site.static("/img/tiny.png", png_bytes(2, 8, 8), "image/png")
    first = run(site, catalog, blobs, fast)
    assert first["images_new"] == 1 and first["images_too_small"] == 1
    assert blobs.sync() == 0  # the writer synced every blob it committed a row for
    n_log = len(site.log)
    second = run(site, catalog, blobs, fast)
    assert [r.path for r in site.log[n_log:] if r.path.startswith("/img/")] == []
    assert second["images_known_url"] == 1 and second["images_skipped_failed"] == 1 and second["pages_fetched"] == 1, second


def test_sitemap_and_file_of_urls(site, catalog, blobs, fast, tmp_path):
    site.static("/sitemap.xml", f"""<?xml version="1.0" encoding="UTF-8"?>
<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
<url><loc>{site.url('/a.html')}</loc></url><url><loc>{site.url('/b.html')}</loc></url></urlset>""".encode(),
                "application/xml")
    site.page("/a.html", "<img src='/img/a.png'>")
    site.page("/b.html", "<img src='/img/b.png'>")
    site.page("/c.html", "<img src='/img/c.png'>")
    for n in "abc":
        site.static(f"/img/{n}.png", png_bytes(ord(n)), "image/png")

    summary = run(site, catalog, blobs, fast, path="/sitemap.xml", max_depth=0)
    assert summary["sitemaps"] == 1 and summary["pages_fetched"] == 2
    assert set(sightings(catalog)) == {"/img/a.png", "/img/b.png"}

    seeds = tmp_path / "urls.txt"
    seeds.write_text(f"# seeds\n{site.url('/c.html')}\n")
    summary = scrape([str(seeds)], catalog, blobs, fast, allow_private_hosts=True)
    assert summary["images_new"] == 1
    assert set(sightings(catalog)) == {"/img/a.png", "/img/b.png", "/img/c.png"}


def test_depth_and_page_limits(site, catalog, blobs, fast):
    for i in range(5):
        site.page(f"/d{i}.html", f"<img src='/img/{i}.png'><a href='/d{i + 1}.html'>next</a>")
        site.static(f"/img/{i}.png", png_bytes(i), "image/png")
    summary = run(site, catalog, blobs, fast, path="/d0.html", max_depth=2)
    assert summary["pages_fetched"] == 3 and "/d3.html" not in site.paths()
    assert set(sightings(catalog)) == {"/img/0.png", "/img/1.png", "/img/2.png"}
    summary = run(site, catalog, blobs, fast, path="/d0.html", max_depth=10, max_pages=4)
    assert summary["pages_fetched"] + summary["pages_not_modified"] == 4 and "/d4.html" not in site.paths()


def test_cli_rejects_a_bad_seed(unmark_env):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "flows.cli", "scrape", "not-a-url-or-file"], env=unmark_env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "not an http(s) URL" in out.stdout + out.stderr


def test_fetcher_chunked_gzip_bomb_and_dns_rebinding(site, fast):
    import gzip

    from pipeline.scrape.fetch import Fetcher, FetchError

    body = png_bytes(1)
    bomb = gzip.compress(b"\0" * (30 * 1024 * 1024))  # 30 kB on the wire, 30 MB decoded

    def chunked(data, gz):
        def route(req):
            h = req.handler
            h.send_response(200)
            h.send_header("Transfer-Encoding", "chunked")
            if gz:
                h.send_header("Content-Encoding", "gzip")
            h.end_headers()
            for i in range(0, len(data), 4096):
                part = data[i:i + 4096]
                h.wfile.write(b"%x\r\n" % len(part) + part + b"\r\n")
            h.wfile.write(b"0\r\n\r\n")
        return route

    site.routes["/chunked.png"] = chunked(body, False)
    site.routes["/gz.png"] = chunked(gzip.compress(body), True)
    site.routes["/bomb.png"] = chunked(bomb, True)
    fetcher = Fetcher(fast.scrape, allow_private_hosts=True)
    assert fetcher.get(site.url("/chunked.png"), fast.scrape.max_image_bytes).body == body
    assert fetcher.get(site.url("/gz.png"), fast.scrape.max_image_bytes).body == body
    with pytest.raises(FetchError) as exc:
        fetcher.get(site.url("/bomb.png"), fast.scrape.max_image_bytes)
    assert exc.value.reason == "too-large"  # the cap counts decoded bytes

    # DNS rebinding: the name passes the check, then resolves to 10.0.0.1 when the connection
    # opens. The connection re-checks (no cache here) and refuses before any packet is sent.
    answers = iter([["127.0.0.1"], ["10.0.0.1"]])
    rebinding = Fetcher(fast.scrape, allow_private_hosts=True, resolver=lambda host, port: next(answers), dns_cache_s=0)
    with pytest.raises(FetchError) as exc:
        rebinding.get(f"http://rebind.test:{site.port}/chunked.png", fast.scrape.max_image_bytes)
    assert exc.value.reason == "refused-address" and "10.0.0.1" in str(exc.value)
    assert site.requests_for("/chunked.png") and all(r.headers["host"] != f"rebind.test:{site.port}" for r in site.log)


def test_rerun_retries_transient_failures_only(site, catalog, blobs, fast):
    state = {"up": False}

    def sometimes(req):
        if state["up"]:
            req.send(200, png_bytes(3), {}, "image/png")
        else:
            req.send(503, b"down")

    site.routes["/img/flaky.png"] = sometimes
    site.static("/img/tiny.png", png_bytes(4, 10, 10), "image/png")
    site.routes["/"] = lambda req: req.send(200, b"<img src='/img/flaky.png'><img src='/img/tiny.png'>")
    settings = fast.updated(max_retries=0)

    run(site, catalog, blobs, settings)
    assert failures(catalog) == {"/img/flaky.png": "http-503", "/img/tiny.png": "too-small"}
    run(site, catalog, blobs, settings)  # still down: the same row, one more attempt
    with catalog.session() as s:
        assert s.scalar(select(Failure.attempts).where(Failure.subject == site.url("/img/flaky.png"))) == 2
    assert len(site.requests_for("/img/tiny.png")) == 1  # judged bytes are not fetched again

    state["up"] = True
    summary = run(site, catalog, blobs, settings)
    assert summary["images_new"] == 1 and summary["images_skipped_failed"] == 1
    assert failures(catalog) == {"/img/tiny.png": "too-small"}
    assert set(sightings(catalog)) == {"/img/flaky.png"}


def test_https_through_the_pinned_address_verifies_the_name(tmp_path, fast):
    """TLS over the pinned connection: SNI and certificate checks use the host name, the socket
    goes to the checked address; a certificate for another name is refused."""
    from pipeline.scrape.fetch import Fetcher, FetchError

    site = Site()
    try:
        cert_pem, snis = serve_tls(site, tmp_path, "secure.test")
        site.static("/a.png", png_bytes(1), "image/png")

        def resolver(host, port):
            return ["127.0.0.1"]

        fetcher = Fetcher(fast.scrape, allow_private_hosts=True, resolver=resolver)
        fetcher.session.verify = str(cert_pem)
        resp = fetcher.get(f"https://secure.test:{site.port}/a.png", fast.scrape.max_image_bytes)
        assert resp.status == 200 and resp.body == png_bytes(1)
        assert snis == ["secure.test"] and site.log[0].headers["host"] == f"secure.test:{site.port}"
        with pytest.raises(FetchError) as exc:  # same address, a name the certificate does not carry
            fetcher.get(f"https://other.test:{site.port}/a.png", fast.scrape.max_image_bytes)
        assert exc.value.reason == "tls" and "certificate" in str(exc.value).lower()
        assert snis == ["secure.test", "other.test"]  # one handshake for it: a TLS failure is not retried
    finally:
        site.close()


def test_a_failing_catalog_write_ends_the_crawl_with_its_error(site, catalog, blobs, fast):
    """Commits run on the writer thread; an error there is raised by ``scrape`` (not lost), after
    the crawl thread stops handing it batches."""
    import threading

    from sqlalchemy import text
    from sqlalchemy.exc import DatabaseError

    site.page("/", "".join(f"<img src='/img/{i}.png'>" for i in range(6)))
    for i in range(6):
        site.static(f"/img/{i}.png", png_bytes(i), "image/png")
    with catalog.write() as s:
        s.execute(text("DROP TABLE sightings"))
    with pytest.raises(DatabaseError, match="sightings"):
        run(site, catalog, blobs, fast.updated(write_batch_size=2))
    assert not [t for t in threading.enumerate() if t.name == "unmark-scrape-writer"]


def test_cli_exits_non_zero_only_when_every_seed_failed(site, settings, monkeypatch):
    import json

    from typer.testing import CliRunner

    from flows.cli import app

    monkeypatch.setenv("UNMARK_HOME", str(settings.home))
    monkeypatch.setenv("UNMARK_MAX_RETRIES", "0")
    site.page("/ok.html", "<img src='/img/1.png'>")
    site.static("/img/1.png", png_bytes(1), "image/png")
    runner = CliRunner()
    r = runner.invoke(app, ["scrape", site.url("/gone.html"), site.url("/also-gone.html"), "--allow-private-hosts", "--json"])
    assert r.exit_code == 1, r.output
    assert "every seed failed" in r.output and json.loads(r.stdout)["seeds_failed"] == 2
    r = runner.invoke(app, ["scrape", site.url("/gone.html"), site.url("/ok.html"), "--allow-private-hosts", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["seeds"] == 2 and out["seeds_failed"] == 1 and out["images_new"] == 1
