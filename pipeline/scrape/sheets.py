"""The stylesheets a page links (``<link rel=stylesheet>``, ``@import``), fetched once per run each
and read for the images they name (``pipeline.scrape.styles``).

The crawl hands in its own ``fetch(url) -> (final_url, text)``: the guarded fetcher with the page
byte cap and the robots.txt check on every hop, so a sheet is fetched under the same rules as a
page. A sheet's ``@import`` s are followed to ``max_depth`` levels and at most ``max_sheets``
sheets a page; relative URLs resolve against the sheet's own (final) URL.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from urllib.parse import urljoin

from pipeline.scrape.embeds import ImageRef, normalize_url
from pipeline.scrape.styles import css_refs

SHEET_STAGE = "scrape.stylesheet"


@dataclass
class _Sheet:
    images: list[tuple[str, tuple[str, ...]]]  # (url, lesser candidates), resolved
    imports: list[str]


@dataclass
class SheetImages:
    """What one page's stylesheets gave: images, sheets fetched (for the first time in this run)
    and the sheets that failed (each reported once a run)."""

    images: list[ImageRef] = field(default_factory=list)
    fetched: list[str] = field(default_factory=list)
    failed: list[tuple[str, Exception]] = field(default_factory=list)


class Stylesheets:
    """Thread-safe: page workers share one; a sheet linked by many pages is fetched once."""

    def __init__(self, fetch: Callable[[str], tuple[str, str]], max_sheets: int = 20, max_depth: int = 3,
                 max_images: int = 1_000):
        self._fetch = fetch
        self.max_sheets, self.max_depth, self.max_images = max_sheets, max_depth, max_images
        self._lock = threading.Lock()
        self._cache: dict[str, Future] = {}

    def _get(self, url: str, out: SheetImages) -> _Sheet | None:
        with self._lock:
            fut = self._cache.get(url)
            mine = fut is None
            if mine:
                fut = self._cache[url] = Future()
        if not mine:
            try:
                return fut.result()
            except Exception:  # noqa: BLE001 - reported by the worker that fetched it
                return None
        try:
            final, text = self._fetch(url)
            refs = css_refs(text, self.max_images)
            sheet = _Sheet(
                [(u, tuple(v for v in (normalize_url(urljoin(final, a)) for a in img.also) if v))
                 for img in refs.images if (u := normalize_url(urljoin(final, img.url)))],
                [u for u in (normalize_url(urljoin(final, t)) for t in refs.imports) if u],
            )
        except Exception as exc:  # noqa: BLE001 - a failure row, never the end of the page
            fut.set_exception(exc)
            out.failed.append((url, exc))
            return None
        fut.set_result(sheet)
        out.fetched.append(url)
        return sheet

    def images(self, urls: list[str]) -> SheetImages:
        """Images of the sheets ``urls`` (absolute) and of the sheets they import."""
        out = SheetImages()
        seen: dict[str, None] = {}
        level = list(dict.fromkeys(urls))
        found: dict[str, ImageRef] = {}
        for _ in range(self.max_depth + 1):
            nxt: list[str] = []
            for url in level:
                if url in seen or len(seen) >= self.max_sheets:
                    continue
                seen[url] = None
                sheet = self._get(url, out)
                if sheet is None:
                    continue
                for img, also in sheet.images:
                    if img not in found and len(found) < self.max_images:
                        found[img] = ImageRef(img, None, "stylesheet", also)
                nxt.extend(sheet.imports)
            level = nxt
        out.images = list(found.values())
        return out
