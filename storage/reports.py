"""Run reports: counts and rankings that flows publish as artifacts and the demo summarises.

Every function takes a session.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import Cleaning, Failure, Image, TrainingRun
from storage.queries import first_sighting_url


def failure_counts(session: Session, stages: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Failures counted per stage and error class, most frequent first."""
    stmt = select(Failure.stage, Failure.error_class, func.count()).group_by(Failure.stage, Failure.error_class)
    if stages:
        stmt = stmt.where(Failure.stage.in_(list(stages)))
    rows = session.execute(stmt.order_by(func.count().desc(), Failure.stage, Failure.error_class)).all()
    return [{"stage": st, "reason": ec, "count": n} for st, ec, n in rows]


def worst_cleanings(session: Session, model_version: str | None = None, limit: int = 10) -> list[dict[str, Any]]:
    """Model cleanings with the lowest PSNR against their input (the ones to look at first)."""
    stmt = (
        select(Cleaning, Image.sha256, first_sighting_url().label("url"))
        .join(Image, Image.id == Cleaning.image_id)
        .where(Cleaning.source == "model", Cleaning.psnr_vs_input.is_not(None))
        .order_by(Cleaning.psnr_vs_input, Cleaning.id)
        .limit(limit)
    )
    if model_version:
        stmt = stmt.where(Cleaning.model_version == model_version)
    return [
        {"image_id": c.image_id, "sha256": sha, "url": url, "model_version": c.model_version,
         "psnr_vs_input": c.psnr_vs_input, "ssim_vs_input": c.ssim_vs_input,
         "changed_fraction": c.changed_fraction, "score_before": c.score_before, "score_after": c.score_after,
         "output": c.output_key}
        for c, sha, url in session.execute(stmt).all()
    ]


def latest_training_run(session: Session, model_version: str | None = None) -> TrainingRun | None:
    """The newest training run (or the one that produced ``model_version``)."""
    stmt = select(TrainingRun).order_by(TrainingRun.started_at.desc(), TrainingRun.id.desc()).limit(1)
    if model_version:
        stmt = stmt.where(TrainingRun.model_version == model_version)
    return session.scalar(stmt)


def count_cleanings(session: Session, model_version: str | None = None, since: datetime | None = None) -> int:
    """Cleaning rows (of ``model_version``, created at or after ``since``)."""
    stmt = select(func.count()).select_from(Cleaning)
    if model_version:
        stmt = stmt.where(Cleaning.model_version == model_version)
    if since is not None:
        stmt = stmt.where(Cleaning.created_at >= since)
    return session.scalar(stmt) or 0


def cleaning_rows(session: Session, model_version: str | None = None) -> list[dict[str, Any]]:
    """Every cleaning (by ``model_version`` when given), newest first, with its image's keys and size."""
    stmt = (select(Cleaning.id, Cleaning.output_key, Cleaning.source, Cleaning.model_version, Cleaning.psnr_vs_input,
                   Cleaning.ssim_vs_input, Cleaning.changed_fraction, Cleaning.score_before, Cleaning.score_after,
                   Cleaning.runtime_s, Cleaning.metrics, Image.sha256, Image.blob_key, Image.width, Image.height)
            .join(Image, Image.id == Cleaning.image_id).order_by(Cleaning.id.desc()))
    if model_version:
        stmt = stmt.where(Cleaning.model_version == model_version)
    return [{"id": r.id, "sha256": r.sha256, "input_key": r.blob_key, "output_key": r.output_key,
             "source": r.source, "model_version": r.model_version, "width": r.width, "height": r.height,
             "psnr_vs_input": r.psnr_vs_input, "ssim_vs_input": r.ssim_vs_input,
             "changed_fraction": r.changed_fraction, "score_before": r.score_before,
             "score_after": r.score_after, "runtime_s": r.runtime_s, "metrics": dict(r.metrics or {})}
            for r in session.execute(stmt)]
