"""The scraper's HTTP client behind a proxy named by the standard variables (``HTTP_PROXY``,
``HTTPS_PROXY``, ``NO_PROXY``): a real forward and CONNECT proxy on 127.0.0.1 that records what it
is asked. Every request, http or https, is a CONNECT tunnel to the address the SSRF guard checked
(the proxy never resolves a site's name); a refused address never reaches the proxy; ``NO_PROXY``
goes direct."""

from __future__ import annotations

import socket
import threading
from urllib.parse import urlsplit

import pytest
from tcpproxy import pump  # tests/servers, on sys.path by the conftest

from pipeline.scrape.crawl import scrape
from pipeline.scrape.fetch import Fetcher, FetchError
from tests.pipeline.scrape_site import Site, png_bytes, serve_tls

PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


class Proxy:
    """Forwards ``GET http://…`` (one request per connection) and tunnels ``CONNECT host:port``.
    ``names`` is its own DNS (the test's names to 127.0.0.1); ``asked`` lists (method, target)."""

    def __init__(self, names: dict[str, str] | None = None):
        self.names = names or {}
        self.asked: list[tuple[str, str]] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _upstream(self, host, port):
        return socket.create_connection((self.names.get(host, host), port), timeout=5)

    def _serve(self, conn):
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(65536)
                if not data:
                    return
                head += data
            head, rest = head.split(b"\r\n\r\n", 1)
            first, *lines = head.decode("latin-1").split("\r\n")
            method, target, _ = first.split(" ", 2)
            self.asked.append((method, target))
            if method == "CONNECT":
                host, port = target.rsplit(":", 1)
                up = self._upstream(host.strip("[]"), int(port))
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                threading.Thread(target=pump, args=(up, conn), daemon=True).start()
                pump(conn, up, rest)
                return
            u = urlsplit(target)
            up = self._upstream(u.hostname, u.port or 80)
            kept = [ln for ln in lines if ln.split(":", 1)[0].lower() not in ("connection", "proxy-connection")]
            path = u.path + (f"?{u.query}" if u.query else "")
            up.sendall("\r\n".join([f"{method} {path} HTTP/1.1", *kept, "Connection: close", "", ""]).encode() + rest)
            pump(up, conn)

    def close(self):
        self.sock.close()


@pytest.fixture
def env(monkeypatch):
    """A clean proxy environment; the test sets what it needs."""
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


@pytest.fixture
def site():
    s = Site()
    s.static("/a.png", png_bytes(1), "image/png")
    yield s
    s.close()


def test_http_tunnels_to_the_checked_address_and_no_proxy_goes_direct(env, site, fast):
    proxy = Proxy()
    try:
        env.setenv("HTTP_PROXY", proxy.url)
        fetcher = Fetcher(fast.scrape, allow_private_hosts=True, resolver=lambda host, port: ["127.0.0.1"])
        url = f"http://named.test:{site.port}/a.png"
        assert fetcher.get(url, fast.scrape.max_image_bytes).body == png_bytes(1)
        assert fetcher.get(url, fast.scrape.max_image_bytes).body == png_bytes(1)
        assert proxy.asked == [("CONNECT", f"127.0.0.1:{site.port}")]  # one tunnel, kept alive
        assert [r.headers["host"] for r in site.log] == [f"named.test:{site.port}"] * 2
        fetcher.close()

        env.setenv("NO_PROXY", "named.test")
        direct = Fetcher(fast.scrape, allow_private_hosts=True, resolver=lambda host, port: ["127.0.0.1"])
        assert direct.get(url, fast.scrape.max_image_bytes).body == png_bytes(1)
        assert len(proxy.asked) == 1 and len(site.log) == 3  # the site, not the proxy
        direct.close()
    finally:
        proxy.close()


def test_https_tunnels_to_the_checked_address_and_verifies_the_name(env, tmp_path, fast):
    site = Site()
    proxy = Proxy()
    try:
        cert_pem, snis = serve_tls(site, tmp_path, "secure.test")
        site.static("/a.png", png_bytes(2), "image/png")
        env.setenv("HTTPS_PROXY", proxy.url)
        env.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # not asked for https
        fetcher = Fetcher(fast.scrape, allow_private_hosts=True, resolver=lambda host, port: ["127.0.0.1"])
        fetcher.session.verify = str(cert_pem)
        resp = fetcher.get(f"https://secure.test:{site.port}/a.png", fast.scrape.max_image_bytes)
        assert resp.status == 200 and resp.body == png_bytes(2)
        # the proxy is told the checked address, never the name (which it cannot resolve here)
        assert proxy.asked == [("CONNECT", f"127.0.0.1:{site.port}")]
        assert snis == ["secure.test"] and site.log[0].headers["host"] == f"secure.test:{site.port}"
        fetcher.close()
    finally:
        proxy.close()
        site.close()


def test_a_refused_address_never_reaches_the_proxy(env, fast):
    proxy = Proxy()
    try:
        env.setenv("HTTP_PROXY", proxy.url)
        env.setenv("HTTPS_PROXY", proxy.url)
        fetcher = Fetcher(fast.scrape, allow_private_hosts=True,
                          resolver=lambda host, port: ["10.0.0.1"] if host == "internal.test" else ["127.0.0.1"])
        for url in ("http://10.0.0.1/x.png", "https://169.254.169.254/latest/", "http://internal.test/x.png"):
            with pytest.raises(FetchError) as exc:
                fetcher.get(url, fast.scrape.max_image_bytes)
            assert exc.value.reason == "refused-address"
        assert proxy.asked == []
        fetcher.close()
    finally:
        proxy.close()


def test_a_crawl_honours_the_proxy_variables(env, site, catalog, blobs, fast):
    proxy = Proxy()
    try:
        site.page("/", "<img src='/a.png'>")
        env.setenv("http_proxy", proxy.url)
        summary = scrape([site.url("/")], catalog, blobs, fast, allow_private_hosts=True)
        assert summary["images_fetched"] == 1
        assert proxy.asked and set(proxy.asked) == {("CONNECT", f"127.0.0.1:{site.port}")}
        assert {r.path for r in site.log} == {"/robots.txt", "/", "/a.png"}
    finally:
        proxy.close()
