"""Suite-wide network guard: no test (nor any Python subprocess it starts) may open a connection
outside 127.0.0.0/8 or ::1, or resolve a name other than localhost.

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
