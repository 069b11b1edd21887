"""The crawl's rendering step: which pages go to the browser (``--render`` and the per-seed
``render=`` option), and what the browser found merged into the page's static result.

``always`` renders every HTML page; ``auto`` only a page whose static parse found no image but
had scripts; ``never`` none. An image the static parse found keeps its ``found_by``; one only the
browser found is ``render:dom`` (in the DOM) or ``render:request`` (only requested). The browser
starts on the first page that needs it, so an ``auto`` crawl of static pages never starts one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from pipeline.config import ScrapeSettings
from pipeline.scrape.fetch import Response
from pipeline.scrape.render import MODES, RENDER_STAGE, Renderer, check_available


class RenderModeError(ValueError):
    """A render mode that is not one of never / auto / always."""


def check_mode(mode: str, subject: str = "--render") -> str:
    mode = (mode or "").strip().lower()
    if mode not in MODES:
        raise RenderModeError(f"{subject}: render mode {mode!r} is not one of {', '.join(MODES)}")
    return mode


class RenderStep:
    """Thread-safe; one per crawl. ``fetch(url, max_bytes)`` is the crawl's guarded GET."""

    def __init__(self, settings: ScrapeSettings, default: str, site_modes: dict[str, str],
                 fetch: Callable[[str, int], Response], site_of: Callable[[str], str]):
        self.settings, self.default, self.site_modes = settings, check_mode(default), site_modes
        self.fetch, self.site_of = fetch, site_of
        self.executable = None
        if self.default != "never" or any(m != "never" for m in site_modes.values()):
            self.executable = check_available(settings.chromium_path)  # a clear error before any fetch
        self._renderer: Renderer | None = None
        self._lock = threading.Lock()
        self._final: dict = {}

    def wanted(self, url: str, images: int, scripts: int) -> bool:
        mode = self.site_modes.get(self.site_of(url), self.default)
        return mode == "always" or (mode == "auto" and images == 0 and scripts > 0)

    def always(self, url: str) -> bool:
        return self.site_modes.get(self.site_of(url), self.default) == "always"

    def _get(self) -> Renderer:
        with self._lock:
            if self._renderer is None:
                s = self.settings
                self._renderer = Renderer(
                    self.fetch, self.executable, s.max_page_bytes, timeout_s=s.render_timeout_s,
                    max_requests=s.render_max_requests, restart_every=s.render_restart_every,
                    concurrency=s.render_concurrency, max_scrolls=s.render_max_scrolls, settle_s=s.render_settle_s,
                    max_images=s.max_images_per_page, max_links=s.max_links_per_page, trap=s.render_trap_proxy)
            return self._renderer

    def apply(self, out, html: bytes, content_type: str, follow: bool) -> None:  # a PageResult
        """Render ``out.url`` and add what only the browser found to ``out`` (images, links when
        ``follow``, failure rows for the requests it refused)."""
        rendered = self._get().render(out.final_url or out.url, html, content_type)
        out.failures.extend((RENDER_STAGE, url, exc) for url, exc in rendered.failures)
        if rendered.error is not None:
            out.failures.append((RENDER_STAGE, out.url, rendered.error))
            return
        have = {r.url for r in out.images} | {u for r in out.images for u in r.also}
        room = self.settings.max_images_per_page - len(out.images)
        out.images.extend([r for r in rendered.images if r.url not in have][:max(0, room)])
        if follow:
            known = set(out.links)
            out.links.extend(u for u in rendered.links if u not in known)
        out.cleared.append((RENDER_STAGE, out.url))

    @property
    def stats(self) -> dict:
        return dict(self._renderer.stats) if self._renderer is not None else dict(self._final)

    def kill_browser(self) -> None:
        if self._renderer is not None:
            self._renderer.kill_browser()

    def close(self) -> None:
        with self._lock:
            renderer, self._renderer = self._renderer, None
        if renderer is not None:
            self._final = dict(renderer.stats)  # the run's summary is made after the browser closed
            renderer.close()
