"""Which elements of a parsed page make a browser fetch an image, and the page's links.

The walk reads the tag records ``pipeline.scrape.extract`` makes (name, attributes, parent, link text,
``<style>`` string) in document order and finds images in:

- ``<img>``: ``src``, ``srcset`` (``w`` and ``x`` descriptors), the lazy-loading attributes
  (``data-src``, ``data-srcset``, ``data-lazy-src`` …); one URL per ``<img>``, the largest candidate;
- ``<picture><source srcset>``, ``<input type=image src>``, ``<object data>``, ``<embed src>``,
  ``<video poster>``, SVG ``<image href>`` / ``xlink:href``;
- ``og:image`` / ``twitter:image`` meta tags, ``<link rel=image_src>``, ``<link rel=preload
  as=image>`` (``href`` and ``imagesrcset``), and icons (``rel=icon``, ``apple-touch-icon`` …) only
  when asked for;
- CSS ``url()`` and ``image-set()`` in ``style`` attributes and ``<style>`` blocks
  (``pipeline.scrape.styles``); ``<link rel=stylesheet>`` and ``@import`` targets come back in
  ``stylesheets`` for the crawl to fetch;
- ``<a href>`` / ``<area href>`` straight at image files.

Where an element offers several candidates of one picture (``srcset``, ``image-set``, the ``src``
beside a ``srcset``), the largest is fetched and the others are kept in ``ImageRef.also``: the
crawl records them as sightings of the same image, without a download.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urldefrag, urljoin, urlsplit, urlunsplit

from pipeline.scrape.styles import css_refs

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".jfif", ".avif")
# Links to these are not pages: not worth a download to find out.
NOT_PAGES = (".pdf", ".zip", ".gz", ".tgz", ".tar", ".7z", ".rar", ".mp3", ".mp4", ".m4v", ".avi", ".mov", ".webm",
             ".wav", ".ogg", ".exe", ".dmg", ".iso", ".apk", ".css", ".js", ".json", ".woff", ".woff2", ".ttf",
             ".otf", ".svg", ".ico", ".doc", ".docx", ".xls", ".xlsx", ".ppt", ".pptx")
# <object data> / <embed src> of these are documents or players, not pictures
NOT_IMAGES = tuple(x for x in NOT_PAGES if x not in (".ico",)) + (".html", ".htm", ".swf", ".php")
LAZY_SRC = ("data-src", "data-lazy-src", "data-original", "data-lazy")
LAZY_SRCSET = ("data-srcset", "data-lazy-srcset")
META_IMAGE = {
    "og:image": "og:image",
    "og:image:url": "og:image",
    "og:image:secure_url": "og:image",
    "twitter:image": "twitter:image",
    "twitter:image:src": "twitter:image",
}
ICON_RELS = frozenset({"icon", "apple-touch-icon", "apple-touch-icon-precomposed", "mask-icon", "fluid-icon"})


@dataclass(frozen=True)
class ImageRef:
    url: str
    alt: str | None
    # img | srcset | lazy | picture | input | object | embed | poster | svg | og:image | twitter:image
    # | link | preload | icon | css | stylesheet | href | render:dom | render:request
    found_by: str
    also: tuple[str, ...] = ()  # lesser candidates of the same picture: sightings, never fetched


@dataclass
class Extracted:
    images: list[ImageRef] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    robots: list[str] = field(default_factory=list)  # contents of <meta name="robots"> and ours
    base: str = ""
    stylesheets: list[str] = field(default_factory=list)  # <link rel=stylesheet> and @import targets
    scripts: int = 0  # <script> elements (``--render auto`` renders a page with scripts and no image)


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


def srcset_candidates(srcset: str) -> list[str]:
    """The candidate URLs of a ``srcset``, largest first (by ``w``, else by ``x``; 1x if none)."""
    ranked: list[tuple[int, float, int, str]] = []
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
        ranked.append((kind, size, -len(ranked), url))  # ties: the first written wins
    ranked.sort(reverse=True)
    return list(dict.fromkeys(url for *_, url in ranked))


def largest_candidate(srcset: str) -> str | None:
    """The URL of the largest candidate in a ``srcset`` (by ``w``, else by ``x``; 1x if none)."""
    found = srcset_candidates(srcset)
    return found[0] if found else None


def looks_like_image_url(url: str) -> bool:
    return urlsplit(url).path.lower().endswith(IMAGE_EXTENSIONS)


class _Walk:
    """The state of one walk: images by URL (first sighting wins), links, stylesheets."""

    def __init__(self, base: str, max_links: int, max_images: int):
        self.base, self.max_links, self.max_images = base, max_links, max_images
        self.images: dict[str, ImageRef] = {}
        self.links: dict[str, None] = {}
        self.sheets: dict[str, None] = {}

    def resolve(self, raw: str | None) -> str | None:
        return normalize_url(urljoin(self.base, raw.strip())) if raw and raw.strip() else None

    def add(self, raw: str | None, found_by: str, alt: str | None, also: list[str] | tuple[str, ...] = ()) -> None:
        if len(self.images) >= self.max_images:
            return
        u = self.resolve(raw)
        if u and u not in self.images:
            others = tuple(dict.fromkeys(v for v in map(self.resolve, also) if v and v != u))
            self.images[u] = ImageRef(u, (alt or "").strip()[:2000] or None, found_by, others)

    def add_set(self, srcset: str, found_by: str, alt: str | None, extra: list[str] | None = None) -> bool:
        """The largest candidate of ``srcset``, the rest (and ``extra``) as lesser ones."""
        found = srcset_candidates(srcset)
        if not found:
            return False
        self.add(found[0], found_by, alt, found[1:] + (extra or []))
        return True

    def add_css(self, css: str, found_by: str, alt: str | None) -> None:
        refs = css_refs(css, self.max_images)
        for img in refs.images:
            self.add(img.url, found_by, alt, img.also)
        for target in refs.imports:
            self.sheet(target)

    def sheet(self, raw: str | None) -> None:
        u = self.resolve(raw)
        if u:
            self.sheets.setdefault(u, None)

    def result(self, out: Extracted) -> Extracted:
        # a lesser candidate that is some element's own image is fetched as that, not folded
        mains, taken = set(self.images), set()
        refs = []
        for ref in self.images.values():
            also = tuple(u for u in ref.also if u not in mains and u not in taken)
            taken.update(also)
            refs.append(ref if also == ref.also else ImageRef(ref.url, ref.alt, ref.found_by, also))
        out.images, out.links, out.stylesheets = refs, list(self.links), list(self.sheets)
        return out


def _img(w: _Walk, attrs: dict[str, str]) -> None:
    srcset = next((attrs[a] for a in LAZY_SRCSET if attrs.get(a)), None)
    lazy = next((attrs[a] for a in LAZY_SRC if attrs.get(a)), None)
    alt = attrs.get("alt") or ""
    # One URL per <img>: the largest lazy candidate, then srcset, then lazy src, then src (with
    # lazy loading, src is usually a placeholder: never a candidate of the picture).
    if srcset and w.add_set(srcset, "lazy", alt, [lazy] if lazy else None):
        return
    if attrs.get("srcset") and w.add_set(attrs["srcset"], "srcset", alt, None if lazy else [attrs.get("src") or ""]):
        return
    if lazy:
        w.add(lazy, "lazy", alt)
    else:
        w.add(attrs.get("src") or "", "img", alt)


def _embedded(w: _Walk, url: str | None, kind: str, found_by: str, alt: str | None) -> None:
    """``<object data>`` / ``<embed src>``: a picture when its type says so, or it names none and
    the URL is not a document's."""
    kind = (kind or "").strip().lower()
    if kind and not kind.startswith("image/"):
        return
    u = w.resolve(url)
    if u and (kind or not urlsplit(u).path.lower().endswith(NOT_IMAGES)):
        w.add(u, found_by, alt)


def _link(w: _Walk, attrs: dict[str, str], icons: bool) -> None:
    rel = set((attrs.get("rel") or "").lower().split())
    href = attrs.get("href") or ""
    if "image_src" in rel:
        w.add(href, "link", None)
    elif "preload" in rel and (attrs.get("as") or "").strip().lower() == "image":
        if not (attrs.get("imagesrcset") and w.add_set(attrs["imagesrcset"], "preload", None, [href])):
            w.add(href, "preload", None)
    elif "stylesheet" in rel and "alternate" not in rel:
        w.sheet(href)
    elif icons and rel & ICON_RELS:
        w.add(href, "icon", attrs.get("title"))


def _anchor(w: _Walk, el, attrs: dict[str, str]) -> None:
    href = attrs["href"].strip()
    target = None if href.startswith("#") else w.resolve(href)
    if target is None:
        return
    if looks_like_image_url(target):
        w.add(target, "href", attrs.get("title") or (el.text or "")[:500])
    elif len(w.links) < w.max_links and not urlsplit(target).path.lower().endswith(NOT_PAGES):
        w.links.setdefault(target, None)


def walk(elements: list, page_url: str, robots_names: tuple[str, ...], max_links: int, max_images: int,
         icons: bool = False) -> Extracted:
    """Images, links, stylesheets and robots directives of a page's tag records."""
    out = Extracted()
    base_tag = next((el for el in elements if el.name == "base" and "href" in el.attrs), None)
    out.base = urljoin(page_url, base_tag.attrs["href"].strip()) if base_tag else page_url
    w = _Walk(out.base, max_links, max_images)
    # og:image:alt / twitter:image:alt usually come after the image tag they describe
    meta_alt: dict[str, str] = {}
    for el in elements:
        if el.name == "meta":
            key = (el.attrs.get("property") or el.attrs.get("name") or "").lower()
            if key in ("og:image:alt", "twitter:image:alt"):
                meta_alt.setdefault(key.rsplit(":", 1)[0], el.attrs.get("content") or "")
    for el in elements:
        name, attrs = el.name, el.attrs
        title = attrs.get("title") or attrs.get("aria-label")
        if name == "img":
            _img(w, attrs)
        elif name == "source" and el.parent is not None and el.parent.name == "picture":
            w.add_set(attrs.get("srcset") or attrs.get("data-srcset") or "", "picture", el.parent.img_alt)
        elif name == "input" and (attrs.get("type") or "").strip().lower() == "image":
            w.add(attrs.get("src"), "input", attrs.get("alt") or title)
        elif name == "object":
            _embedded(w, attrs.get("data"), attrs.get("type") or "", "object", title)
        elif name == "embed":
            _embedded(w, attrs.get("src"), attrs.get("type") or "", "embed", title)
        elif name == "video" and attrs.get("poster"):
            w.add(attrs["poster"], "poster", title)
        elif name == "image" and (attrs.get("href") or attrs.get("xlink:href")):
            w.add(attrs.get("href") or attrs.get("xlink:href"), "svg", title)
        elif name == "script":
            out.scripts += 1
        elif name == "meta":
            key = (attrs.get("property") or attrs.get("name") or "").lower()
            if key in META_IMAGE:
                w.add(attrs.get("content") or "", META_IMAGE[key], meta_alt.get(META_IMAGE[key]))
            elif key in robots_names and attrs.get("content"):
                out.robots.append(attrs["content"])
        elif name == "link":
            _link(w, attrs, icons)
        elif name in ("a", "area") and attrs.get("href"):
            _anchor(w, el, attrs)
        elif name == "style" and el.string:
            w.add_css(el.string, "css", None)
        style = attrs.get("style")
        if style and ("url(" in style.lower() or "image-set(" in style.lower()):
            w.add_css(style, "css", title or "")
    return w.result(out)
