"""The guard itself: loopback passes, anything else is refused before a packet leaves."""

import socket

import netguard
import pytest


def test_loopback_connect_allowed():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    c = socket.create_connection(srv.getsockname(), timeout=2)
    c.close()
    srv.close()


@pytest.mark.parametrize("addr", ["10.0.0.1", "169.254.169.254", "93.184.216.34", "192.168.1.1"])
def test_non_loopback_connect_refused(addr):
    s = socket.socket()
    try:
        with pytest.raises(netguard.BlockedNetwork):
            s.connect((addr, 80))
    finally:
        s.close()
    # the attempt is recorded; forget it so this test (which expects it) is not failed
    assert netguard.VIOLATIONS and addr in netguard.VIOLATIONS[-1]
    netguard.VIOLATIONS.pop()
    _truncate_log()


def test_name_lookup_refused():
    with pytest.raises(netguard.BlockedNetwork):
        socket.getaddrinfo("example.com", 80)
    netguard.VIOLATIONS.pop()
    _truncate_log()


def test_libcurl_connect_refused():
    import pycurl

    c = pycurl.Curl()
    c.setopt(pycurl.URL, "http://10.0.0.1:80/")
    c.setopt(pycurl.CONNECTTIMEOUT_MS, 1000)
    with pytest.raises(pycurl.error) as exc:
        c.perform()
    c.close()
    assert exc.value.args[0] == pycurl.E_COULDNT_CONNECT
    assert netguard.VIOLATIONS and "10.0.0.1" in netguard.VIOLATIONS[-1]
    netguard.VIOLATIONS.pop()
    _truncate_log()


def test_subprocess_is_guarded(tmp_path):
    import os
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", "import socket\ntry:\n socket.create_connection(('10.0.0.1', 80), timeout=1)\n"
         "except OSError as e: print(type(e).__name__)"],
        capture_output=True, text=True, env=os.environ, timeout=60,
    )
    assert out.stdout.strip() == "BlockedNetwork", out.stderr
    _truncate_log()


def _truncate_log():
    import os

    # Drop this test's own, expected entries so the autouse fixture does not fail it.
    path = os.environ["UNMARK_NETGUARD_LOG"]
    lines = open(path).read().splitlines(keepends=True)
    with open(path, "w") as fh:
        fh.writelines(lines[:0])
