"""The scraper's parsing stage: from an HTML page, the images it shows and the links it holds.

Images are found in ``<img src>``, ``srcset`` (largest candidate), lazy-loading attributes
(``data-src``, ``data-srcset``, ``data-lazy-src``), ``<picture><source srcset>``, ``og:image`` /
``twitter:image`` meta tags, ``<link rel=image_src>``, CSS ``url(...)`` in ``style`` attributes
and ``<style>`` blocks, and ``<a href>`` links straight at image files. Relative URLs resolve
against ``<base href>`` when present. Only http(s) URLs come out; ``data:``/``javascript:`` never.

Parsing is BeautifulSoup over lxml (html.parser as a fallback), whose tree walks are iterative,
so a 5,000-level nested page parses; a ``RecursionError`` from either parser becomes
``ExtractError`` rather than a crash.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from urllib.parse import urldefrag, urljoin, urlsplit, urlunsplit

from bs4 import BeautifulSoup, MarkupResemblesLocatorWarning, XMLParsedAsHTMLWarning
from bs4.builder import ParserRejectedMarkup

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
        soup = _parse(html, encoding, page_url)
        return _walk(soup, page_url, robots_names, max_links, max_images)
    except RecursionError as exc:
        raise ExtractError(page_url, "RecursionError while walking the page") from exc


def _walk(soup: BeautifulSoup, page_url: str, robots_names: tuple[str, ...], max_links: int,
          max_images: int) -> Extracted:
    out = Extracted()
    base_tag = soup.find("base", href=True)
    base = urljoin(page_url, base_tag["href"].strip()) if base_tag else page_url
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
    for tag in soup.find_all("meta"):
        key = _text(tag.get("property") or tag.get("name")).lower()
        if key in ("og:image:alt", "twitter:image:alt"):
            meta_alt.setdefault(key.rsplit(":", 1)[0], _text(tag.get("content")))
    for tag in soup.find_all(True):  # iterative walk in document order
        name = tag.name
        attrs = tag.attrs
        if name == "img":
            srcset = next((attrs[a] for a in LAZY_SRCSET if attrs.get(a)), None)
            lazy = next((attrs[a] for a in LAZY_SRC if attrs.get(a)), None)
            alt = _text(attrs.get("alt"))
            # One URL per <img>: the largest lazy candidate, then srcset, then lazy src, then src
            # (with lazy loading, src is usually a placeholder).
            if srcset and largest_candidate(_text(srcset)):
                add_image(largest_candidate(_text(srcset)), "lazy", alt)
            elif attrs.get("srcset") and largest_candidate(_text(attrs["srcset"])):
                add_image(largest_candidate(_text(attrs["srcset"])), "srcset", alt)
            elif lazy:
                add_image(_text(lazy), "lazy", alt)
            else:
                add_image(_text(attrs.get("src")), "img", alt)
        elif name == "source" and tag.parent is not None and tag.parent.name == "picture":
            srcset = _text(attrs.get("srcset") or attrs.get("data-srcset"))
            img = tag.parent.find("img")
            add_image(largest_candidate(srcset) if srcset else None, "picture",
                      _text(img.get("alt")) if img is not None else None)
        elif name == "meta":
            key = _text(attrs.get("property") or attrs.get("name")).lower()
            if key in META_IMAGE:
                add_image(_text(attrs.get("content")), META_IMAGE[key], meta_alt.get(META_IMAGE[key]))
            elif key in robots_names and attrs.get("content"):
                out.robots.append(_text(attrs["content"]))
        elif name == "link":
            rel = [r.lower() for r in (attrs.get("rel") or [])]
            if "image_src" in rel:
                add_image(_text(attrs.get("href")), "link", None)
        elif name in ("a", "area") and attrs.get("href"):
            href = _text(attrs["href"]).strip()
            target = None if href.startswith("#") else normalize_url(urljoin(base, href))
            if target is None:
                pass
            elif looks_like_image_url(target):
                add_image(target, "href", _text(attrs.get("title")) or tag.get_text(" ", strip=True)[:500])
            elif len(links) < max_links and not urlsplit(target).path.lower().endswith(NOT_PAGES):
                links.setdefault(target, None)
        elif name == "style" and tag.string:
            for m in CSS_URL.finditer(tag.string):
                add_image(m.group(2), "css", None)
        style = attrs.get("style")
        if style and "url(" in style.lower():
            for m in CSS_URL.finditer(_text(style)):
                add_image(m.group(2), "css", _text(attrs.get("title")) or _text(attrs.get("aria-label")))
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
