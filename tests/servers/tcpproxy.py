"""A TCP forwarder on 127.0.0.1 that a test can take down and bring back: the network between a
client and a real server fails (connections reset, the port refuses) while the server and its
data live on. What an object store that stops answering looks like from the pipeline's side.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from pgserver import free_port


class TcpProxy:
    """``127.0.0.1:port`` forwarded to ``127.0.0.1:target_port`` while up."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.up()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        """Listen (again) on the same port."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        self._listener = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True, name="tcpproxy-accept").start()

    def down(self) -> None:
        """Stop listening (new connections are refused) and reset every open connection."""
        sock, self._listener = self._listener, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it
            sock.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for c in conns:
            with contextlib.suppress(OSError):
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                c.close()

    close = down

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # went down meanwhile
                    client.close()
                    upstream.close()
                    return
                self._conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True, name="tcpproxy-pump").start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            pump(src, dst)
        finally:
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)


def pump(src: socket.socket, dst: socket.socket, first: bytes = b"") -> None:
    """Copy ``first``, then what ``src`` sends, to ``dst`` until either side ends; then shut both."""
    try:
        if first:
            dst.sendall(first)
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
