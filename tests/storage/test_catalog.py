"""Catalog schema: migrations from empty, round trips of every table, pragmas, named queries."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import inspect, text

from storage import open_catalog, pools
from storage import queries as q
from storage.db import current_revision, head_revision
from storage.models import Cleaning, Failure, Image, Model, Page, Sighting, TrainingRun

TABLES = {"pages", "images", "sightings", "models", "training_runs", "cleanings", "failures"}


def _img(sha: str, **kw) -> dict:
    base = {"sha256": sha, "blob_key": f"{sha[:2]}/{sha[2:4]}/{sha}", "mime": "image/png", "width": 100,
            "height": 80, "bytes": 1234, "source": "test"}
    base.update(kw)
    return base


def test_migrates_from_empty_to_head(settings):
    cat = open_catalog(settings.storage)
    assert current_revision(cat.engine) == head_revision()
    names = set(inspect(cat.engine).get_table_names())
    assert TABLES <= names and "alembic_version" in names
    # Opening again is a no-op and keeps data.
    with cat.write() as s:
        q.add_images(s, [_img("a" * 64)])
    cat2 = open_catalog(settings.storage)
    with cat2.session() as s:
        assert s.query(Image).count() == 1


def test_sqlite_pragmas_on_every_connection(catalog):
    with catalog.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 60000


def test_round_trip_every_table(catalog):
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    with catalog.write() as s:
        ids = q.add_images(s, [_img("b" * 64), _img("c" * 64, width=300, height=200)])
        pid = q.upsert_page(s, "http://127.0.0.1/p", "127.0.0.1", status=200, fetched_at=now, etag='"x"',
                            last_modified="Mon", depth=1)
        q.add_sightings(s, [{"image_id": ids["b" * 64], "page_id": pid, "image_url": "http://127.0.0.1/b.png",
                             "alt": "an alt", "found_by": "srcset"}])
        m = q.register_model(s, "r-1", "remover", "ck/ey", {"base": 32}, {"psnr": 30.5})
        s.add(TrainingRun(model_version="r-1", params={"profile": "tiny"}, history=[{"epoch": 1, "loss": 0.5}],
                          status="completed", timings={"total_s": 3.0}))
        s.add(Cleaning(image_id=ids["c" * 64], model_version="r-1", output_key="o/ut/put", psnr_vs_input=33.3,
                       ssim_vs_input=0.97, changed_fraction=0.1, score_before=0.9, score_after=0.1,
                       metrics={"mean_residual": 0.01}, runtime_s=0.2))
        q.record_failure(s, "scrape", "http://127.0.0.1/x", TimeoutError("slow"))
        assert m.id
    with catalog.session() as s:
        page = s.query(Page).one()
        assert (page.url, page.status, page.etag, page.depth) == ("http://127.0.0.1/p", 200, '"x"', 1)
        assert page.fetched_at.replace(tzinfo=UTC) == now
        sig = s.query(Sighting).one()
        assert (sig.alt, sig.found_by, sig.image.sha256) == ("an alt", "srcset", "b" * 64)
        model = s.query(Model).one()
        assert model.config == {"base": 32} and model.metrics == {"psnr": 30.5} and model.promoted is False
        run = s.query(TrainingRun).one()
        assert run.history == [{"epoch": 1, "loss": 0.5}] and run.params["profile"] == "tiny"
        cl = s.query(Cleaning).one()
        assert cl.image.sha256 == "c" * 64 and cl.metrics == {"mean_residual": 0.01}
        f = s.query(Failure).one()
        assert (f.stage, f.error_class, f.message, f.attempts) == ("scrape", "TimeoutError", "slow", 1)
        img = s.query(Image).filter_by(sha256="c" * 64).one()
        assert (img.width, img.height, img.status) == (300, 200, "fetched")


def test_idempotent_inserts_and_failure_attempts(catalog):
    with catalog.write() as s:
        a = q.add_images(s, [_img("d" * 64)])
        b = q.add_images(s, [_img("d" * 64, width=5)])
        assert a == b
        for _ in range(3):
            q.record_failure(s, "dedup", "sha", ValueError("corrupt"))
    with catalog.session() as s:
        assert s.query(Image).count() == 1 and s.query(Image).one().width == 100
        assert s.query(Failure).one().attempts == 3


def test_signed_int64_hashes_round_trip(catalog):
    h = (2**64 - 5) - 2**64  # a hash with the top bit set, stored signed
    with catalog.write() as s:
        q.add_images(s, [_img("e" * 64, phash=h, dhash=2**63 - 1)])
    with catalog.session() as s:
        img = s.query(Image).one()
        assert img.phash == h and img.dhash == 2**63 - 1


def test_promote_keeps_one_promoted_per_kind(catalog):
    with catalog.write() as s:
        q.register_model(s, "r-1", "remover", None, {}, {})
        q.register_model(s, "r-2", "remover", None, {}, {})
        q.register_model(s, "d-1", "detector", None, {}, {})
        q.promote_model(s, "r-1")
        q.promote_model(s, "d-1")
        q.promote_model(s, "r-2")
    with catalog.session() as s:
        assert q.promoted_model(s, "remover").version == "r-2"
        assert q.promoted_model(s, "detector").version == "d-1"
        assert [m.version for m in q.list_models(s, "remover")] == ["r-1", "r-2"]


def test_pools_and_pairs(catalog):
    """Groups: {1 clean, 2 watermarked} -> pair + free asset; {3 watermarked} -> pool; {4,5 clean}."""
    with catalog.write() as s:
        ids = q.add_images(s, [_img(c * 64, width=w) for c, w in zip("12345", [100, 200, 100, 100, 300])])
        i = {k[0]: v for k, v in ids.items()}
        for k, g, label in [("1", "1", "clean"), ("2", "1", "watermarked"), ("3", "3", "watermarked"),
                            ("4", "4", "clean"), ("5", "4", "clean")]:
            img = s.get(Image, i[k])
            img.group_id, img.label = i[g], label
    with catalog.session() as s:
        assert sorted(im.sha256[0] for im in pools.clean_pool(s)) == ["1", "5"]  # best member of group 4 is 5
        assert [im.sha256[0] for im in pools.watermarked_pool(s)] == ["3"]
        assert [(a.sha256[0], b.sha256[0]) for a, b in pools.real_pairs(s)] == [("2", "1")]


def test_split_is_stable_and_balanced():
    import hashlib

    splits = [q.split_for(hashlib.sha256(str(i).encode()).hexdigest()) for i in range(3000)]
    assert splits == [q.split_for(hashlib.sha256(str(i).encode()).hexdigest()) for i in range(3000)]
    frac = {k: splits.count(k) / len(splits) for k in ("train", "val", "test")}
    assert abs(frac["train"] - 0.7) < 0.04 and abs(frac["val"] - 0.2) < 0.04 and abs(frac["test"] - 0.1) < 0.03


def test_list_images_filters_and_latest_cleaning(catalog):
    with catalog.write() as s:
        ids = q.add_images(s, [_img("f" * 64), _img("0" * 64)])
        q.add_sightings(s, [{"image_id": ids["f" * 64], "page_id": None, "image_url": "http://127.0.0.1/f.png",
                             "alt": None, "found_by": "img"}])
        s.get(Image, ids["f" * 64]).status = "cleaned"
        s.add(Cleaning(image_id=ids["f" * 64], model_version="r-1", output_key="k1", psnr_vs_input=25.0))
        s.add(Cleaning(image_id=ids["f" * 64], model_version="r-2", output_key="k2", psnr_vs_input=35.0))
    with catalog.session() as s:
        rows = q.list_images(s, status="cleaned")
        assert len(rows) == 1 and rows[0]["output"] == "k2" and rows[0]["url"] == "http://127.0.0.1/f.png"
        assert q.list_images(s, min_psnr=30)[0]["sha256"] == "f" * 64
        assert q.list_images(s, min_psnr=40) == []
        assert q.list_images(s, model_version="r-1")[0]["output"] == "k1"
        assert len(q.list_images(s)) == 2


def test_linear_head_read_from_the_files_is_alembics_head():
    from storage.db import _linear_head

    assert _linear_head() == head_revision()


def test_opening_a_fresh_or_current_catalog_does_not_import_alembic(settings):
    """An empty database is created at head, and one already at head is opened as it is, both
    without Alembic (start-up cost); alembic_version names the head either way."""
    import subprocess
    import sys

    code = ("import sys; from storage import open_catalog; open_catalog(url=sys.argv[1]); "
            "print('alembic' in sys.modules)")
    for _ in ("fresh", "at head"):
        out = subprocess.run([sys.executable, "-c", code, settings.storage.catalog_url], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.split() == ["False"]
        assert current_revision(open_catalog(settings.storage, migrate_schema=False).engine) == head_revision()


def _schema(engine) -> dict:
    i = inspect(engine)
    out = {}
    for t in sorted(i.get_table_names()):
        out[t] = {
            "columns": [(c["name"], str(c["type"]), c["nullable"], c.get("default")) for c in i.get_columns(t)],
            "pk": i.get_pk_constraint(t),
            "fks": sorted(map(str, i.get_foreign_keys(t))),
            "indexes": sorted(map(str, i.get_indexes(t))),
            "uniques": sorted(map(str, i.get_unique_constraints(t))),
            "checks": sorted(map(str, i.get_check_constraints(t))),
        }
    return out


def test_fresh_schema_is_the_migrated_one(settings):
    """The schema an empty database gets directly (models + stamp) is, table by table, column by
    column, index and constraint by name, the one Alembic's migrations build."""
    from alembic import command

    from storage.db import _alembic_config

    cat = open_catalog(settings.storage, migrate_schema=False)
    with cat.engine.begin() as conn:
        command.upgrade(_alembic_config(conn), "head")
    migrated = _schema(cat.engine)
    with cat.engine.begin() as conn:
        command.downgrade(_alembic_config(conn), "base")
        conn.execute(text("DROP TABLE alembic_version"))
    assert inspect(cat.engine).get_table_names() == []
    cat.dispose()
    fresh = open_catalog(settings.storage)
    assert current_revision(fresh.engine) == head_revision()
    assert _schema(fresh.engine) == migrated


def test_a_catalog_behind_head_is_still_upgraded(settings):
    from alembic import command

    from storage.db import _alembic_config

    cat = open_catalog(settings.storage)
    with cat.engine.begin() as conn:
        command.downgrade(_alembic_config(conn), "-1")
    assert current_revision(cat.engine) != head_revision()
    cat2 = open_catalog(settings.storage)
    assert current_revision(cat2.engine) == head_revision()
    assert "window_hashes" in inspect(cat2.engine).get_table_names()


def test_insert_ignore_fills_defaults_and_takes_rows_with_different_keys(catalog):
    with catalog.write() as s:
        ids = q.add_images(s, [_img("c" * 64), _img("d" * 64, status="clean"), _img("c" * 64, width=7)])
    with catalog.session() as s:
        c, d = s.get(Image, ids["c" * 64]), s.get(Image, ids["d" * 64])
        assert (c.status, c.width, d.status) == ("fetched", 100, "clean")  # the first row of c kept
        assert c.first_seen_at is not None and d.first_seen_at is not None
