"""The named queries and batched writes that test_catalog.py does not cover, and the things where
SQLite and PostgreSQL differ: concurrent upserts of the same page / failure from several
processes, NUL characters in scraped text, long error class names, large batches.
(Every test runs on both backends; see tests/storage/conftest.py.)"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import time

from sqlalchemy import select

from storage import pools, reports
from storage import queries as q
from storage.db import chunked, insert_ignore
from storage.models import Cleaning, Failure, Image, Page, Sighting


def _sha(x: object) -> str:
    return hashlib.sha256(str(x).encode()).hexdigest()


def _img(sha: str, **kw) -> dict:
    row = {"sha256": sha, "blob_key": f"{sha[:2]}/{sha[2:4]}/{sha}", "mime": "image/png", "width": 64,
           "height": 64, "bytes": 100, "source": "test"}
    row.update(kw)
    return row


def test_batched_insert_ignore_folds_conflicts(catalog):
    shas = [_sha(i) for i in range(1234)]
    with catalog.write() as s:
        for part in chunked([_img(h) for h in shas[:700]], 250):
            insert_ignore(s, Image, [{"status": "fetched", **r} for r in part], ["sha256"])
    with catalog.write() as s:
        # overlapping batch: 600 known + 534 new; the known rows keep their first values
        ids = q.add_images(s, [_img(h, width=999) for h in shas[100:]])
    assert len(ids) == len(shas) - 100  # image_ids_by_sha answers in chunks of 500
    with catalog.session() as s:
        assert s.query(Image).count() == 1234
        assert s.query(Image).filter(Image.width == 999).count() == 1234 - 700
        assert q.image_ids_by_sha(s, shas) == dict(s.execute(select(Image.sha256, Image.id)).all())


def test_pages_failures_groups_and_counts(catalog):
    with catalog.write() as s:
        pid = q.upsert_page(s, "http://127.0.0.1/a", "127.0.0.1", status=500, error="boom")
        assert q.upsert_page(s, "http://127.0.0.1/a", "127.0.0.1", status=200, error=None, depth=2) == pid
        ids = q.add_images(s, [_img(_sha(i)) for i in range(4)])
        a, b, c, d = (ids[_sha(i)] for i in range(4))
        for iid, role, label, status in [(a, "canonical", "clean", "clean"), (b, "duplicate", "watermarked", "watermarked"),
                                         (c, "duplicate", "clean", "clean")]:
            img = s.get(Image, iid)
            img.group_id, img.dedup_role, img.label, img.status = a, role, label, status
        s.get(Image, d).label = "watermarked"
        s.get(Image, d).status = "watermarked"
        q.record_failure(s, "scrape", "http://127.0.0.1/x", "timed out", error_class="Timeout")
        q.record_failure(s, "dedup", "bad-sha", ValueError("truncated"))
        q.record_failure(s, "dedup", "worse-sha", ValueError("empty"))
        q.clear_failure(s, "dedup", "bad-sha")
    with catalog.session() as s:
        page = q.get_page(s, "http://127.0.0.1/a")
        assert (page.id, page.status, page.error, page.depth) == (pid, 200, None, 2)
        assert q.get_page(s, "http://127.0.0.1/missing") is None
        assert [im.id for im in q.images_in_group(s, a)] == [a, b, c]
        assert q.count_by_status(s) == {"clean": 2, "watermarked": 2}
        assert [f.subject for f in q.failures(s, "dedup")] == ["worse-sha"]
        assert {f.stage for f in q.failures(s)} == {"scrape", "dedup"}
        stats = q.catalog_stats(s)
        assert stats["pages"] == 1 and stats["images"] == {"clean": 2, "watermarked": 2}
        assert stats["failures"] == {"scrape": 1, "dedup": 1}
        assert stats["dedup"] == {"canonical": 1, "duplicate": 2}
        assert [r["id"] for r in q.list_images(s, status="duplicate")] == [b, c]
        assert [r["id"] for r in q.list_images(s, label="watermarked", limit=1)] == [b]
        # the pool holds d only (b's group has clean members); images_without_cleaning follows it
        assert [im.id for im in pools.watermarked_pool(s)] == [d]
        assert [im.id for im in pools.images_without_cleaning(s, "r-1")] == [d]
        assert q.get_model(s, "r-1") is None
    with catalog.write() as s:
        s.add(Cleaning(image_id=d, model_version="r-1", output_key="k"))
    with catalog.session() as s:
        assert pools.images_without_cleaning(s, "r-1") == []
        assert [im.id for im in pools.images_without_cleaning(s, "r-2", ids=[d, b])] == [b, d]
        assert q.catalog_stats(s)["cleanings"] == 1


def test_batched_page_upserts_validators_and_failure_clearing(catalog):
    """The scraper's batched writes: ``upsert_pages`` matches ``upsert_page`` row for row (rows
    with different field sets, updates of known URLs, NUL text, more than one chunk)."""
    urls = [f"http://127.0.0.1/p{i}" for i in range(620)]
    with catalog.write() as s:
        assert q.scrape_memory(s, "scrape.image") == {"validators": False, "sightings": False, "image_failures": False}
        first = q.upsert_page(s, urls[0], "127.0.0.1", status=500, error="boom", depth=3)
        ids = q.upsert_pages(s, [{"url": u, "host": "127.0.0.1", "status": 200, "error": None, "outlinks": [u]}
                                 for u in urls[:600]] + [{"url": urls[600], "host": "127.0.0.1", "error": "a\x00b"}])
        assert ids[urls[0]] == first and len(set(ids.values())) == 601
        ids2 = q.upsert_pages(s, [{"url": u, "host": "127.0.0.1", "etag": f'"{i}"', "last_modified": None}
                                  for i, u in enumerate(urls[:3])] + [{"url": urls[619], "host": "127.0.0.1"}])
        assert all(ids2[u] == ids[u] for u in urls[:3]) and urls[619] in ids2
        for u in urls[:5]:
            q.record_failure(s, "scrape.page", u, "boom")
        q.record_failure(s, "scrape.image", urls[0], "boom")
        q.clear_failures(s, "scrape.page", urls[1:4] + urls[1:2])
    with catalog.session() as s:
        page = q.get_page(s, urls[0])
        assert (page.status, page.error, page.depth, page.outlinks, page.etag) == (200, None, 3, [urls[0]], '"0"')
        assert q.get_page(s, urls[600]).error == "a\ufffdb" and q.get_page(s, urls[619]).depth == 0
        assert q.page_validators(s, urls) == {urls[0]: ('"0"', None), urls[1]: ('"1"', None), urls[2]: ('"2"', None)}
        assert q.page_ids_by_url(s, urls[:2] + ["http://127.0.0.1/none"]) == {u: ids[u] for u in urls[:2]}
        assert sorted(f.subject for f in q.failures(s, "scrape.page")) == [urls[0], urls[4]]
        assert q.scrape_memory(s, "scrape.image") == {"validators": True, "sightings": False, "image_failures": True}


def test_clean_pool_by_split(catalog):
    with catalog.write() as s:
        ids = q.add_images(s, [_img(_sha(i), width=64 + i) for i in range(6)])
        for i, iid in enumerate(ids.values()):
            img = s.get(Image, iid)
            img.label = "clean"
            img.split = ["train", "val", "test"][i % 3]
    with catalog.session() as s:
        assert len(pools.clean_pool(s)) == 6
        assert {im.split for im in pools.clean_pool(s, split="val")} == {"val"}
        assert len(pools.clean_pool(s, split="test")) == 2


def test_text_with_nul_and_long_error_class(catalog):
    """PostgreSQL refuses NUL in text and over-long VARCHARs; scraped alt text and error
    messages can hold either, so the writers clean them (SQLite would have taken them as is)."""
    with catalog.write() as s:
        ids = q.add_images(s, [_img(_sha("nul"))])
        pid = q.upsert_page(s, "http://127.0.0.1/n\x00ul", "127.0.0.1", error="bad\x00byte")
        q.add_sightings(s, [{"image_id": ids[_sha("nul")], "page_id": pid, "image_url": "http://127.0.0.1/i\x00.png",
                             "alt": "a\x00b", "found_by": "img"}])
        q.record_failure(s, "scrape", "http://127.0.0.1/\x00", "msg\x00", error_class="E" * 300)
    with catalog.session() as s:
        assert s.query(Sighting).one().alt == "a\ufffdb"
        assert s.query(Page).one().error == "bad\ufffdbyte"
        f = s.query(Failure).one()
        assert f.message == "msg\ufffd" and len(f.error_class) == 128


WRITER = textwrap.dedent(
    """
    import hashlib, sys, time
    from pipeline.config import load_settings
    from storage import open_catalog
    from storage import queries as q

    home, url, worker, n, start_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    cat = open_catalog(load_settings(home=home, catalog_url=url).storage)
    while time.time() < start_at:
        time.sleep(0.001)
    shared = hashlib.sha256(b"shared").hexdigest()
    for b in range(0, n, 20):
        with cat.write() as s:
            rows = [dict(sha256=hashlib.sha256(f"{worker}-{i}".encode()).hexdigest(), blob_key="k", mime="image/png",
                         width=8, height=8, bytes=1) for i in range(b, b + 20)]
            rows.append(dict(sha256=shared, blob_key="k", mime="image/png", width=8, height=8, bytes=1))
            ids = q.add_images(s, rows)
            # every worker upserts the same pages and the same failure: a race on PostgreSQL
            page = q.upsert_page(s, f"http://127.0.0.1/p{b}", "127.0.0.1", status=200)
            q.add_sightings(s, [dict(image_id=ids[shared], page_id=page, image_url="u", alt=None, found_by="img")])
            q.record_failure(s, "test", "shared-subject", RuntimeError(f"w{worker}"))
    print("ok", worker)
    """
)


def test_processes_upsert_the_same_rows_concurrently(settings, catalog):
    n, workers = 100, 3
    start_at = time.time() + 3.0
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(settings.home), settings.storage.catalog_url, str(w), str(n),
                          str(start_at)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
        for w in range(workers)
    ]
    for p in procs:
        _out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-3000:]
    with catalog.session() as s:
        assert s.query(Image).count() == workers * n + 1
        assert s.query(Page).count() == n // 20
        assert s.query(Sighting).count() == n // 20  # one per page: the shared image, same URL
        assert s.query(Failure).one().attempts == workers * (n // 20)


def test_migrated_schema_matches_the_models(catalog):
    """Alembic's autogenerate finds nothing to add: models.py and the migrations agree."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from storage.models import Base

    with catalog.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == []


def test_lookup_and_report_queries(catalog):
    """image_ids_by_url, failure_classes, failure_counts, worst_cleanings, latest_training_run,
    count_cleanings."""
    from datetime import timedelta

    from storage.models import TrainingRun, utcnow

    with catalog.write() as s:
        ids = q.add_images(s, [_img(_sha(i)) for i in range(3)])
        a, b, c = (ids[_sha(i)] for i in range(3))
        q.add_sightings(s, [{"image_id": a, "page_id": None, "image_url": "http://127.0.0.1/a.png", "alt": None,
                             "found_by": "img"},
                            {"image_id": b, "page_id": None, "image_url": "http://127.0.0.1/b.png", "alt": None,
                             "found_by": "srcset"}])
        for subject, exc in [("u1", TimeoutError("t")), ("u2", ValueError("v")), ("u3", ValueError("w"))]:
            q.record_failure(s, "scrape", subject, exc)
        q.record_failure(s, "clean", "x", RuntimeError("r"))
        s.add_all([Cleaning(image_id=a, model_version="r-1", output_key="ka", psnr_vs_input=31.0),
                   Cleaning(image_id=b, model_version="r-1", output_key="kb", psnr_vs_input=22.0),
                   Cleaning(image_id=c, model_version="r-1", output_key="kc", source="duplicate")])
        s.add(TrainingRun(model_version="r-0", status="completed", started_at=utcnow() - timedelta(hours=1)))
        s.add(TrainingRun(model_version="r-1", status="completed"))
    with catalog.session() as s:
        assert q.image_ids_by_url(s, ["http://127.0.0.1/a.png", "http://127.0.0.1/b.png", "nope"]) == {
            "http://127.0.0.1/a.png": a, "http://127.0.0.1/b.png": b}
        assert q.failure_classes(s, "scrape", ["u1", "u2", "zz"]) == {"u1": "TimeoutError", "u2": "ValueError"}
        assert reports.failure_counts(s) == [{"stage": "scrape", "reason": "ValueError", "count": 2},
                                       {"stage": "clean", "reason": "RuntimeError", "count": 1},
                                       {"stage": "scrape", "reason": "TimeoutError", "count": 1}]
        assert reports.failure_counts(s, ["clean"]) == [{"stage": "clean", "reason": "RuntimeError", "count": 1}]
        worst = reports.worst_cleanings(s, "r-1", limit=1)
        assert [(w["image_id"], w["url"], w["output"]) for w in worst] == [(b, "http://127.0.0.1/b.png", "kb")]
        assert len(reports.worst_cleanings(s)) == 2  # model cleanings with a PSNR only
        assert reports.latest_training_run(s).model_version == "r-1"
        assert reports.latest_training_run(s, "r-0").model_version == "r-0"
        assert reports.count_cleanings(s, "r-1") == 3 and reports.count_cleanings(s, "r-2") == 0
        assert reports.count_cleanings(s, since=utcnow() - timedelta(minutes=5)) == 3
        assert reports.count_cleanings(s, since=utcnow() + timedelta(minutes=5)) == 0
