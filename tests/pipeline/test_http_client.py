"""The scraper's HTTP client (``pipeline.scrape.client``, libcurl, through ``Fetcher``) against a
raw socket server on 127.0.0.1 that writes scripted bytes: keep-alive reuse, a kept-alive
connection the server closed, framing (Content-Length, chunked, to the close, short bodies),
deflate in both forms, brotli, interim responses, header limits and folding, request hygiene."""

from __future__ import annotations

import socket
import threading
import time
import zlib

import pytest

from pipeline.scrape.fetch import Fetcher, FetchError


class RawServer:
    """Answers each request on a connection with ``script(path, n)`` (bytes; ``(bytes, "close")``
    to close after them; ``(bytes, "later", more)`` to send ``more`` 20 ms after them; None to
    close without an answer);
    records every request head and which connection it came on."""

    def __init__(self, script):
        self.script = script
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.requests: list[tuple[int, bytes]] = []  # (connection number, request head)
        self.connections = 0
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn, self.connections), daemon=True).start()

    def _serve(self, conn, number):
        try:
            self._exchange(conn, number)
        except OSError:  # the client closed or reset the connection
            pass

    def _exchange(self, conn, number):
        f = conn.makefile("rb")
        with conn, f:
            while True:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = f.readline()
                    if not line:
                        return
                    head += line
                self.requests.append((number, head))
                path = head.split(b" ")[1].decode()
                answer = self.script(path, len(self.requests))
                if answer is None:
                    return
                if isinstance(answer, tuple) and answer[1] == "later":  # (bytes, "later", more bytes)
                    conn.sendall(answer[0])
                    time.sleep(0.02)
                    conn.sendall(answer[2])
                    continue
                close = isinstance(answer, tuple)  # (bytes, "close"): the server closes after it
                conn.sendall(answer[0] if close else answer)
                if close:
                    return

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self):
        self._stop = True
        self.sock.close()


@pytest.fixture
def fast(settings):
    return settings.updated(connect_timeout_s=1.0, read_timeout_s=0.5, download_deadline_s=2.0,
                            retry_backoff_s=0.01, max_retries=0)


def ok(body: bytes, *headers: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode() + body


def serve(script):
    return RawServer(script)


def test_keep_alive_reuses_one_connection_and_a_server_close_costs_nothing(fast):
    closing = {"after": 2}

    def script(path, n):
        return ok(path.encode(), "Connection: close" if n == closing["after"] else "X-N: 1")

    server = serve(script)
    try:
        f = Fetcher(fast.scrape, allow_private_hosts=True)
        assert f.get(server.url("/a"), 1000).body == b"/a"
        assert f.get(server.url("/b"), 1000).body == b"/b"  # same connection; the server closes it
        assert f.get(server.url("/c"), 1000).body == b"/c"
        assert [c for c, _ in server.requests] == [1, 1, 2]
        # a kept-alive connection that the server drops when our request arrives (no answer): the
        # request goes again on a fresh connection
        closing["after"] = 0
        server.script = lambda path, n: ok(b"x") if n != 5 else None  # request 5 gets a close, no answer
        assert f.get(server.url("/d"), 1000).body == b"x"
        assert f.get(server.url("/e"), 1000).body == b"x"  # sent again on a fresh connection
        assert [c for c, _ in server.requests][-2:] == [2, 3]
        f.close()
    finally:
        server.close()


def test_framing_errors_and_limits(fast):
    many = "".join(f"X-{i}: {i}\r\n" for i in range(101))
    answers = {
        "/short": (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", "close"),
        "/two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        "/to-close": (b"HTTP/1.0 200 OK\r\n\r\nuntil the end", "close"),
        "/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n",
        "/bad-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        "/interim": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        "/many": f"HTTP/1.1 200 OK\r\n{many}Content-Length: 0\r\n\r\n".encode(),
        "/folded": b"HTTP/1.1 200 OK\r\nX-Robots-Tag: noai\r\nX-Robots-Tag: noindex,\r\n nofollow\r\n"
                   b"Content-Length: 0\r\n\r\n",
        "/garbage": b"SSH-2.0-OpenSSH\r\n\r\n",
        "/big": ok(b"y" * 2000),
        "/no-content": b"HTTP/1.1 204 No Content\r\n\r\n",  # no length: still no body to wait for
        "/silent": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",  # then nothing: a read timeout
    }
    server = serve(lambda path, n: answers[path])
    try:
        f = Fetcher(fast.scrape, allow_private_hosts=True)

        def reason(path, cap=1000):
            with pytest.raises(FetchError) as exc:
                f.get(server.url(path), cap)
            return exc.value.reason

        assert reason("/short") == "connection"
        assert reason("/two-lengths") == "connection"
        assert f.get(server.url("/to-close"), 1000).body == b"until the end"
        assert f.get(server.url("/chunked"), 1000).body == b"abcde"
        assert reason("/bad-chunk") == "connection"
        assert f.get(server.url("/interim"), 1000).body == b"ok"
        assert reason("/many") == "connection"
        assert f.get(server.url("/folded"), 1000).robots_tags == ["noai", "noindex, nofollow"]
        assert reason("/garbage") == "connection"
        assert reason("/big", cap=1999) == "too-large"
        assert f.get(server.url("/big"), 2000).body == b"y" * 2000
        assert f.get(server.url("/no-content"), 1000).body == b""
        assert reason("/silent") == "timeout"
    finally:
        server.close()


def test_deflate_in_both_forms_brotli_and_bombs_stop_at_the_cap(fast):
    import brotli

    body = bytes(range(256)) * 40
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    answers = {
        "/zlib": ok(zlib.compress(body), "Content-Encoding: deflate"),
        "/raw": ok(raw.compress(body) + raw.flush(), "Content-Encoding: deflate"),
        "/bomb": ok(zlib.compress(b"\0" * 5_000_000), "Content-Encoding: deflate"),
        "/br": ok(brotli.compress(body), "Content-Encoding: br"),
        "/br-bomb": ok(brotli.compress(b"\0" * 5_000_000), "Content-Encoding: br"),
    }
    server = serve(lambda path, n: answers[path])
    try:
        f = Fetcher(fast.scrape, allow_private_hosts=True)
        assert f.get(server.url("/zlib"), 20_000).body == body
        assert f.get(server.url("/raw"), 20_000).body == body
        with pytest.raises(FetchError) as exc:
            f.get(server.url("/bomb"), 100_000)
        assert exc.value.reason == "too-large"
        assert f.get(server.url("/br"), 20_000).body == body
        with pytest.raises(FetchError) as exc:
            f.get(server.url("/br-bomb"), 100_000)
        assert exc.value.reason == "too-large"
    finally:
        server.close()


def test_requests_carry_the_host_and_no_injected_lines(fast):
    server = serve(lambda path, n: ok(b"."))
    try:
        f = Fetcher(fast.scrape, allow_private_hosts=True)
        f.get(server.url("/a b/ü?q=1 2\r\nX-Evil: 1#frag"), 100)
        head = server.requests[-1][1].decode("latin-1")
        assert head.startswith("GET /a%20b/%C3%BC?q=1%202%0D%0AX-Evil:%201 HTTP/1.1\r\n")
        assert f"\r\nHost: 127.0.0.1:{server.port}\r\n" in head and "\r\nX-Evil" not in head
        assert "\r\nUser-Agent: " in head and "\r\nAccept-Encoding: gzip, deflate, br\r\n" in head
        f.get(f"http://user:p%40ss@127.0.0.1:{server.port}/auth", 100)
        assert "\r\nAuthorization: Basic dXNlcjpwQHNz\r\n" in server.requests[-1][1].decode()
        with pytest.raises(FetchError) as exc:  # a header value with a line break is refused
            f.get(server.url("/x"), 100, headers={"If-None-Match": '"a"\r\nX-Evil: 1'})
        assert exc.value.reason == "bad-url"
    finally:
        server.close()


def test_a_connection_the_server_wrote_more_on_is_not_reused(fast):
    """Bytes beyond the response (here the 408 that servers send on an idle timeout before they
    close) are never taken for the answer to the next request: sent with the response, libcurl
    finds them and closes the connection; sent later, the check before reuse finds them."""
    timeout_408 = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n"
    answers = {"/with": ok(b"z") + timeout_408, "/later": (ok(b"z"), "later", timeout_408), "/b": ok(b"b")}
    server = serve(lambda path, n: answers[path])
    try:
        f = Fetcher(fast.scrape, allow_private_hosts=True)
        assert f.get(server.url("/with"), 100).body == b"z"
        second = f.get(server.url("/b"), 100)
        assert (second.status, second.body) == (200, b"b")
        assert f.get(server.url("/later"), 100).body == b"z"
        time.sleep(0.1)  # the unasked bytes reach us
        third = f.get(server.url("/b"), 100)
        assert (third.status, third.body) == (200, b"b")
        assert [(c, head.split(b" ")[1]) for c, head in server.requests] == [
            (1, b"/with"), (2, b"/b"), (2, b"/later"), (3, b"/b")]
    finally:
        server.close()


def test_https_speaks_http2_where_the_server_offers_it_with_caps_and_headers_intact(tmp_path, fast):
    """A TLS server that offers only h2: the client negotiates HTTP/2 over the pinned address,
    sends the crawl's headers, reads X-Robots-Tag, and the byte cap holds on an h2 stream."""
    from h2server import H2Server

    from tests.pipeline.scrape_site import png_bytes, self_signed

    cert_pem, key_pem = self_signed(tmp_path, "h2.test")
    server = H2Server(cert_pem, key_pem)
    try:
        server.routes["/a.png"] = (200, {"content-type": "image/png", "x-robots-tag": "noimageindex"}, png_bytes(3))
        server.routes["/big.bin"] = (200, {"content-type": "application/octet-stream"}, b"x" * 20000)
        fetcher = Fetcher(fast.scrape, allow_private_hosts=True, resolver=lambda host, port: ["127.0.0.1"])
        fetcher.session.verify = str(cert_pem)
        resp = fetcher.get(f"https://h2.test:{server.port}/a.png", fast.scrape.max_image_bytes)
        assert resp.status == 200 and resp.body == png_bytes(3) and resp.http_version == "2"
        assert resp.robots_tags == ["noimageindex"] and server.alpn == ["h2"]
        path, headers = server.requests[0]
        assert path == "/a.png" and headers[":authority"] == f"h2.test:{server.port}"
        assert headers["user-agent"].startswith("UnmarkBot/")
        with pytest.raises(FetchError) as exc:
            fetcher.get(f"https://h2.test:{server.port}/big.bin", 4096)
        assert exc.value.reason == "too-large"
        fetcher.close()
    finally:
        server.close()
