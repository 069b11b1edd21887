"""Catalog benchmark: insert 100,000 image rows in batches, then query by status and by group.

    python bench/catalog.py [--rows 100000] [--batch 500] [--url sqlite:///...]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import tempfile
import time

from _common import write_results
from sqlalchemy import func, select

from storage import open_catalog
from storage import queries as q
from storage.models import Image

STATUSES = ["fetched", "clean", "watermarked", "uncertain", "cleaned"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--url", default=None, help="catalog URL (default: a temp SQLite file)")
    args = ap.parse_args()
    url = args.url or f"sqlite:///{tempfile.mkdtemp(prefix='unmark-bench-')}/catalog.sqlite"
    cat = open_catalog(url=url)
    rng = random.Random(0)

    t0 = time.perf_counter()
    for start in range(0, args.rows, args.batch):
        rows = []
        for i in range(start, min(args.rows, start + args.batch)):
            sha = hashlib.sha256(str(i).encode()).hexdigest()
            rows.append({"sha256": sha, "blob_key": f"{sha[:2]}/{sha[2:4]}/{sha}", "mime": "image/jpeg",
                         "width": 640, "height": 480, "bytes": 50_000 + i, "source": "bench",
                         "status": rng.choice(STATUSES), "phash": rng.getrandbits(63), "split": q.split_for(sha)})
        with cat.write() as s:
            q.add_images(s, rows)
    insert_s = time.perf_counter() - t0
    rate = args.rows / insert_s

    # group ids: every 4 consecutive images form a group led by the first
    t1 = time.perf_counter()
    with cat.write() as s:
        s.execute(Image.__table__.update().values(group_id=((Image.id - 1) // 4) * 4 + 1))
    group_s = time.perf_counter() - t1

    timings: dict[str, list[float]] = {"status": [], "group": [], "stats": [], "clean_pool_page": []}
    with cat.session() as s:
        gids = [g for (g,) in s.execute(select(Image.group_id).distinct().limit(2000))]
        for k in range(50):
            t = time.perf_counter()
            n = s.scalar(select(func.count()).select_from(Image).where(Image.status == STATUSES[k % 5]))
            ids = s.scalars(select(Image.id).where(Image.status == STATUSES[k % 5]).limit(1000)).all()
            timings["status"].append((time.perf_counter() - t) * 1000)
            assert n > 0 and ids
            t = time.perf_counter()
            members = q.images_in_group(s, rng.choice(gids))
            timings["group"].append((time.perf_counter() - t) * 1000)
            assert len(members) == 4
        for _ in range(5):
            t = time.perf_counter()
            q.catalog_stats(s)
            timings["stats"].append((time.perf_counter() - t) * 1000)
    p50 = {k: statistics.median(v) for k, v in timings.items() if v}
    query_ms = max(p50["status"], p50["group"])
    print(f"inserted {args.rows} rows in {insert_s:.2f} s: {rate:,.0f} rows/s (batches of {args.batch})")
    print(f"group update {group_s:.2f} s; query p50 ms: " + ", ".join(f"{k} {v:.2f}" for k, v in p50.items()))
    body = (f"| what | value |\n|---|---|\n| rows | {args.rows:,} (batches of {args.batch}, {cat.dialect}) |\n"
            f"| insert | {rate:,.0f} rows/s ({insert_s:.2f} s) |\n"
            f"| query by status (count + first 1000 ids), p50 | {p50['status']:.2f} ms |\n"
            f"| query by group (members), p50 | {p50['group']:.2f} ms |\n"
            f"| catalog_stats (all counts), p50 | {p50['stats']:.1f} ms |\n")
    write_results("catalog", {"insert_rows_per_s": round(rate, 1), "query_ms": round(query_ms, 3),
                              "query_status_p50_ms": round(p50["status"], 3), "query_group_p50_ms": round(p50["group"], 3),
                              "stats_p50_ms": round(p50["stats"], 2), "rows": args.rows, "backend": cat.dialect}, body)


if __name__ == "__main__":
    main()
