"""Settings by stage: the flat ``UNMARK_<FIELD>`` variables and flat overrides reach their stage,
a typo is named, and ``updated`` copies."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from pipeline.config import STAGE_OF, STAGES, Settings, UnknownSettingError, load_settings


@pytest.mark.parametrize(("var", "value", "stage", "field", "want"), [
    ("UNMARK_MAX_PAGES", "7", "scrape", "max_pages", 7),
    ("UNMARK_RENDER", "auto", "scrape", "render", "auto"),
    ("UNMARK_CLEAN_TILE", "48", "clean", "clean_tile", 48),
    ("UNMARK_NUM_WORKERS", "0", "clean", "num_workers", 0),
    ("UNMARK_CATALOG_URL", "sqlite:////tmp/elsewhere.sqlite", "storage", "catalog_url", "sqlite:////tmp/elsewhere.sqlite"),
    ("UNMARK_WRITE_BATCH_SIZE", "3", "storage", "write_batch_size", 3),
    ("UNMARK_MAX_IMAGE_PIXELS", "1000", "images", "max_image_pixels", 1000),
    ("UNMARK_DEDUP_THRESHOLD", "9", "dedup", "dedup_threshold", 9),
    ("UNMARK_DETECTOR_MAX_MINUTES", "1.5", "triage", "detector_max_minutes", 1.5),
    ("UNMARK_DEVICE", "cpu", "models", "device", "cpu"),
    ("UNMARK_PERCEPTUAL", "off", "train", "perceptual", "off"),
    ("UNMARK_TASK_RUNNER", "dask", "scale", "task_runner", "dask"),
])
def test_an_environment_variable_reaches_its_stage(monkeypatch, tmp_path, var, value, stage, field, want):
    monkeypatch.setenv(var, value)
    settings = load_settings(home=tmp_path)
    assert getattr(getattr(settings, stage), field) == want
    assert field in getattr(settings, stage).model_fields_set  # set explicitly, as train's perceptual rule reads it


def test_home_alone_places_the_catalog_and_blobs_inside_it(monkeypatch, tmp_path):
    monkeypatch.setenv("UNMARK_HOME", str(tmp_path / "h"))
    settings = load_settings()
    assert settings.home == tmp_path / "h" == settings.storage.home
    assert settings.storage.catalog_url == f"sqlite:///{(tmp_path / 'h' / 'catalog.sqlite').resolve()}"
    assert Path(settings.storage.blob_root) == (tmp_path / "h" / "blobs").resolve()
    assert (settings.runs_dir, settings.reports_dir) == (tmp_path / "h" / "runs", tmp_path / "h" / "reports")
    assert settings.blob_storage_options() == {} == settings.storage.blob_storage_options()


def test_flat_overrides_are_routed_and_win_over_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("UNMARK_MAX_PAGES", "7")
    monkeypatch.setenv("UNMARK_MAX_DEPTH", "1")
    settings = load_settings(home=tmp_path, max_pages=50, clean_tile=64, blob_region="eu-west-1", dedup_workers=1)
    assert (settings.scrape.max_pages, settings.scrape.max_depth) == (50, 1)  # the override, then the environment
    assert settings.clean.clean_tile == 64 and settings.dedup.dedup_workers == 1
    assert settings.blob_storage_options() == {"client_kwargs": {"region_name": "eu-west-1"}}
    assert settings.clean.clean_overlap is None and settings.triage.detector_steps == 6000  # defaults elsewhere


def test_a_misspelt_setting_is_named(tmp_path):
    with pytest.raises(UnknownSettingError, match="'max_page'.*'max_pages'") as err:
        load_settings(home=tmp_path, max_page=5)
    assert err.value.name == "max_page"
    with pytest.raises(TypeError, match="'no_such_thing'"):  # a TypeError, like any unexpected keyword
        load_settings(no_such_thing=1)
    with pytest.raises(UnknownSettingError, match="'clean_tiles'"):
        load_settings(home=tmp_path).updated(clean_tiles=3)


def test_every_field_lives_in_exactly_one_stage():
    for stage, cls in STAGES.items():
        assert cls.model_config["env_prefix"] == "UNMARK_"
        assert isinstance(getattr(Settings(), stage), cls)
        assert all(STAGE_OF[f] == stage for f in cls.model_fields)
    assert len(STAGE_OF) == sum(len(cls.model_fields) for cls in STAGES.values())


def test_updated_copies_with_flat_overrides(settings):
    new = settings.updated(max_retries="0", clean_tile=48, perceptual="random")
    assert (new.scrape.max_retries, new.clean.clean_tile, new.train.perceptual) == (0, 48, "random")
    assert isinstance(new.scrape.max_retries, int)  # validated, not stored as given
    assert "perceptual" in new.train.model_fields_set and "perceptual" not in settings.train.model_fields_set
    assert (settings.scrape.max_retries, settings.clean.clean_tile, settings.train.perceptual) == (3, None, "imagenet")
    assert new.storage.catalog_url == settings.storage.catalog_url and new.scrape.max_pages == settings.scrape.max_pages
    new.dedup.dedup_threshold = 1  # an unchanged stage is a copy too
    assert settings.dedup.dedup_threshold == 22
    with pytest.raises(ValidationError):
        settings.updated(max_retries="many")
