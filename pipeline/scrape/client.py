"""The scraper's HTTP client: libcurl (through pycurl) for one GET at a time on each thread, with
the limits a crawler needs kept in Python where libcurl has no exact knob.

* Addresses: the caller's ``AddressGuard`` resolves and checks the host when the request starts
  (at connect time: a cached answer or a fresh one, never libcurl's DNS); libcurl is told to
  connect to that address (``CONNECT_TO``, the name stays in the Host header, the TLS SNI and the
  certificate check), and the open-socket callback refuses any other address before a socket
  exists. A kept-alive connection is reused only for the same name, port and checked address.
* Proxies: the standard variables (``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``
  and their lower-case forms), read once per client. Through a proxy the only socket is the
  proxy's, and every request, plain http too, goes through a CONNECT tunnel to the checked
  address (``HTTPPROXYTUNNEL``, with ``CONNECT_TO``), so the proxy never resolves a site's
  name. A proxy that refuses CONNECT to a port (many allow only 443) refuses those requests.
* Bodies: decoded by libcurl (gzip, deflate, brotli; what ``Accept-Encoding`` asks for) and
  capped on the decoded bytes, so a compression bomb stops at the cap; a declared
  ``Content-Length`` over the cap is refused before the body. Bodies of non-2xx answers are not
  read (the connection is dropped instead unless there was none).
* Time: ``connect_timeout`` for the connection, ``read_timeout`` for silence (libcurl calls back
  at least once a second, so silence is noticed within about a second of it), and the caller's
  deadline for the whole exchange.
* Headers: at most 100 lines, folded lines joined, conflicting ``Content-Length`` refused; every
  ``X-Robots-Tag`` kept (``HTTPHeaderDict``).

Errors: ``BadTarget``, ``HostRefused``, ``TimeoutError``, ``Deadline``, ``TooLarge``,
``TLSFailure`` and ``ProtocolError`` (the rest); ``pipeline.scrape.fetch`` maps them to failure
reasons.
"""

from __future__ import annotations

import ipaddress
import os
import re
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit
from urllib.request import getproxies_environment, proxy_bypass_environment

import pycurl
from urllib3 import HTTPHeaderDict
from urllib3.exceptions import LocationValueError
from urllib3.util import parse_url

from pipeline.scrape.ssrf import AddressGuard, HostRefused

MAX_HEADERS = 100
KEEP_CONNECTIONS = 16  # kept-alive connections per thread
ACCEPT_ENCODING = "gzip, deflate, br"
_CTL_HEADER = re.compile(r"[\r\n\x00]")
_TLS_CODES = {pycurl.E_SSL_CONNECT_ERROR, pycurl.E_PEER_FAILED_VERIFICATION, pycurl.E_SSL_CERTPROBLEM,
              pycurl.E_SSL_CACERT_BADFILE, pycurl.E_SSL_CIPHER, pycurl.E_SSL_ISSUER_ERROR,
              pycurl.E_SSL_PINNEDPUBKEYNOTMATCH, pycurl.E_SSL_INVALIDCERTSTATUS}


class ProtocolError(Exception):
    """The server's bytes are not an HTTP response we accept, or the exchange broke off."""


class TooLarge(Exception):
    """The body (declared, or decoded so far) passed the caller's cap; ``status`` is the answer's."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class Deadline(Exception):
    """The exchange ran past the caller's deadline."""


class TLSFailure(Exception):
    """The TLS handshake or the certificate check failed (not worth a retry)."""


class BadTarget(ValueError):
    """A URL or header that cannot be requested (scheme, host, characters)."""


@dataclass
class Reply:
    status: int
    headers: HTTPHeaderDict
    body: bytes
    http_version: str = "1.1"  # as libcurl spoke it: "1.0", "1.1", "2" (where a TLS server offers h2)


_VERSIONS = {pycurl.CURL_HTTP_VERSION_1_0: "1.0", pycurl.CURL_HTTP_VERSION_1_1: "1.1",
             pycurl.CURL_HTTP_VERSION_2_0: "2"}


def target_of(url: str) -> tuple[str, str, int, str]:
    """``(url to send, host, port, scheme)``: percent-encoded where a URL may not hold raw
    characters, the host in IDNA form, no fragment; raises ``BadTarget``."""
    try:
        u = parse_url(url)
    except LocationValueError as exc:
        raise BadTarget(str(exc)) from exc
    if u.scheme not in ("http", "https") or not u.host:
        raise BadTarget(f"not an http(s) URL: {url!r}")
    port = u.port or (443 if u.scheme == "https" else 80)
    sent = u._replace(fragment=None).url
    if any(ord(ch) < 0x21 or ord(ch) > 0x7e for ch in sent):
        raise BadTarget(f"characters that cannot be sent in {url!r}")
    return sent, u.host.strip("[]"), port, u.scheme


class Proxies:
    """The proxy for a URL from the standard environment variables (read once), or None;
    ``table`` (``{"http": url, "https": url, "all": url, "no": hosts}``) replaces them."""

    def __init__(self, table: dict[str, str] | None = None):
        self.table = getproxies_environment() if table is None else dict(table)
        self._addresses: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def for_url(self, scheme: str, host: str, port: int) -> str | None:
        proxy = self.table.get(scheme) or self.table.get("all")
        if not proxy or proxy_bypass_environment(f"{host}:{port}", self.table):
            return None
        return proxy if "://" in proxy else f"http://{proxy}"

    def addresses(self, proxy: str) -> set[str]:
        """The addresses libcurl may connect to for ``proxy`` (its name resolved here)."""
        with self._lock:
            hit = self._addresses.get(proxy)
        if hit is not None:
            return hit
        parts = urlsplit(proxy)
        host = (parts.hostname or "").strip("[]")
        try:
            infos = socket.getaddrinfo(host, parts.port or 1080, type=socket.SOCK_STREAM)
            found = {_canonical(info[4][0]) for info in infos}
        except OSError:
            found = set()  # libcurl fails to resolve it too: a connection error
        with self._lock:
            self._addresses[proxy] = found
        return found


def _canonical(address: str) -> str:
    try:
        return str(ipaddress.ip_address(address.split("%", 1)[0]))
    except ValueError:
        return address


class _Exchange:
    """The state of one request, fed by libcurl's callbacks (which must not raise)."""

    def __init__(self, url: str, max_bytes: int, deadline: float, read_timeout: float, allowed: set[str]):
        self.url, self.max_bytes, self.deadline, self.read_timeout = url, max_bytes, deadline, read_timeout
        self.allowed = allowed
        self.status = 0
        self.headers = HTTPHeaderDict()
        self.count = 0
        self.last_name: str | None = None
        self.complete = False  # the final header block ended
        self.skip_body = False  # a non-2xx answer: its body is not wanted
        self.body = bytearray()
        self.failure: BaseException | None = None
        self.last_io = time.monotonic()

    def fail(self, exc: BaseException) -> int:
        if self.failure is None:
            self.failure = exc
        return -1

    def opensocket(self, purpose: int, address: tuple) -> socket.socket | int:
        family, socktype, protocol, addr = address
        if _canonical(addr[0]) not in self.allowed:
            self.fail(HostRefused(self.url, "refused-address",
                                  f"a connection to {addr[0]} was asked for, not to the checked address"))
            return pycurl.SOCKET_BAD
        return socket.socket(family, socktype, protocol)

    def header(self, raw: bytes) -> int | None:
        self.last_io = time.monotonic()
        if raw.startswith(b"HTTP/"):  # a status line: a new header block (after 1xx, or a CONNECT)
            parts = raw.split(None, 2)
            if len(parts) < 2 or not parts[1].isdigit():
                return self.fail(ProtocolError(f"bad status line {raw[:80]!r}"))
            self.status, self.headers, self.count, self.last_name = int(parts[1]), HTTPHeaderDict(), 0, None
            self.complete = self.skip_body = False
            return None
        if raw in (b"\r\n", b"\n"):
            if not 100 <= self.status < 200 or self.status == 101:
                return self._headers_done()
            return None
        self.count += 1
        if self.count > MAX_HEADERS:
            return self.fail(ProtocolError(f"more than {MAX_HEADERS} headers"))
        text = raw.decode("latin-1").rstrip("\r\n")
        if text[:1] in (" ", "\t") and self.last_name is not None:  # obsolete line folding
            values = self.headers.getlist(self.last_name)
            values[-1] = f"{values[-1]} {text.strip()}"
            self.headers.discard(self.last_name)
            for v in values:
                self.headers.add(self.last_name, v)
            return None
        name, sep, value = text.partition(":")
        if sep and name and name == name.strip():
            self.headers.add(name, value.strip())
            self.last_name = name
        return None

    def _headers_done(self) -> int | None:
        self.complete = True
        if not 200 <= self.status < 300:
            self.skip_body = True
            return None
        declared = self.headers.get("Content-Length")
        if declared is not None:
            values = {v.strip() for v in declared.split(",")}
            if len(values) != 1 or not next(iter(values)).isdigit():
                return self.fail(ProtocolError(f"bad Content-Length {declared!r}"))
            if int(values.pop()) > self.max_bytes:
                return self.fail(TooLarge(f"Content-Length {declared} > cap {self.max_bytes}", self.status))
        return None

    def write(self, data: bytes) -> int | None:
        now = self.last_io = time.monotonic()
        if self.skip_body:
            return -1  # stops the transfer; the answer is complete without its body
        if len(self.body) + len(data) > self.max_bytes:
            return self.fail(TooLarge(f"body passed the cap of {self.max_bytes} bytes", self.status))
        self.body += data
        if now > self.deadline:
            return self.fail(Deadline("download ran past its deadline"))
        return None

    def progress(self, dltotal: int, dlnow: int, ultotal: int, ulnow: int) -> int:
        now = time.monotonic()
        if now > self.deadline:
            self.fail(Deadline("download ran past its deadline") if self.complete else TimeoutError("timed out"))
            return 1
        if now - self.last_io > self.read_timeout:
            self.fail(TimeoutError(f"read timed out after {self.read_timeout}s"))
            return 1
        return 0


class _Handle:
    """One thread's libcurl easy handle (its connections stay alive between requests), and the
    HTTP/1 connections it keeps, by what they were opened for, to be checked before reuse."""

    def __init__(self):
        self.curl = c = pycurl.Curl()
        self.exchange: _Exchange | None = None
        self.kept: dict[tuple, tuple[int, tuple, tuple]] = {}  # key -> (fd, local, peer)
        c.setopt(pycurl.NOSIGNAL, 1)
        c.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        c.setopt(pycurl.REDIR_PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        c.setopt(pycurl.FOLLOWLOCATION, 0)  # redirects are the caller's, each hop checked
        c.setopt(pycurl.ACCEPT_ENCODING, ACCEPT_ENCODING)
        c.setopt(pycurl.MAXCONNECTS, KEEP_CONNECTIONS)
        c.setopt(pycurl.NOPROGRESS, 0)
        c.setopt(pycurl.OPENSOCKETFUNCTION, lambda purpose, address: self.exchange.opensocket(purpose, address))
        c.setopt(pycurl.HEADERFUNCTION, lambda raw: self.exchange.header(raw))
        c.setopt(pycurl.WRITEFUNCTION, lambda data: self.exchange.write(data))
        c.setopt(pycurl.XFERINFOFUNCTION, lambda *a: self.exchange.progress(*a))

    def check_kept(self, key: tuple) -> None:
        """Before a request for ``key``: a kept HTTP/1 connection on which the server wrote
        unasked (the 408 of an idle timeout) or closed is shut down, so that libcurl connects
        afresh instead of taking those bytes for the answer."""
        known = self.kept.pop(key, None)
        if known is None:
            return
        fd, local, peer = known
        try:
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            return  # libcurl closed it meanwhile
        with sock:
            try:
                if (sock.getsockname(), sock.getpeername()) != (local, peer):
                    return  # the number is another socket's now
                if select.select([sock], [], [], 0)[0]:
                    sock.shutdown(socket.SHUT_RDWR)
                    return
            except OSError:
                return
        self.kept[key] = known

    def keep(self, key: tuple) -> None:
        """After a request for ``key``: remember its connection if libcurl keeps it (HTTP/1)."""
        c = self.curl
        fd = c.getinfo(pycurl.ACTIVESOCKET)
        if fd == -1 or c.getinfo(pycurl.INFO_HTTP_VERSION) not in (pycurl.CURL_HTTP_VERSION_1_0,
                                                                     pycurl.CURL_HTTP_VERSION_1_1):
            return  # closed, or HTTP/2 (whose idle connections carry frames of their own)
        try:
            with socket.socket(fileno=os.dup(fd)) as sock:
                self.kept[key] = (fd, sock.getsockname(), sock.getpeername())
        except OSError:
            return
        while len(self.kept) > KEEP_CONNECTIONS:
            self.kept.pop(next(iter(self.kept)))


class Client:
    """GETs through libcurl, each thread on its own handle. Thread-safe; ``close`` when done."""

    def __init__(self, guard: AddressGuard, connect_timeout: float, read_timeout: float,
                 verify: Callable[[], bool | str], proxies: Proxies | None = None):
        self.guard = guard
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self._verify = verify  # read on each request: callers may change it after start
        self.proxies = proxies if proxies is not None else Proxies()
        self._local = threading.local()
        self._handles: list[_Handle] = []
        self._lock = threading.Lock()

    def _handle(self) -> _Handle:
        h = getattr(self._local, "handle", None)
        if h is None:
            h = self._local.handle = _Handle()
            with self._lock:
                self._handles.append(h)
        return h

    def close(self) -> None:
        with self._lock:
            handles, self._handles = self._handles, []
        for h in handles:
            h.curl.close()
        self._local = threading.local()

    def get(self, url: str, headers: dict[str, str], max_bytes: int, deadline: float) -> Reply:
        """``GET url`` with ``headers``; the body (decoded, at most ``max_bytes``) only for a 2xx
        answer. ``deadline`` is a ``time.monotonic()`` value."""
        sent, host, port, scheme = target_of(url)
        lines = [f"{k}: {v}" for k, v in headers.items() if k.lower() not in ("accept-encoding", "connection")]
        if any(_CTL_HEADER.search(line) for line in lines):
            raise BadTarget(f"control characters in a header for {url!r}")
        address = self.guard.check_host(host, port)  # the connect-time check
        proxy = self.proxies.for_url(scheme, host, port)
        allowed = self.proxies.addresses(proxy) if proxy else {_canonical(address)}
        h = self._handle()
        c = h.curl
        h.exchange = ex = _Exchange(url, max_bytes, deadline, self.read_timeout, allowed)
        c.setopt(pycurl.URL, sent)
        c.setopt(pycurl.HTTPHEADER, lines)
        c.setopt(pycurl.PROXY, proxy or "")  # "": no proxy, whatever libcurl would read itself
        c.setopt(pycurl.HTTPPROXYTUNNEL, 1 if proxy else 0)  # the CONNECT names ``address``, below
        c.setopt(pycurl.CONNECT_TO, [] if _is_ip(host) else [f"{host}:{port}:{_bracket(address)}:{port}"])
        c.setopt(pycurl.CONNECTTIMEOUT_MS, max(1, int(self.connect_timeout * 1000)))
        # a backstop only: the progress callback ends the exchange at the deadline
        c.setopt(pycurl.TIMEOUT_MS, max(1, int((deadline - time.monotonic() + 1.0) * 1000)))
        self._tls(c)
        key = (proxy, scheme, host, port, address)
        h.check_kept(key)
        try:
            c.perform()
        except pycurl.error as exc:
            code, message = exc.args[0], str(exc.args[1]) if len(exc.args) > 1 else ""
            if ex.failure is not None:
                raise ex.failure from None
            if not (ex.skip_body and code == pycurl.E_WRITE_ERROR):
                raise _error(code, message, ex) from None
        finally:
            h.exchange = None
            h.keep(key)
        if ex.failure is not None:
            raise ex.failure
        return Reply(ex.status, ex.headers, bytes(ex.body) if not ex.skip_body else b"",
                     _VERSIONS.get(c.getinfo(pycurl.INFO_HTTP_VERSION), "1.1"))

    def _tls(self, c: pycurl.Curl) -> None:
        verify = self._verify()
        c.setopt(pycurl.SSL_VERIFYPEER, 0 if verify is False else 1)
        c.setopt(pycurl.SSL_VERIFYHOST, 0 if verify is False else 2)
        if isinstance(verify, str):
            c.setopt(pycurl.CAPATH if os.path.isdir(verify) else pycurl.CAINFO, verify)
        else:
            import certifi

            c.setopt(pycurl.CAINFO, certifi.where())
        c.setopt(pycurl.SSLVERSION, pycurl.SSLVERSION_TLSv1_2)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def _bracket(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _error(code: int, message: str, ex: _Exchange) -> BaseException:
    if code == pycurl.E_OPERATION_TIMEDOUT:
        return Deadline(message) if ex.complete else TimeoutError(message or "timed out")
    if code in _TLS_CODES:
        return TLSFailure(message)
    if code == pycurl.E_URL_MALFORMAT:
        return BadTarget(message)
    return ProtocolError(f"curl error {code}: {message}")
