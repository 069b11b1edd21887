"""The flows under Prefect's test harness: parameter validation, the artifacts they publish, and
the whole pipeline on a tiny site served on 127.0.0.1."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.exceptions import ParameterTypeError
from rich.console import Console

from flows import artifacts
from flows.clean import clean
from flows.demo import run_demo
from flows.ingest import ingest
from flows.nightly import nightly
from flows.runtime import flow_settings
from flows.train import train
from pipeline import summaries
from pipeline.workspace import open_workspace
from storage import queries as q

pytestmark = pytest.mark.usefixtures("prefect_harness")


def latest_artifact(key: str):
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    assert found, f"no artifact {key!r}"
    return max(found, key=lambda a: a.created)


@pytest.mark.parametrize(
    ("run", "kwargs"),
    [
        (ingest, {"seeds": ["ftp://example.test/"]}),
        (ingest, {"max_pages": 0}),
        (ingest, {"max_depth": -1}),
        (train, {"profile": "huge"}),
        (train, {"max_minutes": 0}),
        (train, {"perceptual": "vgg19"}),
        (clean, {"device": "tpu"}),
        (clean, {"threshold": 1.5}),
        (clean, {"dilate": -1}),
        (clean, {"feather": -2}),
        (nightly, {"train_profile": "seed-ish"}),
        (nightly, {"finish_within_minutes": -1}),
    ],
)
def test_invalid_parameters_are_refused_before_any_work(run, kwargs, settings):
    with pytest.raises(ParameterTypeError):
        run(home=str(settings.home), **kwargs)
    assert not (settings.home / "catalog.sqlite").exists()  # nothing ran


def test_clean_without_a_remover_cleans_nothing_and_says_so(settings):
    out = clean(home=str(settings.home))
    assert out["model_version"] is None and out["skipped"] == "no promoted remover"
    assert Path(out["report"]).exists()  # the report still shows the catalog


def test_clean_flow_passes_the_mask_controls_to_every_cleaning(settings, catalog, blobs, tmp_path, monkeypatch):
    import io

    import numpy as np
    from PIL import Image
    from sqlalchemy import select

    from storage.models import Cleaning
    from tests.pipeline.test_clean import add_image, register_remover, tiny_remover

    monkeypatch.setenv("UNMARK_NUM_WORKERS", "0")
    monkeypatch.setenv("UNMARK_CLEAN_TILE", "48")
    register_remover(catalog, blobs, tiny_remover(tmp_path))
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buf, "PNG")
    add_image(catalog, blobs, buf.getvalue(), "watermarked", 40, 40)
    out = clean(home=str(settings.home), write_report=False, dilate=4, feather=2)
    assert out["cleaned"] == 1 and (out["mask_threshold"], out["mask_dilate"], out["mask_feather"]) == (0.5, 4, 2)
    with catalog.session() as s:
        m = s.scalar(select(Cleaning.metrics))
    assert (m["harden_mask"], m["mask_dilate"], m["mask_feather"]) == (True, 4, 2)


def test_artifacts_and_progress_reach_the_api(settings, catalog):
    with catalog.write() as s:
        q.record_failure(s, "scrape", "http://x.test/a.jpg", "cut short", error_class="BadImage")

    @flow
    def report_flow(home: str) -> None:
        with open_workspace(flow_settings(home)) as (cat, _):
            artifacts.publish_ingest(cat, {"seeds": 2})
            artifacts.publish_training(cat, None)
            artifacts.publish_worst_cleanings(cat, None)
        seen = []
        progress = artifacts.Progress("test-progress", 100, "test")
        with progress.watch(lambda: seen.append(1) or 40.0, every_s=0.2):
            time.sleep(1.0)
        assert seen, "the watcher never polled"

    report_flow(str(settings.home))
    table = latest_artifact("ingest-counts")
    assert table.type == "table" and "BadImage" in str(table.data) and "failure:scrape" in str(table.data)
    assert "2 seeds" in table.description
    assert latest_artifact("train-report").type == "markdown"
    assert "no model cleanings" in str(latest_artifact("worst-cleanings").data)
    progress = latest_artifact("test-progress")
    assert progress.type == "progress" and progress.data == 100.0


@pytest.mark.slow
def test_ingest_on_a_tiny_site_then_rerun_is_idempotent(settings, tiny_site, small_steps):
    manifest, url = tiny_site
    out = ingest(seeds=[url + "index.html"], allow_private_hosts=True, max_pages=50, home=str(settings.home))
    assert out["seeds"] == 1 and out["batches"] == 1
    with open_workspace(settings) as (catalog, _):
        stats = summaries.catalog_counts(catalog)
        with catalog.session() as s:
            rows = q.list_images(s)
    assert stats["pages"] == len(manifest.pages)
    distinct = len({(manifest.root / p).read_bytes() for p in manifest.image_files})
    assert len(rows) == distinct  # every published image once, broken ones not
    assert all(r["label"] in ("clean", "watermarked", "uncertain") for r in rows)  # triaged
    assert all(r["dedup_role"] in ("canonical", "duplicate") for r in rows)  # deduplicated
    assert sum(stats["failures"].values()) >= len(manifest.broken)  # broken files are failure rows
    table = json.loads(latest_artifact("ingest-counts").data)
    assert sum(r["count"] for r in table if r["kind"] == "status") == len(rows)
    assert sum(r["count"] for r in table if r["kind"].startswith("failure:")) == sum(stats["failures"].values())
    assert latest_artifact("ingest-progress").data == 100.0
    assert latest_artifact("triage-progress").data == 100.0

    again = ingest(seeds=[url + "index.html"], allow_private_hosts=True, max_pages=50, home=str(settings.home))
    assert again["catalog"]["images"] == stats["images"]
    with open_workspace(settings) as (catalog, _), catalog.session() as s:
        assert [(r["sha256"], r["label"]) for r in q.list_images(s)] == [(r["sha256"], r["label"]) for r in rows]


@pytest.mark.slow
def test_nightly_ingests_then_cleans_and_reports(settings, tiny_site, small_steps):
    _, url = tiny_site
    out = nightly(seeds=[url + "index.html"], allow_private_hosts=True, max_pages=50, device="cpu",
                  home=str(settings.home))
    assert set(out) == {"ingest", "clean", "minutes"}  # no train_profile: no training
    assert out["ingest"]["catalog"]["pages"] == 9
    assert out["clean"]["skipped"] == "no promoted remover" and Path(out["clean"]["report"]).exists()


@pytest.mark.slow
def test_demo_runs_the_pipeline_on_its_site_and_cleans_the_watermarked_pool(settings, small_steps):
    """``run_demo`` as ``unmark demo`` runs it, on a smaller site with the ``tiny`` profile:
    ingest, training, cleaning and the report, the progress display and the summary table."""
    console = Console(record=True, width=200)
    out = run_demo(settings, minutes=6.0, perceptual="off", console=console, profile="tiny",
                   photos=["astronaut", "chelsea", "coffee", "rocket", "china", "flower"], max_side=128,
                   use_shipped=False)  # the tiny run's own remover is the one cleaning
    text = console.export_text()
    assert "perceptual loss: off" in text and "Unmark demo" in text and "images by status" in text
    assert "train: tiny" in text and "clean:" in text  # the progress display's stages
    assert set(out) >= {"ingest", "review", "train", "clean", "minutes", "site", "report", "wall_minutes"}
    assert out["report"].endswith("index.html") and Path(out["report"]).exists()
    assert "report:" in text
    for key in ("ingest-progress", "triage-progress"):
        assert latest_artifact(key).data == 100.0, key
    # The demo trusts the shipped detector: it reports triage against the site's truth and changes nothing.
    review = out["review"]
    site = review["site"]
    n_site = out["site"]["clean"] + out["site"]["watermarked"] + out["site"]["near_duplicates"]
    assert site["watermarked"] == 6 + 2 and 0 < site["images"] <= n_site and site["right"] <= site["images"]
    assert f"triage on the site: {site['right']} of {site['images']} images right" in text
    assert review["accuracy"] == site["right"] / site["images"]
    with open_workspace(settings) as (catalog, _):
        assert summaries.pool_sizes(catalog) == review["pools"]  # triage's own labels, unchanged
    if min(review["pools"][k] for k in ("train", "val", "test")) == 0:
        assert "training skipped" in text and "empty" in out["train"]["skipped"]
        assert out["clean"]["skipped"] == "no promoted remover"
        return
    assert out["train"]["perceptual"] == "off" and out["train"]["profile"] == "tiny"
    version = out["clean"]["model_version"]
    assert version == out["train"]["version"]
    with open_workspace(settings) as (catalog, _):
        assert summaries.promoted_version(catalog) == version
        assert summaries.pending_cleanings(catalog, version) == 0  # the whole pool is cleaned
        with catalog.session() as s:
            cleaned = [r for r in q.list_images(s) if r.get("output")]
    assert len(cleaned) >= review["pools"]["watermarked"] and all(r["model_version"] == version for r in cleaned)
    md = latest_artifact("train-report").data
    assert f"# Training report: {version}" in md and "## Test metrics" in md and "## Curves" in md
    for key in ("train-progress", "clean-progress"):
        assert latest_artifact(key).data == 100.0, key
    worst = json.loads(latest_artifact("worst-cleanings").data)
    model_rows = [r for r in worst if "psnr_vs_input" in r]
    assert [r["psnr_vs_input"] for r in model_rows] == sorted(r["psnr_vs_input"] for r in model_rows)
