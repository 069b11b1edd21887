"""Scraper pieces without a server: srcset, URL normalisation, opt-out directives, the address
rules of the SSRF guard, robots.txt statuses, extraction edge cases."""

from __future__ import annotations

import time

import pytest

from pipeline.scrape.extract import ImageRef, extract, largest_candidate, normalize_url
from pipeline.scrape.fetch import retry_after_s
from pipeline.scrape.robots import RobotsPolicy, agent_token, crawl_delay_for, opt_out_of, parse_directives
from pipeline.scrape.seeds import expand_seeds, sitemap_locs
from pipeline.scrape.ssrf import AddressGuard, HostRefused, address_allowed


@pytest.mark.parametrize(
    ("srcset", "want"),
    [
        ("a.png 1x, b.png 2x", "b.png"),
        ("s.png 320w, l.png 1280w, m.png 640w", "l.png"),
        ("only.png", "only.png"),
        ("x.png 3x,y.png 200w", "y.png"),  # width descriptors rank above densities
        ("img,1.png 100w, img,2.png 900w", "img,2.png"),  # commas inside URLs
        ("  ", None),
    ],
)
def test_largest_srcset_candidate(srcset, want):
    assert largest_candidate(srcset) == want


def test_normalize_url():
    assert normalize_url("HTTP://Example.COM:80/a#frag") == "http://example.com/a"
    assert normalize_url("https://example.com") == "https://example.com/"
    assert normalize_url("https://example.com:8443/x?q=1") == "https://example.com:8443/x?q=1"
    for bad in ("javascript:alert(1)", "data:image/png;base64,AAAA", "ftp://x/y", "mailto:a@b", "http://"):
        assert normalize_url(bad) is None


def test_directives_apply_to_us_or_everyone_only():
    token = agent_token("UnmarkBot/0.1 (+https://example.invalid)")
    assert token == "unmarkbot"
    assert parse_directives(["noai, noimageai"], token) == {"noai", "noimageai"}
    assert parse_directives(["otherbot: noai"], token) == set()
    assert parse_directives(["UnmarkBot: noindex, nofollow"], token) == {"noindex", "nofollow"}
    assert parse_directives(["unavailable_after: 25 Jun 2010 15:00:00 PST"], token) == set()
    assert opt_out_of({"nofollow"}) is None
    assert opt_out_of({"noimageindex", "nofollow"}) == "noimageindex"


@pytest.mark.parametrize(
    ("address", "loopback_ok", "allowed"),
    [
        ("93.184.216.34", False, True),
        ("2606:2800:220:1:248:1893:25c8:1946", False, True),
        ("127.0.0.1", False, False),
        ("127.0.0.1", True, True),
        ("127.9.9.9", True, True),
        ("::1", True, True),
        ("10.0.0.1", True, False),
        ("172.16.5.4", True, False),
        ("192.168.1.1", True, False),
        ("169.254.169.254", True, False),  # cloud metadata
        ("100.64.0.1", True, False),  # CGNAT: neither private nor global
        ("224.0.0.1", True, False),  # multicast
        ("240.0.0.1", True, False),  # reserved
        ("0.0.0.0", True, False),
        ("fe80::1", True, False),  # link-local
        ("fc00::1", True, False),  # unique local
        ("::ffff:10.0.0.1", True, False),  # IPv4-mapped private
        ("::ffff:127.0.0.1", False, False),
        ("2002:a00:1::", True, False),  # 6to4 wrapping 10.0.0.1
        ("not-an-ip", True, False),
    ],
)
def test_address_rules(address, loopback_ok, allowed):
    assert address_allowed(address, allow_loopback=loopback_ok) is allowed


def test_guard_uses_injected_resolver_and_refuses_before_connecting():
    calls = []

    def resolver(host, port):
        calls.append(host)
        return {"internal.test": ["10.0.0.1"], "mixed.test": ["93.184.216.34", "10.1.2.3"],
                "ok.test": ["127.0.0.1"]}[host]

    guard = AddressGuard(allow_private_hosts=True, resolver=resolver)
    with pytest.raises(HostRefused) as exc:
        guard.check_url("http://internal.test/x.png")
    assert exc.value.reason == "refused-address"
    with pytest.raises(HostRefused):
        guard.check_url("http://mixed.test/")  # one private answer is enough to refuse
    assert guard.check_url("http://ok.test:8080/") == "127.0.0.1"
    guard.check_url("http://ok.test:8080/again")
    assert calls.count("ok.test") == 1  # cached
    with pytest.raises(HostRefused) as exc:
        guard.check_url("file:///etc/passwd")
    assert exc.value.reason == "bad-url"
    with pytest.raises(HostRefused):
        AddressGuard(allow_private_hosts=False).check_url("http://127.0.0.1:1/")


def test_retry_after_forms():
    assert retry_after_s("3") == 3.0
    soon = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 <= retry_after_s(soon) <= 31
    assert retry_after_s("soon") is None
    assert retry_after_s(None) is None


def test_robots_statuses_and_crawl_delay():
    bodies = {
        "http://a.test/robots.txt": (200, b"User-agent: *\nDisallow: /private/\nCrawl-delay: 2\n"
                                          b"User-agent: UnmarkBot\nDisallow: /no-unmark/\n"),
        "http://b.test/robots.txt": (404, b""),
        "http://c.test/robots.txt": (403, b""),
        "http://d.test/robots.txt": (503, b""),
    }
    errors = []

    def fetch(url):
        if url.startswith("http://e.test"):
            raise OSError("connection refused")
        return bodies[url]

    rp = RobotsPolicy("UnmarkBot/0.1", fetch, lambda u, e: errors.append(u))
    assert rp.allowed("http://a.test/private/x.png") is True  # our own group replaces the * group
    assert rp.allowed("http://a.test/no-unmark/x.png") is False
    assert rp.allowed("http://b.test/anything") is True
    assert rp.allowed("http://c.test/anything") is False
    assert rp.allowed("http://d.test/anything") is False
    assert rp.allowed("http://e.test/anything") is False
    assert errors == ["http://e.test/robots.txt"]
    star = RobotsPolicy("OtherBot/1", fetch)
    assert star.allowed("http://a.test/private/x.png") is False
    assert star.crawl_delay("http://a.test/") == 2.0
    assert rp.crawl_delay("http://a.test/") is None  # our group sets none
    assert rp.check("http://a.test/no-unmark/x.png") == (False, None)
    assert star.check("http://a.test/private/x.png") == (False, 2.0)
    assert star.check("http://a.test/ok.png") == (True, 2.0)
    bodies["http://r.test/robots.txt"] = (200, b"User-agent: *\nRequest-rate: 1/4\n")
    assert star.check("http://r.test/x") == (True, 4.0) and star.crawl_delay("http://r.test/") == 4.0
    assert crawl_delay_for(["User-agent: *", "Crawl-delay: 0.25"], "unmarkbot") == 0.25
    assert crawl_delay_for(["User-agent: a", "User-agent: UnmarkBot", "Disallow: /x", "Crawl-delay: 1.5",
                            "User-agent: *", "Crawl-delay: 9"], "unmarkbot") == 1.5


def test_extract_handles_deep_nesting_many_links_and_charsets():
    deep = ("<html><body>" + "<div>" * 5000 + "<img src='/deep.png' alt='deep'>" + "</div>" * 5000
            + "<img src='/after.png'></body></html>").encode()
    t = time.monotonic()
    found = extract(deep, "http://s.test/deep.html")
    assert [i.url for i in found.images] == ["http://s.test/deep.png", "http://s.test/after.png"]
    many = ("<html><body>" + "".join(f"<a href='/p{i}.html'>{i}</a>" for i in range(10_000)) + "</body></html>").encode()
    found = extract(many, "http://s.test/")
    assert len(found.links) == 10_000
    capped = extract(many, "http://s.test/", max_links=100)
    assert len(capped.links) == 100
    assert time.monotonic() - t < 10
    latin = "<html><body><img src='/c.png' alt='Café crème'></body></html>".encode("cp1252")
    assert extract(latin, "http://s.test/", encoding="windows-1252").images[0].alt == "Café crème"
    sjis = ('<html><head><meta charset="shift_jis"></head><body><img src="/n.png" alt="猫の写真">'
            "</body></html>").encode("shift_jis")
    assert extract(sjis, "http://s.test/").images[0].alt == "猫の写真"


def test_extract_skips_unfetchable_schemes_and_honours_base():
    html = b"""<html><head><base href="https://cdn.test/assets/"></head><body>
    <img src="data:image/png;base64,iVBORw0KGgo="><img src="javascript:alert(1)">
    <img src="rel.png"><img src="/abs.png"><a href="page.html">p</a><a href="#top">t</a>
    <a href="/doc.pdf">pdf</a><a href="/style.css">css</a></body></html>"""
    found = extract(html, "http://s.test/dir/index.html")
    assert [i.url for i in found.images] == ["https://cdn.test/assets/rel.png", "https://cdn.test/abs.png"]
    assert found.links == ["https://cdn.test/assets/page.html"]


def test_sitemap_detection_and_seed_files(tmp_path):
    xml = b"""<?xml version="1.0" encoding="UTF-8"?>
    <urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
      <url><loc>http://s.test/a.html</loc></url><url><loc> http://s.test/b.html </loc></url></urlset>"""
    assert sitemap_locs(xml) == ("urlset", ["http://s.test/a.html", "http://s.test/b.html"])
    index = b"""<?xml version="1.0"?><sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
      <sitemap><loc>http://s.test/s1.xml</loc></sitemap></sitemapindex>"""
    assert sitemap_locs(index) == ("sitemapindex", ["http://s.test/s1.xml"])
    assert sitemap_locs(b"<html><body>hi</body></html>") is None
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("# a comment\nhttp://s.test/a.html\n\nhttp://s.test/b.html#x\nhttp://s.test/a.html\n")
    assert expand_seeds([str(seeds), "http://t.test"]) == [
        "http://s.test/a.html", "http://s.test/b.html", "http://t.test/"]
    with pytest.raises(ValueError):
        expand_seeds(["not a url"])


TRICKY_PAGES = {
    "embedding": """<html><head><meta property="og:image" content="/img/og.png">
<meta property="og:image:alt" content="og alt"><meta name="twitter:image" content="/img/tw.png">
<link rel="  Image_Src   other " href="/img/link.png"><style>.a { background: url("/img/block.png") }</style>
<meta name="robots" content="noai"><meta name="UnmarkBot" content="noimageai"></head><body>
<img src="/img/plain.png" alt="plain"><img src="/s.png" srcset="/s.png 1x, /b.png 2x" alt="set">
<img src="/p.gif" data-src="/lazy.png"><img data-srcset="/ls.png 100w, /ll.png 800w"><img data-lazy-src="/l2.png">
<picture><source srcset="/pic-s.png 320w, /pic-l.png 1280w"><img src="/pic.png" alt="picture alt"></picture>
<picture><source srcset="/nope.png"></picture><picture><source srcset="/o.png"><picture><img alt="inner">
</picture></picture>
<div style="background-image: URL('/css.png')" title="styled">x</div>
<a href="/img/linked.jpg" title="">a <b>bold</b> caf&eacute; <!-- hidden --> <script>no()</script> end</a>
<a href="/img/two.png">  spaced
   text  </a><area href="/img/area.png"><a href="/page.html" rel="NoFollow  next">p</a>
<a href="#top">t</a><a href="/doc.pdf">pdf</a><A HREF="/UPPER.PNG">Upper</A><img src="/dup.png" src="/dup2.png">
<style>   </style><style></style><template><a href="/img/in-template.png">t<b>x</b></a></template>
<input type="IMAGE" src="/in.png" alt="go"><object data="/obj.png" type="image/png"></object><embed src="/e.png">
<video poster="/poster.jpg"></video><svg viewBox="0 0 1 1"><image xlink:href="/svg.png"/><image href="/svg2.png"></image></svg>
<link rel="preload" as="image" href="/pre.png" imagesrcset="/pre.png 1x, /pre2.png 2x"><link rel="stylesheet" href="/s.css">
<link rel="icon" href="/favicon.png"><div style="background: image-set('/is1.png' 1x, '/is2.png' 2x)">s</div>
<p><a href="/img/unclosed.png">never closed
</body></html>""",
    "base": """<base target="_top"><base href=" https://cdn.test/assets/ "><img src="rel.png">
<a href="page.html">p</a>""",
    "deep": "<html><body>" + "<div>" * 3000 + "<a href='/img/deep.png'>deep <i>text</i></a>" + "</div>" * 3000
            + "<img src='/after.png'></body></html>",
    "broken": "<img src='/a.png' alt='a<b'><a href='/x.jpg'>x</a></img></a></div><img src=/b.png alt=\"q\"uote>"
              "<style>url(/s.png)",
    "empty": "",
    "pre": "<pre><style>  </style><a href='/p.png'>  </a></pre><textarea><style>\n</style></textarea>"
           + "<div>\n  " * 200 + "<style>\n\n</style>" + "</div>" * 200,
    "entities": "<img src='/&#x61;.png?x=1&amp;y=2' alt='&lt;&gt; &nbsp;&copy;'><a href='/n.jpg'>&amp;&#x20AC;</a>",
}


@pytest.mark.parametrize("name", sorted(TRICKY_PAGES))
@pytest.mark.parametrize("charset", ["utf-8", "windows-1252"])
def test_fast_parse_agrees_with_beautifulsoup(name, charset):
    """The lxml event path (a declared charset) and the BeautifulSoup path make the same records,
    so ``extract`` finds the same images, links and directives whichever parses a page."""
    from pipeline.scrape.extract import _fast_elements, _parse, _soup_elements, _walk

    html = TRICKY_PAGES[name].encode(charset, "xmlcharrefreplace")
    fast = _fast_elements(html, charset)
    soup = _soup_elements(_parse(html, charset, "http://s.test/"))
    assert fast is not None
    assert [el.key() for el in fast] == [el.key() for el in soup]
    a = _walk(fast, "http://s.test/d/", ("robots", "unmarkbot"), 20_000, 1_000)
    b = _walk(soup, "http://s.test/d/", ("robots", "unmarkbot"), 20_000, 1_000)
    assert (a.images, a.links, a.robots, a.base, a.stylesheets) == (b.images, b.links, b.robots, b.base, b.stylesheets)
    if name == "embedding":
        assert {i.found_by for i in a.images} >= {"og:image", "twitter:image", "link", "css", "img", "srcset",
                                                   "lazy", "picture", "href", "input", "object", "embed", "poster",
                                                   "svg", "preload"}
        assert {i.url.rsplit("/", 1)[1]: i.also for i in a.images if i.also} == {
            "b.png": ("http://s.test/s.png",), "ll.png": ("http://s.test/ls.png",),
            "pic-l.png": ("http://s.test/pic-s.png",), "pre2.png": ("http://s.test/pre.png",),
            "is2.png": ("http://s.test/is1.png",)}
        assert a.stylesheets == ["http://s.test/s.css"] and "http://s.test/favicon.png" not in {i.url for i in a.images}
        assert ImageRef("http://s.test/img/linked.jpg", "a bold café end", "href") in a.images


def test_pages_without_a_declared_charset_or_with_a_bom_go_to_beautifulsoup():
    from pipeline.scrape.extract import _fast_elements

    page = "<img src='/c.png' alt='Café'>"
    assert _fast_elements(page.encode(), None) is None  # detection is BeautifulSoup's
    assert _fast_elements(b"\xef\xbb\xbf" + page.encode(), "utf-8") is None
    assert _fast_elements(page.encode(), "no-such-charset") is None
    assert extract(b"\xef\xbb\xbf" + page.encode(), "http://s.test/", "utf-8").images[0].alt == "Café"
    assert extract(page.encode("cp1252"), "http://s.test/", "no-such-charset").images[0].url == "http://s.test/c.png"


def test_seed_options_set_the_render_mode_of_their_site(tmp_path):
    modes: dict[str, str] = {}
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("http://www.a.test/ render=ALWAYS\nhttp://b.test/x\n")
    assert expand_seeds([str(seeds), "http://c.test/ render=auto"], modes) == [
        "http://www.a.test/", "http://b.test/x", "http://c.test/"]
    assert modes == {"a.test": "always", "c.test": "auto"}
    for bad, message in (("http://a.test/ render=sometimes", "render mode"), ("http://a.test/ depth=2", "unknown seed option")):
        with pytest.raises(ValueError, match=message):
            expand_seeds([bad], {})
