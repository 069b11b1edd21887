"""Opt-outs the scraper honours: robots.txt (with crawl-delay), ``X-Robots-Tag`` headers and
``<meta name="robots">``.

robots.txt is fetched once per origin through the scraper's own (SSRF-guarded) fetcher and parsed
with ``urllib.robotparser``. As Google does: 401/403 means "disallow all", any other 4xx means
"no rules", and a server error or a failed fetch means "disallow all" for this run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit
from urllib.robotparser import RobotFileParser

# Directives that opt a page's or an image's content out of our use.
OPT_OUT = ("noai", "noimageai", "noindex", "noimageindex", "none")
ROBOTS_MAX_BYTES = 512 * 1024


def agent_token(user_agent: str) -> str:
    """``UnmarkBot/0.1 (+url)`` -> ``unmarkbot``: the name robots rules are matched against."""
    return user_agent.split("/", 1)[0].split()[0].strip().lower()


def parse_directives(values: Iterable[str], token: str) -> set[str]:
    """Directives from ``X-Robots-Tag`` header values (or meta contents) that apply to us.

    A value may be ``noai, noimageai`` (everyone) or ``otherbot: noindex`` (that bot only);
    ``unavailable_after: <date>`` and other ``name: value`` pairs are ignored."""
    out: set[str] = set()
    for value in values:
        scope: str | None = None
        for part in value.split(","):
            part = part.strip().lower()
            if not part:
                continue
            if ":" in part:
                head, rest = (p.strip() for p in part.split(":", 1))
                if head in ("unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"):
                    continue
                scope, part = head, rest
                if not part:
                    continue
            if scope is None or scope == token:
                out.add(part)
    return out


def opt_out_of(directives: set[str]) -> str | None:
    """The first opt-out directive present (``noai`` … ``none``), or None."""
    return next((d for d in OPT_OUT if d in directives), None)


class RobotsPolicy:
    """robots.txt rules per origin, fetched on first use.

    ``fetch_robots(url) -> (status, body)`` does the network part (the scraper's fetcher); it may
    raise, which counts as "disallow all". ``on_error(url, exc)`` hears about such failures."""

    def __init__(
        self,
        user_agent: str,
        fetch_robots: Callable[[str], tuple[int, bytes]],
        on_error: Callable[[str, BaseException], None] | None = None,
    ):
        self.token = agent_token(user_agent)
        self._fetch = fetch_robots
        self._on_error = on_error
        self._parsers: dict[str, RobotFileParser] = {}
        self._delays: dict[str, float | None] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    @staticmethod
    def origin(url: str) -> str:
        p = urlsplit(url)
        return f"{p.scheme}://{p.netloc}".lower()

    def parser(self, url: str) -> RobotFileParser:
        return self._parser_of(self.origin(url))

    def _parser_of(self, origin: str) -> RobotFileParser:
        rp = self._parsers.get(origin)  # loaded already: no locks (dict reads are atomic)
        if rp is not None:
            return rp
        with self._guard:
            lock = self._locks.setdefault(origin, threading.Lock())
        with lock:
            rp = self._parsers.get(origin)
            if rp is None:
                rp, delay = self._load(origin + "/robots.txt")
                if delay is None:
                    rate = rp.request_rate(self.token)
                    if rate is not None and rate.requests:
                        delay = rate.seconds / rate.requests
                self._delays[origin] = delay  # before the parser: lock-free readers find both
                self._parsers[origin] = rp
        return rp

    def _load(self, robots_url: str) -> tuple[RobotFileParser, float | None]:
        rp = RobotFileParser(robots_url)
        delay = None
        try:
            status, body = self._fetch(robots_url)
        except Exception as exc:  # noqa: BLE001 - any failure to read robots.txt: stay out for this run
            if self._on_error:
                self._on_error(robots_url, exc)
            rp.disallow_all = True
            return rp, None
        if status in (401, 403) or status >= 500:
            rp.disallow_all = True
        elif status >= 400:
            rp.allow_all = True
        else:
            lines = body.decode("utf-8", "replace").splitlines()
            rp.parse(lines)
            delay = crawl_delay_for(lines, self.token)
        rp.modified()  # can_fetch() refuses everything until the parser has a timestamp
        return rp, delay

    def allowed(self, url: str) -> bool:
        return self.parser(url).can_fetch(self.token, url)

    def crawl_delay(self, url: str) -> float | None:
        """Seconds between requests asked by ``Crawl-delay`` (decimals allowed) or ``Request-rate``."""
        return self._delay_of(self.origin(url))

    def check(self, url: str) -> tuple[bool, float | None]:
        """``(allowed(url), crawl_delay(url))`` for the price of one look-up (the crawl asks both
        before every request)."""
        origin = self.origin(url)
        return self._parser_of(origin).can_fetch(self.token, url), self._delay_of(origin)

    def _delay_of(self, origin: str) -> float | None:
        self._parser_of(origin)
        return self._delays.get(origin)


def crawl_delay_for(lines: list[str], token: str) -> float | None:
    """The Crawl-delay of the group naming ``token``, else of ``*``. (urllib.robotparser reads only
    whole seconds; sites write ``Crawl-delay: 0.5`` too.)"""
    delays: dict[str, float] = {}
    named: list[str] = []  # every agent some group names, in order
    agents: list[str] = []
    in_rules = False
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        if ":" not in line:
            continue
        key, value = (p.strip() for p in line.split(":", 1))
        key = key.lower()
        if key == "user-agent":
            if in_rules:
                agents, in_rules = [], False
            agents.append(value.split("/", 1)[0].lower())
            named.append(agents[-1])
        else:
            in_rules = True
            if key == "crawl-delay":
                try:
                    seconds = float(value)
                except ValueError:
                    continue
                for agent in agents:
                    delays.setdefault(agent, seconds)
    for agent in named:
        if agent != "*" and agent and agent in token:
            return delays.get(agent)  # our own group decides, even by saying nothing
    return delays.get("*")
