"""SSRF guard for the scraper: resolve a host ourselves, refuse anything but global unicast
addresses, and connect to exactly the address that was checked.

URLs come from hostile pages (``<img src>``, ``<base href>``, redirects), so the check runs after
DNS and at connect time: the scraper's HTTP client (``pipeline.scrape.client``) calls
``AddressGuard.check_host`` as each request starts (resolving, or taking the cached answer) and has
libcurl connect to exactly the address that was checked, while the Host header and TLS SNI keep
the name; its open-socket callback refuses any other address. A name that re-resolves to something
else between check and connect (DNS rebinding) cannot slip through, because libcurl never
resolves the name itself.

``allow_private_hosts`` permits loopback only (127.0.0.0/8, ::1), for tests and the demo; every
other private, link-local, multicast or reserved range stays refused.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

Resolver = Callable[[str, int], list[str]]
ALLOWED_SCHEMES = ("http", "https")


class HostRefused(ValueError):
    """A URL whose host may not be contacted; ``reason`` is ``refused-address`` or ``bad-url``.

    A ValueError on purpose: urllib3 and requests wrap OSErrors into retryable connection errors,
    and a refusal must never be retried or reach a socket."""

    def __init__(self, subject: str, reason: str, detail: str):
        super().__init__(f"{subject}: {detail}")
        self.subject = subject
        self.reason = reason


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, by the system resolver."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def address_allowed(address: str, allow_loopback: bool = False) -> bool:
    """True for global unicast addresses (and loopback when ``allow_loopback``).

    IPv4-mapped and 6to4 IPv6 addresses are judged by the IPv4 address they carry."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        inner = ip.ipv4_mapped or ip.sixtofour
        if inner is not None:
            ip = inner
    if ip.is_loopback:
        return allow_loopback
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_link_local or ip.is_private)


class AddressGuard:
    """Resolves hosts, refuses disallowed addresses and opens sockets to the checked address.

    ``resolver(host, port) -> [address, ...]`` is injectable so a test can make a name "resolve"
    to 10.0.0.1 without real DNS. Answers are cached for ``ttl_s``; a name with any refused
    address is refused as a whole."""

    def __init__(self, allow_private_hosts: bool = False, resolver: Resolver | None = None, ttl_s: float = 300.0):
        self.allow_loopback = allow_private_hosts
        self.resolver = resolver or system_resolver
        self.ttl_s = ttl_s
        self._cache: dict[tuple[str, int], tuple[float, str]] = {}
        self._lock = threading.Lock()

    def check_url(self, url: str) -> str:
        """The checked address to connect to for ``url``; raises ``HostRefused``."""
        parts = urlsplit(url)
        if parts.scheme not in ALLOWED_SCHEMES:
            raise HostRefused(url, "bad-url", f"scheme {parts.scheme!r} is not fetched")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise HostRefused(url, "bad-url", str(exc)) from exc
        if not parts.hostname:
            raise HostRefused(url, "bad-url", "no host")
        return self.check_host(parts.hostname, port)

    def check_host(self, host: str, port: int) -> str:
        host = host.strip("[]").rstrip(".").lower()
        key = (host, port)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit and hit[0] > now:
            return hit[1]
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
            addresses = [host]
        except ValueError:
            try:
                addresses = self.resolver(host, port)
            except OSError as exc:
                raise HostRefused(host, "dns", f"cannot resolve {host}: {exc}") from exc
        if not addresses:
            raise HostRefused(host, "dns", f"{host} resolved to no address")
        bad = [a for a in addresses if not address_allowed(a, self.allow_loopback)]
        if bad:
            what = "loopback and global" if self.allow_loopback else "global"
            raise HostRefused(host, "refused-address", f"{host} resolves to {bad[0]}, not a {what} address")
        with self._lock:
            self._cache[key] = (now + self.ttl_s, addresses[0])
        return addresses[0]
