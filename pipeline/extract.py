"""The scraper's parsing stage: from an HTML page, the images it shows and the links it holds.

Images are found in ``<img src>``, ``srcset`` (largest candidate), lazy-loading attributes
(``data-src``, ``data-srcset``, ``data-lazy-src``), ``<picture><source srcset>``, ``og:image`` /
``twitter:image`` meta tags, ``<link rel=image_src>``, CSS ``url(...)`` in ``style`` attributes
and ``<style>`` blocks, and ``<a href>`` links straight at image files. Relative URLs resolve
against ``<base href>`` when present. Only http(s) URLs come out; ``data:``/``javascript:`` never.

A page whose charset the server declares is parsed by lxml's HTML parser driving a small event
target (``_Events``) that keeps only what the walk reads: tags in document order, their attributes,
the text of links and ``<style>`` blocks. Any other page, and any page that parser rejects, goes
to BeautifulSoup over lxml (html.parser as a fallback), with its own charset detection. Both
produce the same ``_Element`` records, built from the same lxml parse events (BeautifulSoup's lxml
builder is such a target too), and ``_walk`` reads only those: on a page both can parse they agree
(``tests/pipeline/test_scrape_units.py`` compares them). The fast path skips BeautifulSoup's tree
(about 0.5 ms of CPU a page) and its import. Neither has a depth limit (a 5,000-level nested page
parses); a ``RecursionError`` becomes ``ExtractError`` rather than a crash.
"""

from __future__ import annotations

import codecs
import re
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urldefrag, urljoin, urlsplit, urlunsplit

from lxml import etree

if TYPE_CHECKING:
    from bs4 import BeautifulSoup

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".jfif", ".avif")
# Links to these are not pages: not worth a download to find out.
NOT_PAGES = (".pdf", ".zip", ".gz", ".tgz", ".tar", ".7z", ".rar", ".mp3", ".mp4", ".m4v", ".avi", ".mov", ".webm",
             ".wav", ".ogg", ".exe", ".dmg", ".iso", ".apk", ".css", ".js", ".json", ".woff", ".woff2", ".ttf",
             ".otf", ".svg", ".ico", ".doc", ".docx", ".xls", ".xlsx", ".ppt", ".pptx")
LAZY_SRC = ("data-src", "data-lazy-src", "data-original", "data-lazy")
LAZY_SRCSET = ("data-srcset", "data-lazy-srcset")
META_IMAGE = {
    "og:image": "og:image",
    "og:image:url": "og:image",
    "og:image:secure_url": "og:image",
    "twitter:image": "twitter:image",
    "twitter:image:src": "twitter:image",
}
CSS_URL = re.compile(r"""url\(\s*(['"]?)(.*?)\1\s*\)""", re.IGNORECASE | re.DOTALL)


class ExtractError(ValueError):
    """A page that could not be parsed at all; carries the URL."""

    def __init__(self, url: str, detail: str):
        super().__init__(f"{url}: {detail}")
        self.url = url
        self.reason = "unparseable"


@dataclass(frozen=True)
class ImageRef:
    url: str
    alt: str | None
    found_by: str  # img | srcset | lazy | picture | og:image | twitter:image | link | css | href


@dataclass
class Extracted:
    images: list[ImageRef] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    robots: list[str] = field(default_factory=list)  # contents of <meta name="robots"> and ours
    base: str = ""


def normalize_url(url: str) -> str | None:
    """http(s) URL without fragment, lower-case scheme and host, default port dropped; else None."""
    url = urldefrag(url.strip())[0]
    try:
        p = urlsplit(url)
        port = p.port
    except ValueError:
        return None
    if p.scheme.lower() not in ("http", "https") or not p.hostname:
        return None
    scheme = p.scheme.lower()
    host = p.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port and not ((scheme == "http" and port == 80) or (scheme == "https" and port == 443)):
        host = f"{host}:{port}"
    userinfo = p.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}" if userinfo else host
    return urlunsplit((scheme, netloc, p.path or "/", p.query, ""))


def largest_candidate(srcset: str) -> str | None:
    """The URL of the largest candidate in a ``srcset`` (by ``w``, else by ``x``; 1x if none)."""
    best: tuple[int, float, str] | None = None
    pos, n = 0, len(srcset)
    while pos < n:
        while pos < n and (srcset[pos].isspace() or srcset[pos] == ","):
            pos += 1
        start = pos
        while pos < n and not srcset[pos].isspace():
            pos += 1
        url = srcset[start:pos]
        descriptor = ""
        if url.endswith(","):
            url = url.rstrip(",")
        else:
            start = pos
            while pos < n and srcset[pos] != ",":
                pos += 1
            descriptor = srcset[start:pos].strip().lower()
        if not url:
            continue
        size, kind = 1.0, 0  # kind 1 = width descriptor, ranked above density ones
        for token in descriptor.split():
            try:
                if token.endswith("w"):
                    size, kind = float(token[:-1]), 1
                elif token.endswith("x"):
                    size = float(token[:-1])
            except ValueError:
                continue
        if best is None or (kind, size) > (best[0], best[1]):
            best = (kind, size, url)
    return best[2] if best else None


def looks_like_image_url(url: str) -> bool:
    return urlsplit(url).path.lower().endswith(IMAGE_EXTENSIONS)


def _parse(html: bytes, encoding: str | None, url: str) -> BeautifulSoup:
    from bs4 import BeautifulSoup, MarkupResemblesLocatorWarning, XMLParsedAsHTMLWarning
    from bs4.builder import ParserRejectedMarkup

    last: Exception | None = None
    for parser in ("lxml", "html.parser"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", XMLParsedAsHTMLWarning)
                warnings.simplefilter("ignore", MarkupResemblesLocatorWarning)
                return BeautifulSoup(html, parser, from_encoding=encoding)
        except (RecursionError, ParserRejectedMarkup, ValueError, AssertionError) as exc:
            last = exc
    raise ExtractError(url, f"{type(last).__name__}: {last}")


def extract(html: bytes, page_url: str, encoding: str | None = None, robots_names: tuple[str, ...] = ("robots",),
            max_links: int = 20_000, max_images: int = 1_000) -> Extracted:
    """Images (with alt text and how each was found) and links of one HTML page.

    ``encoding`` is the charset from the Content-Type header, if any; otherwise the page's own
    ``<meta charset>`` or detection decides. ``robots_names`` are the ``<meta name>`` values whose
    content is returned in ``robots`` (``robots`` and our agent token)."""
    try:
        elements = _fast_elements(html, encoding)
        if elements is None:
            elements = _soup_elements(_parse(html, encoding, page_url))
        return _walk(elements, page_url, robots_names, max_links, max_images)
    except RecursionError as exc:
        raise ExtractError(page_url, "RecursionError while walking the page") from exc


class _Element:
    """One tag as the walk sees it: name, attributes (multi-valued ones joined by a space), its
    parent, and for the tags that need them the text of a link, the string of a ``<style>``, the
    ``alt`` of a ``<picture>``'s first ``<img>``."""

    __slots__ = ("name", "attrs", "parent", "text", "string", "img_alt")

    def __init__(self, name: str, attrs: dict[str, str], parent: _Element | None):
        self.name, self.attrs, self.parent = name, attrs, parent
        self.text: str | None = None  # a / area: get_text(" ", strip=True)
        self.string: str | None = None  # style: its one string
        self.img_alt: str | None = None  # picture: alt of its first <img> descendant ("" without alt)

    def key(self) -> tuple:
        return (self.name, self.attrs, self.parent.name if self.parent else None, self.text, self.string,
                self.img_alt)


# Strings inside these are not text of an enclosing link (BeautifulSoup's Script / Stylesheet /
# TemplateString), nor are comments.
_NOT_TEXT = frozenset({"script", "style", "template"})
_BOMS = (codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)


class _Events:
    """An lxml parser target that records ``_Element`` s in document order. Text between two
    events (tags, comments) is one string, as BeautifulSoup makes it."""

    def __init__(self):
        self.elements: list[_Element] = []
        self.stack: list[_Element] = []
        self.links: list[tuple[_Element, list[str]]] = []  # open a / area and their strings
        self.pictures: list[_Element] = []  # open <picture>s still without an <img>
        self.hidden = 0  # open script / style / template
        self.preserve = 0  # open pre / textarea (blank strings kept as they are)
        self.pending: list[str] = []  # text since the last event
        self.pending_hidden = False

    def _flush(self) -> None:
        if not self.pending:
            return
        text = "".join(self.pending)
        self.pending = []
        if not self.preserve and not text.strip(" \n\t\f\r"):
            text = "\n" if "\n" in text else " "  # BeautifulSoup keeps blank strings as one character
        el = self.stack[-1] if self.stack else None
        if el is not None and el.name == "style":
            el.string = (el.string or "") + text
        if not self.pending_hidden:
            for _, parts in self.links:
                parts.append(text)

    def start(self, tag, attrib) -> None:  # noqa: ANN001
        self._flush()
        if not isinstance(tag, str):
            return
        el = _Element(tag, dict(attrib), self.stack[-1] if self.stack else None)
        if "rel" in el.attrs and tag in ("a", "link", "area"):
            el.attrs["rel"] = " ".join(el.attrs["rel"].split())  # a multi-valued attribute
        self.elements.append(el)
        self.stack.append(el)
        if tag in ("a", "area"):
            self.links.append((el, []))
        elif tag == "img":
            for pic in self.pictures:
                pic.img_alt = attrib.get("alt", "")
            self.pictures.clear()
        elif tag == "picture":
            self.pictures.append(el)
        if tag in _NOT_TEXT:
            self.hidden += 1
        if tag in ("pre", "textarea"):
            self.preserve += 1

    def end(self, tag) -> None:  # noqa: ANN001
        self._flush()
        if not isinstance(tag, str) or not self.stack:
            return
        el = self.stack.pop()
        if el.name in ("a", "area"):
            link, parts = self.links.pop()
            link.text = " ".join(p for p in (x.strip() for x in parts) if p)
        elif el.name == "picture" and el in self.pictures:
            self.pictures.remove(el)
        if el.name in _NOT_TEXT:
            self.hidden -= 1
        if el.name in ("pre", "textarea"):
            self.preserve -= 1

    def data(self, text: str) -> None:
        if not self.pending:
            self.pending_hidden = self.hidden > 0
        self.pending.append(text)

    def comment(self, text: str) -> None:
        self._flush()

    def close(self) -> list[_Element]:
        self._flush()
        while self.stack:  # tags still open at the end of the page
            self.end(self.stack[-1].name)
        return self.elements


def _fast_elements(html: bytes, encoding: str | None) -> list[_Element] | None:
    """The page's elements through lxml's parser alone, when the server named a charset Python
    knows and the page has no byte-order mark; None otherwise (or when lxml rejects the page), and
    BeautifulSoup decides."""
    if not encoding or html.startswith(_BOMS):
        return None
    try:
        codecs.lookup(encoding)
        events = _Events()
        parser = etree.HTMLParser(target=events, recover=True, encoding=encoding)
        parser.feed(html)
        return parser.close()
    except (LookupError, UnicodeError, ValueError, etree.LxmlError):
        return None


def _soup_elements(soup: BeautifulSoup) -> list[_Element]:
    """The same records from a BeautifulSoup tree."""
    made: dict[int, _Element] = {}
    out: list[_Element] = []
    for tag in soup.find_all(True):  # iterative walk in document order
        parent = made.get(id(tag.parent)) if tag.parent is not None else None
        el = _Element(tag.name, {k: _text(v) for k, v in tag.attrs.items()}, parent)
        if tag.name in ("a", "area"):
            el.text = tag.get_text(" ", strip=True)
        elif tag.name == "style":
            el.string = tag.string
        elif tag.name == "picture":
            img = tag.find("img")
            el.img_alt = _text(img.get("alt")) if img is not None else None
        made[id(tag)] = el
        out.append(el)
    return out


def _walk(elements: list[_Element], page_url: str, robots_names: tuple[str, ...], max_links: int,
          max_images: int) -> Extracted:
    out = Extracted()
    base_tag = next((el for el in elements if el.name == "base" and "href" in el.attrs), None)
    base = urljoin(page_url, base_tag.attrs["href"].strip()) if base_tag else page_url
    out.base = base
    images: dict[str, ImageRef] = {}
    links: dict[str, None] = {}

    def add_image(raw: str | None, found_by: str, alt: str | None) -> None:
        if not raw or len(images) >= max_images:
            return
        u = normalize_url(urljoin(base, raw.strip()))
        if u and u not in images:
            images[u] = ImageRef(u, (alt or "").strip()[:2000] or None, found_by)

    # og:image:alt / twitter:image:alt usually come after the image tag they describe
    meta_alt: dict[str, str] = {}
    for el in elements:
        if el.name == "meta":
            key = (el.attrs.get("property") or el.attrs.get("name") or "").lower()
            if key in ("og:image:alt", "twitter:image:alt"):
                meta_alt.setdefault(key.rsplit(":", 1)[0], el.attrs.get("content") or "")
    for el in elements:
        name = el.name
        attrs = el.attrs
        if name == "img":
            srcset = next((attrs[a] for a in LAZY_SRCSET if attrs.get(a)), None)
            lazy = next((attrs[a] for a in LAZY_SRC if attrs.get(a)), None)
            alt = attrs.get("alt") or ""
            # One URL per <img>: the largest lazy candidate, then srcset, then lazy src, then src
            # (with lazy loading, src is usually a placeholder).
            if srcset and largest_candidate(srcset):
                add_image(largest_candidate(srcset), "lazy", alt)
            elif attrs.get("srcset") and largest_candidate(attrs["srcset"]):
                add_image(largest_candidate(attrs["srcset"]), "srcset", alt)
            elif lazy:
                add_image(lazy, "lazy", alt)
            else:
                add_image(attrs.get("src") or "", "img", alt)
        elif name == "source" and el.parent is not None and el.parent.name == "picture":
            srcset = attrs.get("srcset") or attrs.get("data-srcset") or ""
            add_image(largest_candidate(srcset) if srcset else None, "picture", el.parent.img_alt)
        elif name == "meta":
            key = (attrs.get("property") or attrs.get("name") or "").lower()
            if key in META_IMAGE:
                add_image(attrs.get("content") or "", META_IMAGE[key], meta_alt.get(META_IMAGE[key]))
            elif key in robots_names and attrs.get("content"):
                out.robots.append(attrs["content"])
        elif name == "link":
            rel = (attrs.get("rel") or "").lower().split()
            if "image_src" in rel:
                add_image(attrs.get("href") or "", "link", None)
        elif name in ("a", "area") and attrs.get("href"):
            href = attrs["href"].strip()
            target = None if href.startswith("#") else normalize_url(urljoin(base, href))
            if target is None:
                pass
            elif looks_like_image_url(target):
                add_image(target, "href", attrs.get("title") or (el.text or "")[:500])
            elif len(links) < max_links and not urlsplit(target).path.lower().endswith(NOT_PAGES):
                links.setdefault(target, None)
        elif name == "style" and el.string:
            for m in CSS_URL.finditer(el.string):
                add_image(m.group(2), "css", None)
        style = attrs.get("style")
        if style and "url(" in style.lower():
            for m in CSS_URL.finditer(style):
                add_image(m.group(2), "css", attrs.get("title") or attrs.get("aria-label") or "")
    out.images = list(images.values())
    out.links = list(links)
    return out


def _text(value) -> str:  # noqa: ANN001
    """Attribute values can be lists (multi-valued attributes); always hand back a string."""
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(value)
    return str(value)
