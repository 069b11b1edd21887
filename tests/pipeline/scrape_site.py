"""A real HTTP server on 127.0.0.1 serving a generated site, for the scraper tests and the demo.

Routes map a path to a handler ``fn(req) -> None`` that writes the response itself, so a test
can serve anything: redirects, 429s with Retry-After, a 200 MB body generated on the fly, a
response slower than the client's timeout. Every request is logged (path, headers, time), and
the server tracks the most requests it ever had in flight per Host header.
"""

from __future__ import annotations

import io
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image


def png_bytes(seed: int, w: int = 80, h: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def jpeg_bytes(seed: int, w: int = 96, h: int = 72) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def bomb_png(side: int = 12_000) -> bytes:
    """A real decompression bomb: a ``side``×``side`` all-black greyscale PNG (~144 MP) whose
    file is ~140 kB. Built row by row so the raw pixels never exist in memory."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + pixels
    parts = [comp.compress(row) for _ in range(side)]
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def self_signed(folder, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``name`` and its key, written to ``folder``: (cert.pem, key.pem)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_pem, key_pem = Path(folder) / "cert.pem", Path(folder) / "key.pem"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return cert_pem, key_pem


def serve_tls(site: Site, folder, name: str) -> tuple[Path, list[str]]:
    """Put ``site`` behind TLS with a self-signed certificate for ``name`` (written to ``folder``):
    returns the certificate's path (a CA file for the client) and the list of the SNI names the
    server is asked for."""
    import ssl

    cert_pem, key_pem = self_signed(folder, name)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_pem, key_pem)
    snis: list[str] = []
    ctx.sni_callback = lambda sock, server_name, _ctx: snis.append(server_name)
    site.server.socket = ctx.wrap_socket(site.server.socket, server_side=True)
    return cert_pem, snis


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    t: float
    handler: BaseHTTPRequestHandler = field(repr=False, default=None)

    def send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
             content_type: str = "text/html; charset=utf-8") -> None:
        h = self.handler
        h.send_response(status)
        hdrs = {"Content-Type": content_type, "Content-Length": str(len(body))}
        hdrs.update(headers or {})
        for k, v in hdrs.items():
            if isinstance(v, list):
                for item in v:
                    h.send_header(k, item)
            elif v is not None:
                h.send_header(k, v)
        h.end_headers()
        if body:
            h.wfile.write(body)


Route = Callable[[Request], None]


class Site:
    """``Site()`` starts serving on a free port; ``site.url(path)``; ``site.close()``."""

    def __init__(self, latency_s: float = 0.0):
        self.routes: dict[str, Route] = {}
        self.log: list[Request] = []
        self.latency_s = latency_s
        self.in_flight: dict[str, int] = {}
        self.max_in_flight: dict[str, int] = {}
        self.max_in_flight_total = 0
        self.bytes_sent: dict[str, int] = {}
        self._total = 0
        self._lock = threading.Lock()
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else each keep-alive response waits ~40 ms (delayed ACK)

            def do_GET(self) -> None:
                req = Request(self.path, {k.lower(): v for k, v in self.headers.items()}, time.monotonic(), self)
                host = req.headers.get("host", "")
                with site._lock:
                    site.log.append(req)
                    site.in_flight[host] = site.in_flight.get(host, 0) + 1
                    site.max_in_flight[host] = max(site.max_in_flight.get(host, 0), site.in_flight[host])
                    site._total += 1
                    site.max_in_flight_total = max(site.max_in_flight_total, site._total)
                try:
                    if site.latency_s:
                        time.sleep(site.latency_s)
                    route = site.routes.get(self.path.split("?", 1)[0])
                    if route is None:
                        req.send(404, b"not found")
                    else:
                        route(req)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                finally:
                    with site._lock:
                        site.in_flight[host] -= 1
                        site._total -= 1

            def log_message(self, *args) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256

            def handle_error(self, request, client_address) -> None:
                import sys

                if not isinstance(sys.exc_info()[1], ConnectionError):  # clients that hang up are fine
                    super().handle_error(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def requests_for(self, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.log if r.path.split("?", 1)[0] == path]

    def paths(self) -> list[str]:
        with self._lock:
            return [r.path for r in self.log]

    # --- route helpers ---------------------------------------------------------------

    def static(self, path: str, body: bytes, content_type: str = "text/html; charset=utf-8",
               headers: dict | None = None, etag: str | None = None) -> None:
        def route(req: Request) -> None:
            extra = dict(headers or {})
            if etag:
                extra["ETag"] = etag
                if req.headers.get("if-none-match") == etag:
                    req.send(304, b"", {"ETag": etag})
                    return
            req.send(200, body, extra, content_type)

        self.routes[path] = route

    def page(self, path: str, html: str, **kw) -> None:
        self.static(path, html.encode("utf-8"), etag=kw.pop("etag", f'"{abs(hash(html))}"'), **kw)

    def redirect(self, path: str, location: str, status: int = 302) -> None:
        self.routes[path] = lambda req: req.send(status, b"", {"Location": location})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
