"""The pieces the flows are made of, without running a flow: seed batching, seed files, summary
merging, the training time budget, and the run reports built from a real catalog."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError
from sqlalchemy import update

from flows.ingest import read_seeds, seed_batches
from flows.nightly import train_minutes
from flows.runtime import merge_counts, small
from pipeline import summaries
from storage import queries as q
from storage.models import Cleaning, Failure, Image, TrainingRun


def test_seed_batches_keep_each_host_in_one_batch():
    seeds = [f"http://h{i % 5}.test/p{i}" for i in range(20)] + ["http://h0.test/p0"]
    batches = seed_batches(seeds, hosts_per_batch=2)
    assert len(batches) == 3  # 5 hosts, 2 per batch
    hosts = [{u.split("/")[2] for u in b} for b in batches]
    assert [len(h) for h in hosts] == [2, 2, 1]
    assert set().union(*hosts) == {f"h{i}.test" for i in range(5)}
    assert all(not (a & b) for i, a in enumerate(hosts) for b in hosts[i + 1 :])
    flat = [u for b in batches for u in b]
    assert sorted(flat) == sorted(set(seeds))  # every seed once, duplicates dropped


def test_read_seeds_from_named_file_and_default_file(settings, tmp_path):
    f = tmp_path / "seeds.txt"
    f.write_text("# nightly seeds\nhttp://a.test/\n\n  https://b.test/x  # trailing comment\n")
    assert read_seeds(settings, ["http://c.test/"], str(f)) == ["http://c.test/", "http://a.test/", "https://b.test/x"]
    # UNMARK_HOME/seeds.txt is read only when the run names no seeds.
    settings.home.mkdir(parents=True, exist_ok=True)
    (settings.home / "seeds.txt").write_text("http://d.test/\n")
    assert read_seeds(settings, [], None) == ["http://d.test/"]
    assert read_seeds(settings, ["http://e.test/"], None) == ["http://e.test/"]
    f.write_text("http://r.test/ render=always  # a per-seed option rides along to the scraper\n")
    assert read_seeds(settings, [], str(f)) == ["http://r.test/ render=always"]
    f.write_text("ftp://nope.test/\n")
    with pytest.raises(ValidationError):
        read_seeds(settings, [], str(f))


def test_merge_counts_sums_numbers_and_nested_dicts():
    merged = merge_counts([
        {"pages": 3, "images": 10, "failures": {"fetch": 1}, "host": "a", "ok": True},
        {"pages": 2, "images": 5, "failures": {"fetch": 2, "parse": 1}, "host": "b", "ok": False},
        None,
    ])
    assert merged == {"pages": 5, "images": 15, "failures": {"fetch": 3, "parse": 1}, "host": "b", "ok": False}


def test_small_keeps_results_serialisable():
    out = small({"path": summaries, "rows": list(range(100)), "n": 1})
    assert out["n"] == 1 and len(out["rows"]) == 40 and isinstance(out["path"], str)


def test_train_minutes_fits_the_deadline():
    assert train_minutes(0, None, 1.5, None) is None
    assert train_minutes(0, None, 1.5, 8.0) == 8.0
    assert train_minutes(120, 13.0, 1.5, None) == pytest.approx(9.5)
    assert train_minutes(120, 13.0, 1.5, 5.0) == 5.0
    assert train_minutes(900, 13.0, 1.5, None) == 0.5  # late: still a short run, so a model exists


def test_sparkline():
    assert summaries.sparkline([1.0, 2.0, 3.0, 4.0]) == "▁▃▆█"
    assert summaries.sparkline([None, 2.0, 2.0]) == " ▁▁"
    assert summaries.sparkline([]) == ""


def _image(sha: str, **kw) -> dict:
    return {"sha256": sha, "blob_key": f"{sha[:2]}/{sha[2:4]}/{sha}", "mime": "image/png", "width": 64,
            "height": 64, "bytes": 100, "source": "test", **kw}


def test_ingest_rows_count_statuses_roles_and_failure_reasons(catalog):
    with catalog.write() as s:
        q.add_images(s, [_image("a" * 64), _image("b" * 64), _image("c" * 64)])
        s.execute(update(Image).where(Image.sha256 == "a" * 64).values(status="clean", dedup_role="canonical"))
        q.record_failure(s, "scrape", "http://x.test/1.jpg", "truncated", error_class="BadImage")
        q.record_failure(s, "scrape", "http://x.test/2.jpg", "truncated", error_class="BadImage")
        q.record_failure(s, "scrape", "http://x.test/3.jpg", "404", error_class="HTTPError")
        q.upsert_page(s, "http://x.test/", "x.test", status=200)
    rows = {(r["kind"], r["name"]): r["count"] for r in summaries.ingest_rows(catalog)}
    assert rows == {
        ("pages", "pages"): 1,
        ("status", "clean"): 1,
        ("status", "fetched"): 2,
        ("dedup", "canonical"): 1,
        ("failure:scrape", "BadImage"): 2,
        ("failure:scrape", "HTTPError"): 1,
    }
    with catalog.session() as s:
        assert s.query(Failure).count() == 3


def test_training_markdown_has_curves_metrics_and_promotion(catalog):
    history = [{"epoch": i, "loss": 1.0 / (i + 1), "val_psnr": 20.0 + i} for i in range(4)]
    with catalog.write() as s:
        s.add(TrainingRun(model_version="r1", params={"profile": "tiny", "epochs": 4}, history=history,
                          status="completed", timings={"train_s": 12.5}, run_dir="/tmp/run-r1"))
        q.register_model(s, "r1", "remover", None, {"base": 8}, {"test": {"psnr": 31.25, "ssim": 0.91}})
        q.promote_model(s, "r1")
    md = summaries.training_markdown(catalog, "r1")
    assert "# Training report: r1" in md and "Status **completed**" in md
    assert "| val_psnr | 20 | 23 | `▁▃▆█` |" in md  # the curve of val PSNR over 4 epochs
    assert "| 3 | 0.25 | 23 |" in md  # the per-epoch table's last row
    assert "| test.psnr | 31.25 |" in md and "Promoted: **yes**" in md
    assert "`/tmp/run-r1`" in md
    assert "No training run" in summaries.training_markdown(catalog, "missing")


def test_worst_cleanings_and_progress_shares(catalog):
    with catalog.write() as s:
        ids = q.add_images(s, [_image(c * 64, label="watermarked", status="watermarked") for c in "abcd"])
        q.register_model(s, "m1", "remover", None, {}, {})
        q.promote_model(s, "m1")
        for i, (sha, psnr) in enumerate(zip(["a" * 64, "b" * 64, "c" * 64], [35.0, 18.0, 27.0], strict=True)):
            s.add(Cleaning(image_id=ids[sha], model_version="m1", output_key=f"out{i}", psnr_vs_input=psnr))
    rows = summaries.worst_cleaning_rows(catalog, "m1", limit=2)
    assert [r["psnr_vs_input"] for r in rows] == [18.0, 27.0]
    assert summaries.promoted_version(catalog) == "m1"
    assert summaries.pending_cleanings(catalog, "m1") == 1
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    assert summaries.cleaning_percent(catalog, "m1", long_ago, total=4) == 75.0
    assert summaries.cleaning_percent(catalog, "m1", datetime.now(UTC) + timedelta(hours=1), total=4) == 0.0


def test_training_percent_from_epochs_then_from_time(catalog):
    since = datetime.now(UTC) - timedelta(seconds=1)
    assert summaries.training_percent(catalog, since, None) is None
    assert 0 < summaries.training_percent(catalog, datetime.now(UTC) - timedelta(minutes=1), 4.0) < 30
    with catalog.write() as s:
        s.add(TrainingRun(params={"epochs": 8}, history=[{"epoch": 0}, {"epoch": 1}], status="running"))
    assert summaries.training_percent(catalog, since, 4.0) == 25.0


def test_the_train_flow_offers_the_model_side_vocabularies():
    """Prefect needs literal parameter types; they must name what the model side accepts."""
    from typing import get_args

    from flows.train import Pairing, Perceptual, Profile
    from model.remover.trainconfig import PERCEPTUAL_CHOICES, PROFILES
    from model.synth.pairs import PAIRINGS

    assert set(get_args(Profile)) == set(PROFILES)
    assert get_args(Pairing) == PAIRINGS and set(get_args(Perceptual)) == set(PERCEPTUAL_CHOICES)
