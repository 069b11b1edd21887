"""The ``training_runs`` rows: opened ``running``, their history saved each epoch, closed
``completed`` or ``failed`` (a run interrupted by Ctrl-C stays ``running`` and resumable)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from storage.models import TrainingRun, utcnow


def running_runs(session: Session, kind: str) -> list[tuple[int, str, str | None, dict]]:
    """``(id, model_version, run_dir, params)`` of the ``kind`` runs still ``running``, newest first."""
    return [tuple(r) for r in session.execute(
        select(TrainingRun.id, TrainingRun.model_version, TrainingRun.run_dir, TrainingRun.params)
        .where(TrainingRun.status == "running", TrainingRun.kind == kind)
        .order_by(TrainingRun.id.desc())).all()]


def run_of(session: Session, version: str) -> TrainingRun | None:
    """The newest run that produced ``version``."""
    return session.scalar(select(TrainingRun).where(TrainingRun.model_version == version)
                          .order_by(TrainingRun.id.desc()))


def open_run(session: Session, version: str, kind: str, params: dict, run_dir: str) -> int:
    """A new ``running`` row; returns its id."""
    row = TrainingRun(model_version=version, kind=kind, params=params, status="running", run_dir=run_dir)
    session.add(row)
    session.flush()
    return row.id


def save_history(session: Session, run_id: int, history: list[dict]) -> None:
    session.execute(update(TrainingRun).where(TrainingRun.id == run_id).values(history=list(history)))


def fail_run(session: Session, run_id: int, exc: BaseException) -> None:
    """An error closes the run ``failed``; a Ctrl-C (not an ``Exception``) leaves it ``running``,
    so the next run with the same parameters resumes it."""
    session.execute(update(TrainingRun).where(TrainingRun.id == run_id).values(
        status="failed" if isinstance(exc, Exception) else "running",
        error=f"{type(exc).__name__}: {exc}"[:4000], finished_at=utcnow()))


def complete_run(session: Session, run_id: int, history: list[dict], timings: dict[str, Any]) -> None:
    session.execute(update(TrainingRun).where(TrainingRun.id == run_id).values(
        status="completed", history=history, timings=timings, finished_at=utcnow(), error=None))
