"""Four processes writing to one SQLite catalog at once: no 'database is locked', every row present."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

from storage import open_catalog
from storage import queries as q
from storage.models import Failure, Image, Sighting

WRITER = textwrap.dedent(
    """
    import hashlib, sys, time
    from pipeline.config import load_settings
    from storage import open_catalog
    from storage import queries as q

    home, worker, n, start_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    cat = open_catalog(load_settings(home=home).storage)   # every process also races on 'migrate if needed'
    while time.time() < start_at:
        time.sleep(0.001)
    for b in range(0, n, 25):
        with cat.write() as s:
            rows = []
            for i in range(b, min(n, b + 25)):
                sha = hashlib.sha256(f"{worker}-{i}".encode()).hexdigest()
                rows.append(dict(sha256=sha, blob_key=sha, mime="image/png", width=8, height=8, bytes=1,
                                 source=f"w{worker}"))
            # one shared image that every worker inserts: must fold to one row
            shared = hashlib.sha256(b"shared").hexdigest()
            rows.append(dict(sha256=shared, blob_key=shared, mime="image/png", width=8, height=8, bytes=1))
            ids = q.add_images(s, rows)
            page = q.upsert_page(s, f"http://127.0.0.1/w{worker}/{b}", "127.0.0.1", status=200)
            q.add_sightings(s, [dict(image_id=ids[r["sha256"]], page_id=page, image_url="u" + r["sha256"],
                                     alt=None, found_by="img") for r in rows])
            q.record_failure(s, "test", f"shared-subject", RuntimeError(f"w{worker}"))
    print("ok", worker)
    """
)


def test_four_processes_write_concurrently(tmp_path):
    home = tmp_path / "home"
    n = 200
    start_at = time.time() + 4.0  # all four begin writing at the same instant
    env = dict(os.environ)
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(home), str(w), str(n), str(start_at)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for w in range(4)
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (_out, errs) in zip(procs, outs):
        assert p.returncode == 0, errs
        assert "database is locked" not in errs
    from pipeline.config import load_settings

    cat = open_catalog(load_settings(home=home).storage)
    with cat.session() as s:
        assert s.query(Image).count() == 4 * n + 1
        assert s.query(Sighting).count() == 4 * n + 4 * (n // 25)
        f = s.query(Failure).one()
        assert f.attempts == 4 * (n // 25)
        assert q.catalog_stats(s)["pages"] == 4 * (n // 25)
