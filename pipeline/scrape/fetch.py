"""The scraper's HTTP stage: polite, bounded, SSRF-safe GETs.

Each GET goes through ``pipeline.scrape.client`` (libcurl), whose connections go only to the
address the SSRF guard checked (``pipeline.scrape.ssrf``); ``Fetcher.session`` holds what every
request carries (headers, ``verify``). Redirects followed by
hand (at most ``max_redirects``) with the address check and the caller's robots check on every
hop; retries with exponential backoff on 429/5xx and connection errors, honouring Retry-After;
connect/read timeouts plus a wall-clock deadline per download; bodies streamed with a byte cap
that aborts as soon as it is crossed; per-host concurrency and minimum delay between requests.
"""

from __future__ import annotations

import contextlib
import email.utils
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

from pipeline.scrape.client import BadTarget, Client, Deadline, ProtocolError, Proxies, TLSFailure, TooLarge
from pipeline.scrape.ssrf import AddressGuard, HostRefused, Resolver

if TYPE_CHECKING:
    from pipeline.config import ScrapeSettings

REDIRECT_CODES = (301, 302, 303, 307, 308)
RETRY_CODES = (429, 500, 502, 503, 504)


class FetchError(Exception):
    """A URL that could not be fetched; ``reason`` is a short word (``timeout``, ``too-large``,
    ``refused-address``, ``http-404`` …) used as the failure row's error class."""

    def __init__(self, url: str, reason: str, detail: str = "", status: int | None = None):
        super().__init__(f"{url}: {reason}" + (f" ({detail})" if detail else ""))
        self.url = url
        self.reason = reason
        self.status = status


@dataclass
class Response:
    url: str  # after redirects
    status: int
    headers: Mapping[str, str]  # case-insensitive (urllib3's HTTPHeaderDict)
    body: bytes = b""
    redirects: list[str] = field(default_factory=list)
    attempts: int = 1
    robots_tags: list[str] = field(default_factory=list)  # each X-Robots-Tag header, unmerged
    http_version: str = "1.1"  # of the last exchange ("2" over h2)


def host_key(url: str) -> str:
    return (urlsplit(url).netloc or "").lower()


def retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass
class TransportOptions:
    """What every request carries: headers, and TLS verification (``True``: the certifi bundle; a
    CA file or folder path; ``False``: none)."""

    headers: dict[str, str]
    verify: bool | str = True


class HostGate:
    """Per-host politeness: at most ``concurrency`` requests in flight per host and at least
    ``delay_s`` (or the host's robots crawl-delay) between the starts of two requests."""

    def __init__(self, concurrency: int, delay_s: float):
        self.concurrency = max(1, concurrency)
        self.delay_s = delay_s
        self._lock = threading.Lock()
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self._next: dict[str, float] = {}
        self._delay: dict[str, float] = {}

    def set_delay(self, host: str, delay_s: float) -> None:
        with self._lock:
            self._delay[host] = max(self.delay_s, delay_s)

    def defer(self, host: str, seconds: float) -> None:
        """Hold every request to ``host`` back for ``seconds`` (a 429's Retry-After)."""
        with self._lock:
            self._next[host] = max(self._next.get(host, 0.0), time.monotonic() + seconds)

    @contextlib.contextmanager
    def slot(self, host: str) -> Iterator[None]:
        with self._lock:
            sem = self._slots.setdefault(host, threading.BoundedSemaphore(self.concurrency))
        with sem:
            while True:
                with self._lock:
                    now = time.monotonic()
                    start = self._next.get(host, 0.0)
                    if start <= now:
                        self._next[host] = now + self._delay.get(host, self.delay_s)
                        break
                time.sleep(start - now)
            yield


class Fetcher:
    """GETs for the scraper. Thread-safe; one per scrape run."""

    def __init__(self, settings: ScrapeSettings, allow_private_hosts: bool = False, resolver: Resolver | None = None,
                 dns_cache_s: float = 300.0, proxies: Proxies | None = None):
        self.settings = settings
        self.guard = AddressGuard(allow_private_hosts, resolver, ttl_s=dns_cache_s)
        self.gate = HostGate(settings.per_host_concurrency, settings.per_host_delay_s)
        # Accept-Encoding is the client's own (what libcurl decodes); Connection is libcurl's
        self.session = TransportOptions(headers={"User-Agent": settings.user_agent, "Accept": "*/*"})
        self.client = Client(self.guard, settings.connect_timeout_s, settings.read_timeout_s,
                             verify=lambda: self.session.verify, proxies=proxies)

    def close(self) -> None:
        self.client.close()

    def get(
        self,
        url: str,
        max_bytes: int,
        headers: dict[str, str] | None = None,
        allow: Callable[[str], bool] | None = None,
    ) -> Response:
        """GET ``url`` following redirects by hand. ``allow(url)`` (robots) is asked on every hop.

        Returns the final response (any status, body only for 2xx); raises ``FetchError``."""
        redirects: list[str] = []
        for _ in range(self.settings.max_redirects + 1):
            try:
                self.guard.check_url(url)
            except HostRefused as exc:
                raise FetchError(url, exc.reason, str(exc)) from exc
            if allow is not None and not allow(url):
                raise FetchError(url, "robots", "disallowed by robots.txt")
            resp = self._with_retries(url, headers, max_bytes)
            location = resp.headers.get("Location")
            if resp.status in REDIRECT_CODES and location:
                redirects.append(url)
                url = urljoin(url, location.strip())
                continue
            resp.redirects = redirects
            return resp
        raise FetchError(url, "too-many-redirects", f"more than {self.settings.max_redirects} redirects")

    def _with_retries(self, url: str, headers: dict[str, str] | None, max_bytes: int) -> Response:
        host = host_key(url)
        s = self.settings
        attempt = 0
        while True:
            attempt += 1
            error: FetchError | None = None
            resp: Response | None = None
            with self.gate.slot(host):
                try:
                    resp = self._once(url, headers, max_bytes)
                except FetchError as exc:
                    if exc.reason not in ("timeout", "connection"):
                        raise
                    error = exc
            if resp is not None:
                resp.attempts = attempt
                if resp.status not in RETRY_CODES:
                    return resp
            if attempt > s.max_retries:
                if resp is not None:
                    return resp
                assert error is not None
                raise error
            wait = retry_after_s(resp.headers.get("Retry-After")) if resp is not None else None
            if wait is not None:
                wait = min(wait, s.max_backoff_s)
                self.gate.defer(host, wait)  # the whole host slows down, not just this URL
            else:
                wait = min(s.retry_backoff_s * 2 ** (attempt - 1) * random.uniform(0.8, 1.2), s.max_backoff_s)
            time.sleep(wait)

    def _once(self, url: str, headers: dict[str, str] | None, max_bytes: int) -> Response:
        s = self.settings
        sent = dict(self.session.headers)
        if headers:
            sent.update(headers)
        try:
            r = self.client.get(url, sent, max_bytes, time.monotonic() + s.download_deadline_s)
        except HostRefused as exc:  # raised at connect time by the guard
            raise FetchError(url, exc.reason, str(exc)) from exc
        except BadTarget as exc:
            raise FetchError(url, "bad-url", str(exc)) from exc
        except TooLarge as exc:
            raise FetchError(url, "too-large", str(exc), exc.status) from exc
        except Deadline as exc:
            raise FetchError(url, "deadline", f"download took longer than {s.download_deadline_s}s") from exc
        except TimeoutError as exc:
            raise FetchError(url, "timeout", str(exc) or "timed out") from exc
        except TLSFailure as exc:  # a bad certificate does not get better on retry
            raise FetchError(url, "tls", str(exc)) from exc
        except (ProtocolError, OSError) as exc:
            raise FetchError(url, "connection", f"{type(exc).__name__}: {exc}") from exc
        return Response(url=url, status=r.status, headers=r.headers, body=r.body,
                        robots_tags=r.headers.getlist("X-Robots-Tag"), http_version=r.http_version)
