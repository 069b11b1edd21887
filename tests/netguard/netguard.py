"""Suite-wide network guard: no test (nor any Python subprocess it starts) may open a connection
outside 127.0.0.0/8 or ::1, or resolve a name other than localhost. libcurl (pycurl) opens its
sockets in C, past the patched ``socket`` functions: every pycurl handle gets an open-socket
callback that refuses the same addresses before the caller's own callback runs. (libcurl's own
name lookups stay out of sight; the scraper's client never asks libcurl to resolve a site's name.)

A blocked attempt raises ``BlockedNetwork`` (an ``OSError``, so the code under test sees an
ordinary network error) and is appended to the log named by ``UNMARK_NETGUARD_LOG``; the conftest
fails the test that made it. Subprocesses load this through ``tests/netguard/sitecustomize.py``
(the conftest puts that folder on ``PYTHONPATH``).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import traceback

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


class BlockedNetwork(OSError):
    pass


def _is_loopback(host) -> bool:
    if host is None:
        return True  # getaddrinfo(None, port): the local wildcard/loopback
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    host = str(host).strip("[]").split("%", 1)[0]
    if host.lower() in LOOPBACK_NAMES or host == "":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _record(what: str) -> None:
    path = os.environ.get("UNMARK_NETGUARD_LOG")
    line = f"{os.getpid()} {what}\n"
    if path:
        try:
            with open(path, "a") as fh:
                fh.write(line)
        except OSError:
            pass
    VIOLATIONS.append(what)


VIOLATIONS: list[str] = []
_installed = False


def install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def _check_addr(sock, address) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple):
            if not _is_loopback(address[0]):
                what = f"connect to {address!r} blocked by the test network guard"
                _record(what + " | " + "".join(traceback.format_stack(limit=6)).replace("\n", " / "))
                raise BlockedNetwork(what)

    def guarded_connect(self, address):
        _check_addr(self, address)
        return real_connect(self, address)

    def guarded_connect_ex(self, address):
        _check_addr(self, address)
        return real_connect_ex(self, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if not _is_loopback(host):
            what = f"name lookup of {host!r} blocked by the test network guard"
            _record(what)
            raise BlockedNetwork(what)
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = guarded_connect
    socket.socket.connect_ex = guarded_connect_ex
    socket.getaddrinfo = guarded_getaddrinfo
    _guard_libcurl()


def _guard_libcurl() -> None:
    try:
        import pycurl
    except ImportError:
        return
    if getattr(pycurl.Curl, "_unmark_guarded", False):
        return

    class GuardedCurl(pycurl.Curl):
        _unmark_guarded = True

        def __init__(self, *args):
            super().__init__(*args)
            self._unmark_open = None
            super().setopt(pycurl.OPENSOCKETFUNCTION, self._guarded_open)

        def _guarded_open(self, purpose, address):
            family, socktype, protocol, addr = address
            if family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(addr[0]):
                _record(f"libcurl connect to {addr!r} blocked by the test network guard")
                return pycurl.SOCKET_BAD
            if self._unmark_open is not None:
                return self._unmark_open(purpose, address)
            return socket.socket(family, socktype, protocol)

        def setopt(self, option, value):
            if option == pycurl.OPENSOCKETFUNCTION:
                self._unmark_open = value
                return None
            return super().setopt(option, value)

    pycurl.Curl = GuardedCurl
