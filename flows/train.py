"""``train``: a remover trained on the clean pool, evaluated on the test split and registered;
promoted only when it beats the promoted one. Deployed as ``train/retrain``:
``prefect deployment run 'train/retrain' --param profile=quick-cpu``."""

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

Profile = Literal["locate-cpu", "localise-cpu", "seed", "quick-cpu", "tiny", "tiny-locate"]
Pairing = Literal["supervised", "self-supervised"]
Perceptual = Literal["imagenet", "random", "off"]


def model_version_of(summary: dict) -> str | None:
    """The registered model's version from a train step summary."""
    for key in ("version", "model_version"):
        if isinstance(summary.get(key), str):
            return summary[key]
    model = summary.get("model")
    return model.get("version") if isinstance(model, dict) else None


@task(name="train-remover", cache_policy=NO_CACHE)
def train_task(settings: Settings, profile: str, pairing: str, max_minutes: float | None,
               from_scratch: bool = False) -> dict:
    from pipeline import train

    since = datetime.now(UTC)
    with open_workspace(settings) as (catalog, blobs):
        progress = artifacts.Progress("train-progress", 100, f"training the remover ({profile}, {pairing})")
        with progress.watch(lambda: summaries.training_percent(catalog, since, max_minutes)):
            summary = train.train_remover(catalog, blobs, settings, profile=profile, pairing=pairing,
                                          max_minutes=max_minutes, log=get_run_logger().info,
                                          from_scratch=from_scratch)
    return small(summary)


@task(name="training-report", cache_policy=NO_CACHE)
def training_report(settings: Settings, model_version: str | None) -> None:
    with open_workspace(settings) as (catalog, _):
        artifacts.publish_training(catalog, model_version)


@flow(name="train", validate_parameters=True)
def train(
    profile: Profile = "locate-cpu",
    pairing: Pairing = "supervised",
    max_minutes: Annotated[float, Field(gt=0, le=7 * 24 * 60)] | None = None,
    perceptual: Perceptual | None = None,
    home: str | None = None,
    from_scratch: bool = False,
) -> dict:
    """Train a remover with ``profile`` (capped at ``max_minutes`` of wall time when given) and
    ``pairing``; ``perceptual`` overrides ``UNMARK_PERCEPTUAL`` (``imagenet`` needs the VGG16
    weights in the torch cache). A run fine-tunes the promoted remover when its network is the
    profile's, unless ``from_scratch``. Publishes a markdown training report; returns the summary."""
    settings = flow_settings(home, perceptual=perceptual)
    get_run_logger().info("train: profile=%s pairing=%s max_minutes=%s perceptual=%s",
                          profile, pairing, max_minutes, perceptual or "the profile's choice")
    summary = train_task(settings, profile, pairing, max_minutes, from_scratch)
    training_report(settings, model_version_of(summary))
    return {"profile": profile, "pairing": pairing, **summary}  # the summary records the perceptual choice
