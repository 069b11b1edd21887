"""``clean``: batch inference over the watermarked images the promoted (or named) remover has not
cleaned yet, then the HTML report. Deployed as ``clean/after-ingest``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from flows import artifacts
from flows.runtime import flow_settings, small
from pipeline import summaries
from pipeline.config import Settings
from pipeline.workspace import open_workspace

Device = Literal["auto", "cpu", "cuda"]


@task(name="clean-pool", cache_policy=NO_CACHE)
def clean_task(settings: Settings, model_version: str, device: str, mask: dict | None = None) -> dict:
    from model.remover.masks import MaskRule
    from pipeline import clean

    since = datetime.now(UTC)
    with open_workspace(settings) as (catalog, blobs):
        total = summaries.pending_cleanings(catalog, model_version)
        progress = artifacts.Progress("clean-progress", 100, f"cleaning {total} images with {model_version}")
        with progress.watch(lambda: summaries.cleaning_percent(catalog, model_version, since, total)):
            summary = clean.clean(catalog, blobs, settings, model_version=model_version, device=device,
                                  mask_rule=MaskRule.given(**(mask or {})))
        artifacts.publish_worst_cleanings(catalog, model_version)
    return small(summary)


@task(name="report", cache_policy=NO_CACHE)
def report_task(settings: Settings) -> str:
    from pipeline import report

    with open_workspace(settings) as (catalog, blobs):
        return str(report.report(catalog, blobs, settings))


@flow(name="clean", validate_parameters=True)
def clean(
    model_version: Annotated[str, Field(min_length=1, max_length=64)] | None = None,
    device: Device = "auto",
    write_report: bool = True,
    home: str | None = None,
    threshold: Annotated[float, Field(gt=0, lt=1)] | None = None,
    dilate: Annotated[int, Field(ge=0, le=512)] | None = None,
    feather: Annotated[int, Field(ge=0, le=512)] | None = None,
) -> dict:
    """Clean the watermarked pool with ``model_version`` (default: the promoted remover) and
    write the HTML report. Without any remover it cleans nothing, says so, and still writes the
    report (counts, triage, failures). ``threshold``/``dilate``/``feather`` set the mask rule
    (``model.remover.masks.MaskRule``; each unset one takes its default, 0.5 / 1 / 0); with none of them
    the model's own output rule applies."""
    log = get_run_logger()
    settings = flow_settings(home)
    with open_workspace(settings) as (catalog, _):
        version = model_version or summaries.promoted_version(catalog)
    if version is None:
        log.warning("clean: no promoted remover yet; run the train flow first (nothing cleaned)")
        summary = {"model_version": None, "skipped": "no promoted remover"}
    else:
        mask = {"threshold": threshold, "dilate": dilate, "feather": feather}
        summary = {"model_version": version, **clean_task(settings, version, device, mask)}
    if write_report:
        summary["report"] = report_task(settings)
    return summary
