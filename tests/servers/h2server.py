"""A small HTTP/2 server over TLS on 127.0.0.1 (ALPN ``h2`` only), built on the ``h2`` protocol
library: it answers GETs from a table of ``path -> (status, headers, body)``, and records each
request's path and headers. Enough to check that the crawl's client speaks HTTP/2 where a server
offers it, with its caps and headers intact."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import h2.config
import h2.connection
import h2.events


class H2Server:
    def __init__(self, cert_pem: Path, key_pem: Path):
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.alpn: list[str | None] = []
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ctx.load_cert_chain(cert_pem, key_pem)
        self._ctx.set_alpn_protocols(["h2"])
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._sock.close()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            tls = self._ctx.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        self.alpn.append(tls.selected_alpn_protocol())
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        try:
            tls.sendall(conn.data_to_send())
            while data := tls.recv(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        self._answer(conn, event)
                tls.sendall(conn.data_to_send())
        except (OSError, ssl.SSLError, h2.exceptions.ProtocolError):
            pass
        finally:
            tls.close()

    def _answer(self, conn: h2.connection.H2Connection, event: h2.events.RequestReceived) -> None:
        headers = dict(event.headers)
        path = headers.get(":path", "/")
        self.requests.append((path, headers))
        status, extra, body = self.routes.get(path, (404, {}, b"not found"))
        conn.send_headers(event.stream_id, [(":status", str(status)), ("content-length", str(len(body))),
                                            *extra.items()])
        view = memoryview(body)
        while view:  # within the peer's window and frame size (small bodies in the tests)
            n = min(len(view), conn.max_outbound_frame_size, conn.local_flow_control_window(event.stream_id))
            if n <= 0:
                break
            conn.send_data(event.stream_id, bytes(view[:n]))
            view = view[n:]
        conn.end_stream(event.stream_id)
