"""The scraper's parsing stage: from an HTML page, the images it shows and the links it holds.

Which elements and attributes name images is ``pipeline.scrape.embeds``'s business (``_walk``); this
module turns bytes into the tag records it reads. Relative URLs resolve against ``<base href>``
when present. Only http(s) URLs come out; ``data:``/``javascript:`` never.

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
import warnings
from typing import TYPE_CHECKING

from lxml import etree

from pipeline.scrape.embeds import (  # noqa: F401 - the extraction API, re-exported
    IMAGE_EXTENSIONS,
    NOT_PAGES,
    Extracted,
    ImageRef,
    largest_candidate,
    looks_like_image_url,
    normalize_url,
    srcset_candidates,
)
from pipeline.scrape.embeds import walk as _walk

if TYPE_CHECKING:
    from bs4 import BeautifulSoup


class ExtractError(ValueError):
    """A page that could not be parsed at all; carries the URL."""

    def __init__(self, url: str, detail: str):
        super().__init__(f"{url}: {detail}")
        self.url = url
        self.reason = "unparseable"


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
            max_links: int = 20_000, max_images: int = 1_000, icons: bool = False) -> Extracted:
    """Images (with alt text and how each was found) and links of one HTML page.

    ``encoding`` is the charset from the Content-Type header, if any; otherwise the page's own
    ``<meta charset>`` or detection decides. ``robots_names`` are the ``<meta name>`` values whose
    content is returned in ``robots`` (``robots`` and our agent token); ``icons`` adds
    ``<link rel=icon>`` and its kin."""
    try:
        elements = _fast_elements(html, encoding)
        if elements is None:
            elements = _soup_elements(_parse(html, encoding, page_url))
        return _walk(elements, page_url, robots_names, max_links, max_images, icons)
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

    def start(self, tag, attrib) -> None:
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

    def end(self, tag) -> None:
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


def _text(value) -> str:
    """Attribute values can be lists (multi-valued attributes); always hand back a string."""
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(value)
    return str(value)
