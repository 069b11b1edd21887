"""A small HTTP/1.1 client for the scraper's GETs: keep-alive connections opened only through the
SSRF guard, one request and one response at a time on each.

Why not urllib3 / ``http.client``: for a small image their per-request machinery (request
building, the ``email`` header parser, response wrappers, pool queues) costs about 0.6 ms of CPU
under the GIL, several times the cost of the exchange itself; a crawl spends most of its CPU
there. This module does only what a crawler's GET needs, with the same limits:

* connections: opened by ``AddressGuard.open_connection`` (the checked address, never a fresh DNS
  answer), TLS with certificate and host-name verification (SNI = the name), kept alive per
  (scheme, host, port) and, after a second of idleness, checked for a server-side close before
  reuse; a request on a reused connection that the server had closed meanwhile is sent once more
  on a new one (nothing of the response was read, and a GET is idempotent);
* responses: status line and at most 100 header lines of at most 64 KiB each (the limits of
  ``http.client``); bodies framed by ``Transfer-Encoding: chunked``, ``Content-Length`` (a short
  body is an error), or the end of the connection; ``Content-Encoding`` gzip / deflate (what it
  asks for) decoded incrementally with the byte cap applied to the decoded bytes (a gzip bomb stops at the cap);
* the caller reads the body (``read_body``) or drops the connection (``discard``).

Errors are ``TimeoutError``, ``OSError`` (``ssl.SSLError`` among them), ``HostRefused`` and
``ProtocolError``; ``pipeline.scrape.fetch`` maps them to failure reasons.
"""

from __future__ import annotations

import base64
import re
import select
import socket
import ssl
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from urllib.parse import unquote

from urllib3 import HTTPHeaderDict
from urllib3.exceptions import LocationValueError
from urllib3.util import parse_url

from pipeline.scrape.ssrf import AddressGuard

MAX_LINE = 65536
MAX_HEADERS = 100
CHUNK = 64 * 1024
_CTL_TARGET = re.compile(r"[\x00-\x20\x7f]")  # request-target: no controls, no spaces
_CTL_HEADER = re.compile(r"[\r\n\x00]")  # header names and values: no line breaks
CHECK_IDLE_AFTER_S = 1.0  # reuse without the dropped-connection check below this idle time
KEEP_HOSTS = 64  # hosts whose idle connections are kept (least recently used dropped first)


class ProtocolError(Exception):
    """The server's bytes are not an HTTP/1.x response we accept, or it closed early."""


class TooLarge(Exception):
    """The body (decoded) passed the caller's cap."""


class BadTarget(ValueError):
    """A URL that cannot be requested (scheme, host, characters)."""


def tls_context(verify: bool | str) -> ssl.SSLContext:
    """Client TLS settings: ``True`` = the certifi bundle, a path = that CA file or folder, ``False``
    = no verification (never the scraper's default)."""
    if verify is False:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif isinstance(verify, str):
        import os

        ctx = ssl.create_default_context(**({"capath": verify} if os.path.isdir(verify) else {"cafile": verify}))
    else:
        import certifi

        ctx = ssl.create_default_context(cafile=certifi.where())
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class _Reader:
    """Buffered reads from a socket whose buffer can be inspected: bytes the server sent beyond
    the response (``leftover``) mean the connection is not reused."""

    __slots__ = ("sock", "buf")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> bool:
        data = self.sock.recv(CHUNK)
        self.buf += data
        return bool(data)

    def readline(self, limit: int) -> bytes:
        """Up to and including the next LF, at most ``limit`` bytes; what is left at EOF."""
        start = 0
        while True:
            i = self.buf.find(b"\n", start, limit)
            if i >= 0 or len(self.buf) >= limit:
                end = i + 1 if i >= 0 else limit
                line = bytes(self.buf[:end])
                del self.buf[:end]
                return line
            start = len(self.buf)
            if not self._fill():
                line = bytes(self.buf)
                self.buf.clear()
                return line

    def read1(self, n: int) -> bytes:
        """At most ``n`` bytes: buffered ones, else one ``recv``; b"" at EOF."""
        if not self.buf and not self._fill():
            return b""
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    @property
    def leftover(self) -> int:
        return len(self.buf)


class Connection:
    def __init__(self, sock: socket.socket, key: tuple[str, str, int]):
        self.sock = sock
        self.rfile = _Reader(sock)
        self.key = key
        self.used = 0  # requests sent on it
        self.idle_since = 0.0  # time.monotonic() when it last went back to the pool

    def close(self) -> None:
        self.sock.close()

    def dropped(self) -> bool:
        """True when the server closed (or wrote unasked) since the last response: not reusable."""
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)


class Response:
    """Status and headers of one response; the body is read with ``Pool.read_body``."""

    __slots__ = ("status", "version", "headers", "conn", "will_close")

    def __init__(self, status: int, version: int, headers: HTTPHeaderDict, conn: Connection):
        self.status, self.version, self.headers, self.conn = status, version, headers, conn
        tokens = {t.strip().lower() for t in headers.get("Connection", "").split(",")}
        self.will_close = version < 11 or "close" in tokens


class Pool:
    """Idle keep-alive connections by (scheme, host, port); thread-safe."""

    def __init__(self, guard: AddressGuard, maxsize: int, connect_timeout: float, read_timeout: float,
                 verify: Callable[[], bool | str]):
        self.guard = guard
        self.maxsize = max(1, maxsize)
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self._verify = verify  # read on each TLS connection: callers may change it after start
        self._tls: dict[bool | str, ssl.SSLContext] = {}
        self._idle: OrderedDict[tuple[str, str, int], list[Connection]] = OrderedDict()
        self._lock = threading.Lock()

    # --- connections ---------------------------------------------------------------------

    def _new(self, key: tuple[str, str, int]) -> Connection:
        scheme, host, port = key
        sock = self.guard.open_connection(host, port, self.connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                verify = self._verify()
                ctx = self._tls.get(verify)
                if ctx is None:
                    ctx = self._tls[verify] = tls_context(verify)
                sock = ctx.wrap_socket(sock, server_hostname=host)  # SNI and the name check: the host
            sock.settimeout(self.read_timeout)
        except BaseException:
            sock.close()
            raise
        return Connection(sock, key)

    def _take(self, key: tuple[str, str, int]) -> Connection | None:
        while True:
            with self._lock:
                idle = self._idle.get(key)
                conn = idle.pop() if idle else None
            if conn is None:
                return None
            # A connection idle for a moment is checked for a server-side close (one poll); a fresher
            # one is used as is: if the server closed it meanwhile, nothing of a response arrives and
            # ``request`` sends again on a new connection.
            if time.monotonic() - conn.idle_since < CHECK_IDLE_AFTER_S or not conn.dropped():
                return conn
            conn.close()

    def _give_back(self, conn: Connection) -> None:
        if conn.rfile.leftover:  # the server wrote more than the response: not to be trusted again
            conn.close()
            return
        conn.idle_since = time.monotonic()
        evicted: list[Connection] = []
        with self._lock:
            idle = self._idle.get(conn.key)
            if idle is None:
                idle = self._idle[conn.key] = []
                while len(self._idle) > KEEP_HOSTS:
                    evicted.extend(self._idle.popitem(last=False)[1])
            else:
                self._idle.move_to_end(conn.key)
            if len(idle) < self.maxsize:
                idle.append(conn)
            else:
                evicted.append(conn)
        for c in evicted:
            c.close()

    def close(self) -> None:
        with self._lock:
            conns = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for c in conns:
            c.close()

    # --- one exchange ----------------------------------------------------------------------

    def request(self, url: str, headers: dict[str, str]) -> Response:
        """Send ``GET url`` with ``headers`` (the Host header is added) and read the status line and
        headers. The caller must then ``read_body`` or ``discard`` the response."""
        try:
            u = parse_url(url)  # percent-encodes what may not appear raw; IDNA for the host
        except LocationValueError as exc:
            raise BadTarget(str(exc)) from exc
        if u.scheme not in ("http", "https") or not u.host:
            raise BadTarget(f"not an http(s) URL: {url!r}")
        default = 443 if u.scheme == "https" else 80
        port = u.port or default
        host = u.host.strip("[]")
        sent = {"Host": u.host if port == default else f"{u.host}:{port}", **headers}
        if u.auth:
            user, _, password = u.auth.partition(":")
            token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode("latin-1", "replace")).decode()
            sent["Authorization"] = f"Basic {token}"
        target = u.request_uri
        if _CTL_TARGET.search(target) or any(_CTL_HEADER.search(f"{k}{v}") for k, v in sent.items()):
            raise BadTarget(f"control characters in the request for {url!r}")
        head = f"GET {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in sent.items()) + "\r\n"
        try:
            data = head.encode("latin-1")
        except UnicodeEncodeError as exc:
            raise BadTarget(f"characters outside latin-1 in the request for {url!r}") from exc
        key = (u.scheme, host, port)
        conn = self._take(key)
        if conn is not None:
            try:
                return self._exchange(conn, data)
            except (ProtocolError, OSError) as exc:
                conn.close()
                if not getattr(exc, "nothing_read", False) or isinstance(exc, TimeoutError):
                    raise
                # the server closed the kept-alive connection before our request reached it
        conn = self._new(key)
        try:
            return self._exchange(conn, data)
        except BaseException:
            conn.close()
            raise

    def _exchange(self, conn: Connection, data: bytes) -> Response:
        conn.used += 1
        try:
            conn.sock.sendall(data)
            line = conn.rfile.readline(MAX_LINE + 1)
        except OSError as exc:
            if not isinstance(exc, TimeoutError):
                exc.nothing_read = True  # type: ignore[attr-defined]
            raise
        if not line:
            exc = ProtocolError("the server closed the connection without a response")
            exc.nothing_read = True  # type: ignore[attr-defined]
            raise exc
        while True:
            status, version = _status_line(line)
            headers = _headers(conn.rfile)
            if not 100 <= status < 200 or status == 101:
                break
            line = conn.rfile.readline(MAX_LINE + 1)  # after an interim response (100 Continue)
        return Response(status, version, headers, conn)

    def discard(self, resp: Response, reusable: bool = False) -> None:
        """Done with a response whose body is not wanted: the connection goes back to the pool when
        ``reusable`` (no body to skip) and the server keeps it open, else it is closed."""
        if reusable and not resp.will_close:
            self._give_back(resp.conn)
        else:
            resp.conn.close()

    def read_body(self, resp: Response, max_bytes: int, deadline_check: Callable[[], None]) -> bytes:
        """The body of ``resp``, decoded (gzip / deflate), at most ``max_bytes`` (``TooLarge``
        beyond). ``deadline_check()`` runs after every read and may raise. The connection goes back
        to the pool when the body was framed and read to its end."""
        h = resp.headers
        rfile = resp.conn.rfile
        if resp.status in (204, 304):  # no body by definition, whatever the headers say
            self.discard(resp, reusable=True)
            return b""
        decoder = _Decoder(h.get("Content-Encoding", ""), max_bytes)
        framed = True
        try:
            te = [t.strip().lower() for t in h.get("Transfer-Encoding", "").split(",") if t.strip()]
            if te:
                if te[-1] != "chunked":
                    framed = False
                    _read_to_close(rfile, decoder, deadline_check)
                else:
                    _read_chunked(rfile, decoder, deadline_check)
            else:
                declared = h.get("Content-Length")
                if declared is not None:
                    values = {v.strip() for v in declared.split(",")}
                    if len(values) != 1 or not next(iter(values)).isdigit():
                        raise ProtocolError(f"bad Content-Length {declared!r}")
                    _read_exactly(rfile, int(values.pop()), decoder, deadline_check)
                else:
                    framed = False
                    _read_to_close(rfile, decoder, deadline_check)
            body = decoder.finish()
        except BaseException:
            resp.conn.close()
            raise
        if framed and not resp.will_close:
            self._give_back(resp.conn)
        else:
            resp.conn.close()
        return body


def _status_line(line: bytes) -> tuple[int, int]:
    if len(line) > MAX_LINE:
        raise ProtocolError("status line too long")
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3 or not parts[1].isdigit():
        raise ProtocolError(f"bad status line {line[:80]!r}")
    return int(parts[1]), 11 if parts[0] != b"HTTP/1.0" else 10


def _headers(rfile) -> HTTPHeaderDict:  # noqa: ANN001
    headers = HTTPHeaderDict()
    last: str | None = None
    count = 0
    while True:
        line = rfile.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise ProtocolError("header line too long")
        if line in (b"\r\n", b"\n"):
            return headers
        if not line:
            raise ProtocolError("the connection closed inside the headers")
        count += 1
        if count > MAX_HEADERS:
            raise ProtocolError(f"more than {MAX_HEADERS} headers")
        text = line.decode("latin-1").rstrip("\r\n")
        if text[:1] in (" ", "\t") and last is not None:  # obsolete line folding
            values = headers.getlist(last)
            values[-1] = f"{values[-1]} {text.strip()}"
            headers.discard(last)
            for v in values:
                headers.add(last, v)
            continue
        name, sep, value = text.partition(":")
        if not sep or not name or name != name.strip():
            continue  # not a header line (http.client keeps such lines out of the headers too)
        headers.add(name, value.strip())
        last = name


def _read_exactly(rfile, n: int, decoder: _Decoder, deadline_check: Callable[[], None]) -> None:  # noqa: ANN001
    while n > 0:
        chunk = rfile.read1(min(n, CHUNK))
        if not chunk:
            raise ProtocolError(f"the connection closed {n} bytes before the end of the body")
        n -= len(chunk)
        decoder.feed(chunk)
        deadline_check()


def _read_to_close(rfile, decoder: _Decoder, deadline_check: Callable[[], None]) -> None:  # noqa: ANN001
    while True:
        chunk = rfile.read1(CHUNK)
        if not chunk:
            return
        decoder.feed(chunk)
        deadline_check()


def _read_chunked(rfile, decoder: _Decoder, deadline_check: Callable[[], None]) -> None:  # noqa: ANN001
    while True:
        line = rfile.readline(MAX_LINE + 1)
        if not line or len(line) > MAX_LINE:
            raise ProtocolError("bad chunk size line")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise ProtocolError(f"bad chunk size {line[:40]!r}") from exc
        if size < 0:
            raise ProtocolError("negative chunk size")
        if size == 0:
            for _ in range(MAX_HEADERS + 1):  # trailers, up to the blank line
                line = rfile.readline(MAX_LINE + 1)
                if line in (b"\r\n", b"\n", b""):
                    return
            raise ProtocolError("too many trailer lines")
        _read_exactly(rfile, size, decoder, deadline_check)
        if rfile.readline(MAX_LINE + 1) not in (b"\r\n", b"\n"):
            raise ProtocolError("a chunk did not end where its size said")


class _Decoder:
    """Content-Encoding decoding with the byte cap on the output: gzip / x-gzip / deflate; any
    other value (identity, br, chains of codings, which this client does not ask for) leaves the
    bytes as they came, and the image validator judges them."""

    def __init__(self, encoding: str, max_bytes: int):
        coding = encoding.strip().lower()
        self.stage = _Stage(coding) if coding in ("gzip", "x-gzip", "deflate") else None
        self.max_bytes = max_bytes
        self.out = bytearray()

    def feed(self, data: bytes) -> None:
        if self.stage is not None:
            data = self.stage.feed(data, self.max_bytes - len(self.out) + 1)
        self.out += data
        if len(self.out) > self.max_bytes:
            raise TooLarge(f"body passed the cap of {self.max_bytes} bytes")

    def finish(self) -> bytes:
        return bytes(self.out)


class _Stage:
    def __init__(self, coding: str):
        self.gzip = coding != "deflate"
        self.first: bytes | None = b"" if not self.gzip else None  # deflate: zlib-wrapped or raw
        self.obj = zlib.decompressobj(16 + zlib.MAX_WBITS if self.gzip else zlib.MAX_WBITS)

    def feed(self, data: bytes, limit: int) -> bytes:
        try:
            out = self.obj.decompress(data, limit)
        except zlib.error:
            if self.first is None:
                raise ProtocolError("bad compressed body") from None
            # deflate sent raw (no zlib header), as some servers do: start again that way
            self.obj, data, self.first = zlib.decompressobj(-zlib.MAX_WBITS), self.first + data, None
            try:
                out = self.obj.decompress(data, limit)
            except zlib.error as exc:
                raise ProtocolError("bad compressed body") from exc
        if self.first is not None:
            self.first += data
            if len(self.first) > CHUNK:
                self.first = None  # well past the header: the zlib form it is
        # fewer bytes than ``limit`` out: zlib took all of ``data`` (none waits in unconsumed_tail)
        while self.gzip and len(out) < limit and self.obj.eof and self.obj.unused_data:
            rest = self.obj.unused_data  # the next member of a concatenated gzip stream
            self.obj = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out += self.obj.decompress(rest, limit - len(out))
        return out
