"""Work claiming: several workers share a stage's images and never take the same one.

A stage (``clean:<model version>``, say) has one ``claims`` row per image to do. A worker
``claim()``s a batch: free rows (no live lease, not done) become its own for ``lease_s`` seconds.
It does the work and, in the transaction that writes the results, ``complete()``s them, which
succeeds only for rows it still holds; results for rows it lost are dropped, so each image's work
is recorded exactly once. A worker that dies holds nothing once its lease runs out. Long batches
``renew()`` their lease; a worker that stops early ``release()``s what it has not done.

PostgreSQL: the batch is picked with ``SELECT … FOR UPDATE SKIP LOCKED``, so claimers never wait
on each other, and lease times come from the database clock (workers on other machines may
disagree about the time). SQLite: the claim runs in a ``BEGIN IMMEDIATE`` transaction
(``Catalog.write()``), which serialises claimers on one file.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, and_, case, false, func, select, update
from sqlalchemy.orm import Session

from storage.db import Catalog, chunked, insert_ignore
from storage.models import Claim

FREE = datetime(1970, 1, 1, tzinfo=UTC)  # expires_at of a row nobody holds


def worker_id(name: str | None = None) -> str:
    """A worker id unique across machines and restarts: ``[name@]host:pid:random``."""
    base = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    return f"{name}@{base}"[:128] if name else base


def db_now(session: Session) -> datetime:
    """The time leases are measured in: the database's clock on PostgreSQL (shared by every
    worker), this machine's on SQLite (a file on this machine)."""
    if session.get_bind().dialect.name == "postgresql":
        return session.scalar(select(func.now()))
    return datetime.now(UTC)


def enqueue(session: Session, stage: str, image_ids: Iterable[int]) -> int:
    """Add work units for ``image_ids`` (idempotent: known rows, done or not, are kept as they
    are). Returns how many ids were given."""
    ids = sorted(set(image_ids))
    for part in chunked(ids, 500):
        insert_ignore(
            session,
            Claim,
            [{"stage": stage, "image_id": i, "expires_at": FREE, "attempts": 0} for i in part],
            ["stage", "image_id"],
        )
    return len(ids)


def reopen(session: Session, stage: str, image_ids: Iterable[int], unless: ColumnElement[bool] | None = None) -> int:
    """Make done rows among ``image_ids`` claimable again, with a fresh attempt count: work that
    ended without a result (a failure) and that a new run should retry. ``unless`` is an SQL
    condition on ``Claim`` (say, "a result row exists"), checked in the same statement, so a row
    that another worker completes with a result meanwhile is never reopened. Returns how many."""
    ids = sorted(set(image_ids))
    n = 0
    for part in chunked(ids, 500):
        cond = [Claim.stage == stage, Claim.image_id.in_(part), Claim.done_at.is_not(None)]
        if unless is not None:
            cond.append(~unless)
        res = session.execute(
            update(Claim).where(*cond).values(done_at=None, worker=None, expires_at=FREE, attempts=0)
            .execution_options(synchronize_session=False)
        )
        n += res.rowcount
    return n


def claim(
    catalog: Catalog,
    stage: str,
    worker: str,
    limit: int,
    lease_s: float = 300.0,
    max_attempts: int | None = 5,
) -> list[int]:
    """Take up to ``limit`` free image ids of ``stage`` for ``worker`` (committed before it
    returns). Free: not done, and never claimed or its lease expired. Rows already claimed
    ``max_attempts`` times (images that kill their worker) are left alone. Retried whole after a
    lost connection (``Catalog.transact``)."""
    return catalog.transact(_claim, stage, worker, limit, lease_s, max_attempts)


def _claim(s: Session, stage: str, worker: str, limit: int, lease_s: float, max_attempts: int | None) -> list[int]:
    now = db_now(s)
    free = [Claim.stage == stage, Claim.done_at.is_(None), Claim.expires_at <= now]
    if max_attempts is not None:
        free.append(Claim.attempts < max_attempts)
    pick = (
        select(Claim.image_id)
        .where(*free)
        .order_by(Claim.image_id)
        .limit(limit)
        .with_for_update(skip_locked=True)  # rendered on PostgreSQL only
    )
    ids = list(s.scalars(pick))
    if ids:
        s.execute(
            update(Claim)
            .where(Claim.stage == stage, Claim.image_id.in_(ids))
            .values(worker=worker, claimed_at=now, expires_at=now + timedelta(seconds=lease_s),
                    attempts=Claim.attempts + 1)
        )
    return ids


def renew(catalog: Catalog, stage: str, worker: str, image_ids: Sequence[int], lease_s: float = 300.0) -> list[int]:
    """Extend ``worker``'s lease on those of ``image_ids`` it still holds; returns them."""
    if not image_ids:
        return []

    def once(s: Session) -> list[int]:
        now = db_now(s)
        held = s.scalars(
            update(Claim)
            .where(Claim.stage == stage, Claim.image_id.in_(list(image_ids)), Claim.worker == worker,
                   Claim.done_at.is_(None))
            .values(expires_at=now + timedelta(seconds=lease_s))
            .returning(Claim.image_id)
        )
        return sorted(held)
    return catalog.transact(once)


def complete(session: Session, stage: str, worker: str, image_ids: Sequence[int]) -> list[int]:
    """Mark done the rows of ``image_ids`` that ``worker`` still holds, inside the caller's write
    transaction; returns those ids. Write results only for them: an id missing here was taken
    over by another worker after this one's lease ran out, and that worker records it."""
    if not image_ids:
        return []
    now = db_now(session)
    done = session.scalars(
        update(Claim)
        .where(Claim.stage == stage, Claim.image_id.in_(list(image_ids)), Claim.worker == worker,
               Claim.done_at.is_(None))
        .values(done_at=now)
        .returning(Claim.image_id)
    )
    return sorted(done)


def release(catalog: Catalog, stage: str, worker: str, image_ids: Sequence[int] | None = None) -> int:
    """Give back (all, or ``image_ids`` of) what ``worker`` holds and has not done, so others can
    take it at once; a release does not count as an attempt. Returns how many rows."""
    def once(s: Session) -> int:
        cond = [Claim.stage == stage, Claim.worker == worker, Claim.done_at.is_(None)]
        if image_ids is not None:
            cond.append(Claim.image_id.in_(list(image_ids)))
        res = s.execute(
            update(Claim)
            .where(*cond)
            .values(worker=None, expires_at=FREE, attempts=case((Claim.attempts > 0, Claim.attempts - 1), else_=0))
        )
        return res.rowcount
    return catalog.transact(once)


def _local_pid(worker: str, host: str) -> int | None:
    """The process id in a ``worker_id`` made on ``host``; None for other machines."""
    try:
        whost, pid, _ = worker.rsplit("@", 1)[-1].rsplit(":", 2)
        return int(pid) if whost == host else None
    except ValueError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process that its parent has not reaped yet is a zombie: dead for us
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def free_dead_local(catalog: Catalog, stage: str) -> int:
    """Free at once the live leases of workers on this machine whose process has exited (a
    killed run, re-run by hand), instead of waiting for them to expire; returns how many rows.
    Workers on other machines are left to their leases. (Two containers that share a hostname
    but not a process namespace would see each other as dead: the cost is work done twice, never
    recorded twice, since ``complete()`` keeps only the holder's results.)"""
    host = socket.gethostname()
    with catalog.session() as s:
        now = db_now(s)
        workers = s.scalars(
            select(Claim.worker).distinct()
            .where(Claim.stage == stage, Claim.done_at.is_(None), Claim.expires_at > now, Claim.worker.is_not(None))
        ).all()
    dead = [w for w in workers if (pid := _local_pid(w, host)) is not None and pid != os.getpid() and not _alive(pid)]
    if not dead:
        return 0
    with catalog.write() as s:
        res = s.execute(
            update(Claim)
            .where(Claim.stage == stage, Claim.worker.in_(dead), Claim.done_at.is_(None))
            .values(worker=None, expires_at=FREE)
        )
        return res.rowcount


def progress(session: Session, stage: str, max_attempts: int | None = 5) -> dict[str, int]:
    """Counts for ``stage``: ``done``; ``held`` (a live lease); ``free`` (claimable now: never
    claimed, released, or its lease expired); ``given_up`` (free but claimed ``max_attempts``
    times already); ``total``."""
    now = db_now(session)
    open_ = Claim.done_at.is_(None)
    lapsed = and_(open_, Claim.expires_at <= now)
    spent = Claim.attempts >= max_attempts if max_attempts is not None else false()
    total, done, held, free, given_up = session.execute(
        select(
            func.count(),
            func.count().filter(Claim.done_at.is_not(None)),
            func.count().filter(open_, Claim.expires_at > now),
            func.count().filter(lapsed, ~spent),
            func.count().filter(lapsed, spent),
        ).where(Claim.stage == stage)
    ).one()
    return {"total": total, "done": done, "held": held, "free": free, "given_up": given_up}


def holders(session: Session, stage: str) -> dict[str, int]:
    """``{worker: rows}`` over rows not done that a worker holds or held last (what a stuck
    stage waits on)."""
    rows = session.execute(
        select(Claim.worker, func.count())
        .where(Claim.stage == stage, Claim.done_at.is_(None), Claim.worker.is_not(None))
        .group_by(Claim.worker)
    ).all()
    return dict(rows)
