"""HTTP clients for the crawl's GETs, side by side on loopback: Unmark's fetcher
(``pipeline.scrape.fetch.Fetcher`` over libcurl, ``pipeline/scrape/client.py``, as the crawl calls it), aiohttp
(a guarded resolver: every name checked by the SSRF guard) and pycurl's multi interface (an
open-socket callback that checks each address at connect time).

A stdlib HTTP/1.1 keep-alive server in its own process (127.0.0.1) answers every path with the
same small PNG. Each client makes ``--requests`` GETs, ``--concurrency`` at a time, reading and
keeping every body; the client process's wall time and CPU time (user + system) are measured.

    python bench/http_clients.py [--requests 3000] [--concurrency 16] [--kb 20]

Writes ``bench/results/http_clients.json`` and appends to RESULTS.md. It measures; it replaces
nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import resource
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results

SERVER = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
body = open(sys.argv[1], "rb").read()
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512
s = S(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"""


CAVEAT = ("Not like for like: fetcher runs through `Fetcher.get` as the crawl calls it (the guard's check, the "
          "per-host gate, the retry loop, 16 threads), aiohttp and pycurl are bare loops with only the address "
          "check; a replacement would carry the Fetcher's work too. pycurl's libcurl here: HTTP/2, brotli, "
          "proxies.\n")


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def png(kb: int) -> bytes:
    import numpy as np
    from PIL import Image

    side = max(8, int((kb * 1024 / 3) ** 0.5))
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def run_fetcher(urls: list[str], concurrency: int) -> int:
    from pipeline.config import load_settings
    from pipeline.scrape.fetch import Fetcher

    settings = load_settings(per_host_concurrency=concurrency, global_concurrency=concurrency)
    fetcher = Fetcher(settings.scrape, allow_private_hosts=True)
    try:
        with ThreadPoolExecutor(concurrency) as pool:
            return sum(len(r.body) for r in pool.map(lambda u: fetcher.get(u, 1 << 24), urls))
    finally:
        fetcher.close()


def run_aiohttp(urls: list[str], concurrency: int) -> int:
    import aiohttp
    from aiohttp.abc import AbstractResolver

    from pipeline.scrape.ssrf import AddressGuard

    guard = AddressGuard(allow_private_hosts=True)

    class GuardedResolver(AbstractResolver):
        async def resolve(self, host, port=0, family=socket.AF_INET):
            address = guard.check_host(host, port)
            return [{"hostname": host, "host": address, "port": port, "family": family, "proto": 0,
                     "flags": socket.AI_NUMERICHOST}]

        async def close(self) -> None:
            pass

    async def main() -> int:
        connector = aiohttp.TCPConnector(limit=concurrency, resolver=GuardedResolver())
        total = 0
        async with aiohttp.ClientSession(connector=connector, auto_decompress=True) as session:
            queue = list(reversed(urls))

            async def worker() -> None:
                nonlocal total
                while queue:
                    url = queue.pop()
                    async with session.get(url) as resp:
                        n = len(await resp.read())  # (total += await … would lose updates)
                    total += n

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return total

    return asyncio.run(main())


def run_pycurl(urls: list[str], concurrency: int) -> int:
    import pycurl

    from pipeline.scrape.ssrf import address_allowed

    def open_socket(purpose, address):  # the guard at connect time
        family, socktype, protocol, addr = address
        if not address_allowed(addr[0], allow_loopback=True):
            return pycurl.SOCKET_BAD
        return socket.socket(family, socktype, protocol)

    multi = pycurl.CurlMulti()
    free, total, queue = [], 0, list(reversed(urls))
    for _ in range(concurrency):
        c = pycurl.Curl()
        c.setopt(pycurl.OPENSOCKETFUNCTION, open_socket)
        c.setopt(pycurl.ACCEPT_ENCODING, "")
        c.setopt(pycurl.MAXFILESIZE, 1 << 24)
        free.append(c)
    active = 0
    while queue or active:
        while queue and free:
            c = free.pop()
            c.buf = io.BytesIO()
            c.setopt(pycurl.URL, queue.pop())
            c.setopt(pycurl.WRITEDATA, c.buf)
            multi.add_handle(c)
            active += 1
        while multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
            pass
        _, done, failed = multi.info_read()
        for c in done + [f[0] for f in failed]:
            total += len(c.buf.getvalue())
            multi.remove_handle(c)
            free.append(c)
            active -= 1
        if active:
            multi.select(0.5)
    for c in free:
        c.close()
    multi.close()
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--kb", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    body = png(args.kb)
    path = Path("/tmp/unmark-bench-body.png")
    path.write_bytes(body)
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        urls = [f"http://127.0.0.1:{port}/img/{i}.png" for i in range(args.requests)]
        import importlib.util

        clients = {"fetcher": run_fetcher, "aiohttp": run_aiohttp, "pycurl": run_pycurl}
        for name in ("aiohttp", "pycurl"):  # not dependencies of Unmark: pip install them to compare
            if importlib.util.find_spec(name) is None:
                print(f"{name} is not installed: left out", flush=True)
                del clients[name]
        figures: dict = {"requests": args.requests, "concurrency": args.concurrency, "body_bytes": len(body)}
        for rnd in range(args.rounds):  # interleaved rounds; the best of each is kept
            for name, fn in clients.items():
                t, c = time.monotonic(), cpu()
                got = fn(urls, args.concurrency)
                wall, used = time.monotonic() - t, cpu() - c
                assert got == len(body) * args.requests, (name, got)
                best = figures.get(name)
                if best is None or wall < best["wall_s"]:
                    figures[name] = {"wall_s": round(wall, 3), "requests_per_s": round(args.requests / wall, 1),
                                     "cpu_ms_per_request": round(1000 * used / args.requests, 3)}
                print(rnd, name, figures[name], flush=True)
    finally:
        server.kill()
        server.wait()
    rows = "\n".join(f"| {n} | {figures[n]['requests_per_s']} | {figures[n]['cpu_ms_per_request']} |" for n in clients)
    body_md = (f"{args.requests} GETs of a {len(body)} B PNG, {args.concurrency} at a time, keep-alive, from a "
               f"server in its own process on 127.0.0.1; best of {args.rounds} interleaved rounds.\n\n"
               "| client | requests/s | client CPU ms / request |\n| --- | --- | --- |\n" + rows + "\n\n"
               + CAVEAT)
    write_results("http_clients", figures, body_md)


if __name__ == "__main__":
    main()
