"""Rendered pages: a page loaded in headless Chromium (Playwright driving the system ``chromium``,
never a downloaded browser), scrolled to trigger lazy loading, and read for every image it
requested or put in the DOM.

The browser never opens a connection of its own. Every request it makes is intercepted
(``context.route("**/*")``) and answered by the crawl:

- the page's own document with the bytes the static crawl already fetched;
- scripts, styles, JSON, frames … by the crawl's guarded fetcher (SSRF guard, robots.txt, byte
  cap, per-host politeness), or aborted with a failure row (stage ``scrape.render``) when that
  refuses them; only GETs, and at most ``max_requests`` a page;
- images with a one-pixel placeholder: their URLs are recorded and the crawl's image stage fetches
  each once, under the same rules as any image (validation, opt-outs, failure rows);
- web sockets: closed inside the browser, with a failure row; fonts, media, event streams:
  aborted (nothing a picture needs).

Anything that escaped interception would meet a proxy on a closed loopback port (loopback not
bypassed): Chromium has no route to any host. Service workers are blocked.

One browser per crawl, run from one event-loop thread; page workers call ``render`` and wait.
One browser context per host; the browser is restarted after ``restart_every`` pages and after a
crash. A page has ``timeout_s`` in all (load, scrolls, reading the DOM).
"""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin

from pipeline.scrape.embeds import ImageRef, normalize_url
from pipeline.scrape.fetch import FetchError, Response, host_key
from pipeline.scrape.render_dom import COLLECT_JS, SCROLL_JS, dom_refs

RENDER_STAGE = "scrape.render"
MODES = ("never", "auto", "always")
# GIF89a, 1x1, transparent: what an image request gets inside the browser
PIXEL = bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b")
SKIPPED = frozenset({"font", "media", "websocket", "eventsource", "manifest", "texttrack", "ping", "cspreport"})
DEAD_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens there
# Chromium's own traffic (component updates, sign-in, safe browsing, metrics) off: a crawl's
# browser speaks only for its pages (tests/pipeline/test_scrape_render.py counts what it tries)
QUIET_ARGS = (
    "--force-webrtc-ip-handling-policy=disable_non_proxied_udp", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-domain-reliability", "--no-pings",
    "--disable-client-side-phishing-detection", "--disable-default-apps", "--disable-extensions",
    "--no-first-run", "--no-default-browser-check", "--disable-dev-shm-usage", "--metrics-recording-only",
    "--disable-breakpad", "--password-store=basic", "--use-mock-keychain", "--allow-browser-signin=false",
    # Playwright's own list (the last --disable-features wins, so it is repeated here), then ours
    "--disable-features=AvoidUnnecessaryBeforeUnloadCheckSync,DestroyProfileOnBrowserClose,HttpsUpgrades,"
    "HttpsFirstBalancedModeAutoEnable,LensOverlay,MediaRouter,PaintHolding,ThirdPartyStoragePartitioning,"
    "AvoidCorsURLLoaderRestartOnRedirect,OptimizationHints,NetworkTimeServiceQuerying,AimEnabled,"
    "PreconnectToSearch,AutofillServerCommunication,CertificateTransparencyComponentUpdater,Translate,"
    "InterestFeedContentSuggestions,AccountConsistency,SigninInterception,DeviceBoundSessionCredentials,"
    "FedCm,PrivacySandboxSettings4,ComponentUpdater,SafeBrowsingOnDeviceModel",
)


class RenderUnavailable(RuntimeError):
    """Rendering was asked for and cannot run here (no ``chromium`` binary or no playwright)."""


def check_available(executable: str | None = None) -> str:
    """The Chromium binary to drive; raises ``RenderUnavailable`` saying what is missing."""
    if importlib.util.find_spec("playwright") is None:
        raise RenderUnavailable("rendering needs the playwright package (pip install playwright)")
    if executable:
        if not (shutil.which(executable) or Path(executable).is_file()):
            raise RenderUnavailable(f"rendering: no chromium at {executable!r} (the chromium_path setting)")
        return executable
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        raise RenderUnavailable("rendering needs a chromium binary on PATH (apt-get install chromium; "
                                "./dev setup installs it)")
    return path


@dataclass
class Rendered:
    images: list[ImageRef] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    failures: list[tuple[str, Exception]] = field(default_factory=list)  # requests refused or failed
    requests: int = 0  # answered by the fetcher
    error: Exception | None = None  # the render itself failed (the static result stands)


class RenderError(Exception):
    def __init__(self, url: str, reason: str, detail: str):
        super().__init__(f"{url}: {reason} ({detail})")
        self.url, self.reason = url, reason


@dataclass
class _Page:
    url: str
    html: bytes
    content_type: str
    out: Rendered
    requested: dict[str, None] = field(default_factory=dict)  # image URLs the browser asked for
    inflight: int = 0
    last_request: float = 0.0
    document_served: bool = False


class Renderer:
    """Thread-safe front of one headless Chromium. ``fetch(url, max_bytes) -> Response`` is the
    crawl's guarded GET (robots checked on every hop); it raises ``FetchError``."""

    def __init__(self, fetch: Callable[[str, int], Response], executable: str, max_bytes: int,
                 timeout_s: float = 15.0, max_requests: int = 200, restart_every: int = 100, concurrency: int = 2,
                 max_scrolls: int = 20, settle_s: float = 0.25, max_images: int = 1_000, max_links: int = 20_000,
                 trap: str = DEAD_PROXY):
        self.fetch, self.executable, self.max_bytes = fetch, executable, max_bytes
        self.timeout_s, self.max_requests, self.restart_every = timeout_s, max_requests, restart_every
        self.max_scrolls, self.settle_s, self.max_images, self.max_links = max_scrolls, settle_s, max_images, max_links
        self.trap = trap
        self.stats = {"pages_rendered": 0, "render_errors": 0, "render_requests": 0, "render_refused": 0,
                      "render_launches": 0, "render_contexts": 0}  # contexts: one per host per browser launch
        self._concurrency = max(1, concurrency)
        self._stats_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="unmark-render-fetch")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="unmark-render", daemon=True)
        self._thread.start()
        self._pw = self._browser = None
        self._contexts: dict[str, object] = {}
        self._since_launch = 0
        self._active = 0
        self._busy: dict[str, int] = {}  # pages rendering now, by host (a busy context is never evicted)
        self._call(self._start(), 60)

    # --- called from any thread ------------------------------------------------------

    def render(self, url: str, html: bytes, content_type: str) -> Rendered:
        """Images and links of ``url`` as the browser shows it, the page's document being
        ``html`` (already fetched). Never raises: a failed render is ``Rendered.error``."""
        out = Rendered()
        try:
            self._call(self._render(_Page(url, html, content_type or "text/html", out)), None)  # bounded inside
        except Exception as exc:  # noqa: BLE001 - the static result of the page stands
            out.error = exc if isinstance(exc, RenderError) else RenderError(url, "render", f"{type(exc).__name__}: {exc}")
        with self._stats_lock:  # page workers render at once
            self.stats["render_errors" if out.error else "pages_rendered"] += 1
            self.stats["render_requests"] += out.requests
            self.stats["render_refused"] += len(out.failures)
        return out

    def close(self) -> None:
        try:
            self._call(self._stop(), 30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._pool.shutdown(wait=False, cancel_futures=True)

    def kill_browser(self) -> None:
        """Kill the browser process (tests: the next page must relaunch it)."""
        self._call(self._kill(), 30)

    def _call(self, coro, timeout: float | None):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # --- the event-loop thread ---------------------------------------------------------

    async def _start(self) -> None:
        from playwright.async_api import async_playwright

        self._sem = asyncio.Semaphore(self._concurrency)
        self._idle = asyncio.Condition()
        self._pw = await async_playwright().start()

    async def _stop(self) -> None:
        await self._close_browser()
        if self._pw is not None:
            await self._pw.stop()
            self._pw = None

    async def _launch(self) -> None:
        self._browser = await self._pw.chromium.launch(
            executable_path=self.executable, headless=True, proxy={"server": self.trap},
            args=["--proxy-bypass-list=<-loopback>", *QUIET_ARGS])
        self._browser.on("disconnected", self._forget)
        self._since_launch = 0
        self.stats["render_launches"] += 1

    def _forget(self, browser=None) -> None:
        """The browser is gone (a crash, or closed): the next page launches one. A late
        ``disconnected`` of a browser already replaced leaves the new one alone."""
        if browser is None or browser is self._browser:
            self._browser = None
            self._contexts = {}

    async def _close_browser(self) -> None:
        browser, self._browser, self._contexts = self._browser, None, {}
        if browser is not None:
            try:
                await browser.close()
            except Exception:  # noqa: BLE001 - already gone
                pass

    async def _kill(self) -> None:
        import os
        import signal

        if self._browser is None:
            return
        cdp = await self._browser.new_browser_cdp_session()
        info = await cdp.send("SystemInfo.getProcessInfo")
        for proc in info["processInfo"]:
            if proc["type"] == "browser":
                os.kill(proc["id"], signal.SIGKILL)
        for _ in range(100):
            if self._browser is None:
                return
            await asyncio.sleep(0.05)

    async def _context(self, host: str):
        """The browser (launched or restarted as due) and this host's context in it."""
        async with self._idle:
            if self._browser is not None and self._since_launch >= self.restart_every:
                await self._idle.wait_for(lambda: self._active == 0)
                if self._since_launch >= self.restart_every:
                    await self._close_browser()
            if self._browser is None or not self._browser.is_connected():
                self._forget()
                await self._launch()
            self._since_launch += 1
            self._active += 1
            self._busy[host] = self._busy.get(host, 0) + 1
            ctx = self._contexts.get(host)
            if ctx is None:
                idle = [h for h in self._contexts if not self._busy.get(h)]
                if len(self._contexts) >= 8 and idle:  # the oldest idle host's context goes
                    asyncio.ensure_future(self._contexts.pop(idle[0]).close())
                try:
                    ctx = await self._browser.new_context(service_workers="block", java_script_enabled=True,
                                                          viewport={"width": 1280, "height": 900})
                except BaseException:  # the page never starts: it holds no slot of the browser
                    self._release(host)
                    raise
                ctx.set_default_timeout(self.timeout_s * 1000)
                self._contexts[host] = ctx
                self.stats["render_contexts"] += 1
            return ctx

    def _release(self, host: str) -> None:
        """A page of ``host`` ended (call with ``_idle`` held)."""
        self._active -= 1
        self._busy[host] -= 1
        if not self._busy[host]:
            del self._busy[host]
        self._idle.notify_all()

    async def _render(self, page: _Page) -> None:
        """One page, once a browser slot is free: the wait for a slot is not the page's time
        (page workers queue here), and everything after it is bounded."""
        async with self._sem:
            try:
                await asyncio.wait_for(self._render_in_slot(page), self.timeout_s + 60)  # launch, load, close
            except TimeoutError as exc:
                raise RenderError(page.url, "render-timeout", f"over {self.timeout_s}s") from exc

    async def _render_in_slot(self, page: _Page) -> None:
        host = host_key(page.url)
        ctx = await self._context(host)
        tab = None
        try:
            tab = await ctx.new_page()
            await tab.route("**/*", lambda route: self._answer(route, page))
            await tab.route_web_socket("**/*", lambda ws: self._refuse_socket(ws, page))
            await asyncio.wait_for(self._load_and_read(tab, page), self.timeout_s)
        finally:
            if tab is not None:
                try:
                    await asyncio.wait_for(tab.close(), 10)
                except Exception:  # noqa: BLE001 - a crashed browser took it along
                    pass
            async with self._idle:
                self._release(host)

    async def _load_and_read(self, tab, page: _Page) -> None:
        from playwright.async_api import Error as PlaywrightError
        from playwright.async_api import TimeoutError as LoadTimeout

        deadline = time.monotonic() + self.timeout_s * 0.8
        try:
            await tab.goto(page.url, wait_until="load", timeout=self.timeout_s * 600)
        except LoadTimeout:
            pass  # a page still loading after 60 % of its time: read what it shows
        except PlaywrightError as exc:
            raise RenderError(page.url, "render-load", str(exc).splitlines()[0][:300]) from exc
        await self._settle(page, deadline)
        stable = 0  # looks at the bottom in a row that saw nothing grow or load
        for _ in range(self.max_scrolls):
            if time.monotonic() > deadline:
                break
            at_bottom, height = await tab.evaluate(SCROLL_JS)
            if not at_bottom:
                stable = 0
                await self._settle(page, deadline, quiet=0.05)
                continue
            activity = page.out.requests + len(page.requested)
            await self._settle(page, deadline)
            grown = await tab.evaluate("(document.scrollingElement || document.documentElement).scrollHeight")
            stable = stable + 1 if grown == height and page.out.requests + len(page.requested) == activity else 0
            if stable >= 2:  # twice: an observer's callback may come a frame after the first look
                break
        dom = await tab.evaluate(COLLECT_JS, [self.max_images, self.max_links])
        self._collect(page, dom)

    async def _settle(self, page: _Page, deadline: float, quiet: float | None = None) -> None:
        """Wait until no request is in flight and none started for ``quiet`` seconds."""
        quiet = self.settle_s if quiet is None else quiet
        while time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            if page.inflight == 0 and time.monotonic() - page.last_request >= quiet:
                return

    async def _answer(self, route, page: _Page) -> None:
        req = route.request
        page.last_request = time.monotonic()
        url, kind = req.url, req.resource_type
        if kind == "document" and not page.document_served and req.frame.parent_frame is None:
            page.document_served = True
            await route.fulfill(status=200, body=page.html, headers={"content-type": page.content_type})
            return
        norm = normalize_url(url)
        if kind == "image" and norm:
            if len(page.requested) < self.max_images:
                page.requested.setdefault(norm, None)
            await route.fulfill(status=200, body=PIXEL, headers={"content-type": "image/gif"})
            return
        if kind in SKIPPED:
            await route.abort("blockedbyclient")
            return
        refusal = None
        if norm is None:
            refusal = FetchError(url[:300], "bad-url", "not an http(s) URL")
        elif req.method != "GET":
            refusal = FetchError(norm, "method", f"{req.method} requests are not made")
        elif page.out.requests >= self.max_requests:
            refusal = FetchError(norm, "render-cap", f"over {self.max_requests} requests for {page.url}")
        if refusal is not None:
            page.out.failures.append((refusal.url, refusal))
            await route.abort("blockedbyclient")
            return
        await self._fetch_for(route, page, norm)

    async def _refuse_socket(self, ws, page: _Page) -> None:
        """A web socket is never opened: it is closed inside the browser, and a failure row says so."""
        page.out.failures.append((ws.url[:2000], FetchError(ws.url[:300], "websocket", "web sockets are not opened")))
        await ws.close(code=1008, reason="not opened by the crawler")

    async def _fetch_for(self, route, page: _Page, url: str) -> None:
        page.out.requests += 1
        page.inflight += 1
        try:
            resp = await asyncio.get_running_loop().run_in_executor(self._pool, self.fetch, url, self.max_bytes)
        except Exception as exc:  # noqa: BLE001 - refused or failed: a failure row and an abort
            page.out.failures.append((url, exc))
            await route.abort("blockedbyclient")
            return
        finally:
            page.inflight -= 1
            page.last_request = time.monotonic()
        if resp.status >= 400:
            page.out.failures.append((url, FetchError(url, f"http-{resp.status}", status=resp.status)))
        headers = {"content-type": resp.headers.get("Content-Type") or "application/octet-stream"}
        await route.fulfill(status=resp.status, body=resp.body, headers=headers)

    def _collect(self, page: _Page, dom: dict) -> None:
        out = page.out
        refs = dom_refs(dom, self.max_images)
        listed = {r.url for r in refs} | {u for r in refs for u in r.also}
        extra = [ImageRef(u, None, "render:request") for u in page.requested if u not in listed]
        out.images = (refs + extra)[: self.max_images]
        base = dom.get("base") or page.url
        out.links = [u for u in (normalize_url(urljoin(base, h)) for h in dom.get("links", [])) if u]

