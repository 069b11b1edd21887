"""``nightly``: ingest, then clean (optionally retraining in between). Deployed as ``nightly/full``;
the demo runs it in Prefect's embedded mode."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from prefect import flow, get_run_logger
from pydantic import AnyHttpUrl, Field

from flows.clean import Device, clean
from flows.ingest import ingest
from flows.train import Pairing, Perceptual, Profile, train


def train_minutes(elapsed_s: float, finish_within_minutes: float | None, reserve_minutes: float,
                  cap_minutes: float | None, floor_minutes: float = 0.5) -> float | None:
    """Minutes left for training so that the run ends within ``finish_within_minutes`` with
    ``reserve_minutes`` kept for cleaning; never more than ``cap_minutes``, never below
    ``floor_minutes`` (a model must come out)."""
    if finish_within_minutes is None:
        return cap_minutes
    left = finish_within_minutes - elapsed_s / 60.0 - reserve_minutes
    left = max(floor_minutes, left)
    return min(left, cap_minutes) if cap_minutes else left


@flow(name="nightly", validate_parameters=True)
def nightly(
    seeds: list[AnyHttpUrl] = [],  # noqa: B006 - Prefect copies parameter defaults per run
    seeds_file: str | None = None,
    max_pages: Annotated[int, Field(ge=1, le=1_000_000)] | None = None,
    max_depth: Annotated[int, Field(ge=0, le=50)] | None = None,
    allow_private_hosts: bool = False,
    retrain_detector: bool = False,
    train_profile: Profile | None = None,
    pairing: Pairing = "supervised",
    train_max_minutes: Annotated[float, Field(gt=0)] | None = None,
    perceptual: Perceptual | None = None,
    finish_within_minutes: Annotated[float, Field(gt=0)] | None = None,
    clean_reserve_minutes: Annotated[float, Field(ge=0)] = 1.5,
    device: Device = "auto",
    home: str | None = None,
    task_runner: Literal["thread", "dask"] | None = None,
) -> dict:
    """``ingest`` then ``clean``. With ``train_profile`` a remover is trained in between; with
    ``finish_within_minutes`` its time cap shrinks so that the whole run fits, keeping
    ``clean_reserve_minutes`` for cleaning. ``task_runner="dask"``: hashing and triage scoring on
    Dask (see ``ingest``); ``max_pages`` and ``max_depth`` as ``ingest``. Returns the three flows'
    summaries."""
    log = get_run_logger()
    start = time.monotonic()
    out: dict = {"ingest": ingest(seeds=seeds, seeds_file=seeds_file, max_pages=max_pages, max_depth=max_depth,
                                  allow_private_hosts=allow_private_hosts, retrain_detector=retrain_detector,
                                  home=home, task_runner=task_runner)}
    if train_profile:
        minutes = train_minutes(time.monotonic() - start, finish_within_minutes, clean_reserve_minutes,
                                train_max_minutes)
        log.info("nightly: training %s for at most %s minutes", train_profile,
                 "unbounded" if minutes is None else f"{minutes:.1f}")
        state = train(profile=train_profile, pairing=pairing, max_minutes=minutes, perceptual=perceptual,
                      home=home, return_state=True)
        result = state.result(raise_on_failure=False)
        if state.is_completed():
            out["train"] = result
        elif type(result).__name__ == "NotEnoughImages":
            # Too few clean images to retrain is a finding, not a reason to leave the pool uncleaned.
            log.warning("nightly: no retraining: %s; cleaning with the promoted remover", result)
            out["train"] = {"skipped": str(result)}
        else:
            raise result if isinstance(result, BaseException) else RuntimeError(f"train ended {state.name}")
    out["clean"] = clean(device=device, home=home)
    out["minutes"] = round((time.monotonic() - start) / 60.0, 2)
    return out
