"""Riding out a database that restarts: connection-level errors only, bounded, with backoff.

Two layers. ``wait_for_connections`` makes every new connection of an engine retry while the
server refuses them (a restart, a fail-over), up to a deadline; with ``pool_pre_ping`` a pooled
connection the restart killed is noticed at checkout and replaced through that path. A statement
already in flight when the server went away fails whatever the pool does; ``retrying`` runs a
whole transaction again (the callable opens and commits its own), so the transaction is retried
or rolled back whole, never half applied. Every write the pipeline retries this way is
idempotent (``INSERT … ON CONFLICT``, claims completed only by their holder), so a commit whose
answer was lost and that did happen is harmless to run again.

Only errors that mean "the connection is gone" are retried: a constraint violation, a syntax
error or SQLite's "database is locked" (which has its own busy timeout) is raised at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Engine, event
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

log = logging.getLogger(__name__)
T = TypeVar("T")

# SQLSTATE classes of a lost or refused connection: 08 (connection exception), 57P01-57P03
# (admin shutdown, crash shutdown, cannot connect now: the server is starting or stopping)
_GONE_STATES = ("57P01", "57P02", "57P03")


class CatalogUnavailable(RuntimeError):
    """The catalog's database stayed unreachable past the retry deadline."""

    def __init__(self, url: str, waited_s: float, error: BaseException):
        super().__init__(f"catalog {url} unreachable for {waited_s:.0f} s (gave up): {error}")
        self.url, self.waited_s = url, waited_s


def _gone(orig: BaseException | None) -> bool:
    """A DB-API error of a lost connection (psycopg: by SQLSTATE; none at all means the socket)."""
    if orig is None or not type(orig).__module__.startswith("psycopg"):
        return False
    state = getattr(orig, "sqlstate", None)
    if state is None:
        import psycopg

        return isinstance(orig, psycopg.OperationalError | psycopg.InterfaceError)
    return state.startswith("08") or state in _GONE_STATES


def is_disconnect(exc: BaseException) -> bool:
    """True for the connection-level errors a retry can cure, and nothing else."""
    if isinstance(exc, DBAPIError):
        if not isinstance(exc, OperationalError | InterfaceError):
            return False
        return bool(exc.connection_invalidated) or _gone(exc.orig)
    return _gone(exc)


def _backoff(attempt: int, first_s: float = 0.1, cap_s: float = 2.0) -> float:
    return min(cap_s, first_s * 2**attempt)


def retrying(fn: Callable[..., T], *args: Any, deadline_s: float = 60.0, url: str = "", **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, run again with backoff after connection-level errors until
    ``deadline_s`` has passed; then ``CatalogUnavailable``. ``fn`` must hold one whole
    transaction (it opens and commits it), so a retry repeats all of it."""
    start = time.monotonic()
    attempt = 0
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not is_disconnect(exc):
                raise
            waited = time.monotonic() - start
            if waited >= deadline_s:
                raise CatalogUnavailable(url, waited, exc) from exc
            pause = min(_backoff(attempt), max(0.0, deadline_s - waited))
            log.warning("catalog connection lost (%s); retrying %s in %.1f s", type(exc).__name__,
                        getattr(fn, "__name__", "transaction"), pause)
            time.sleep(pause)
            attempt += 1


def wait_for_connections(engine: Engine, deadline_s: float = 60.0) -> None:
    """New connections of ``engine`` retry with backoff while the server refuses them, for up to
    ``deadline_s``; then the last error is raised (and ``retrying`` gives up on it at once)."""

    @event.listens_for(engine, "do_connect")
    def _connect(dialect, _rec, cargs, cparams):
        start = time.monotonic()
        attempt = 0
        while True:
            try:
                return dialect.loaded_dbapi.connect(*cargs, **cparams)
            except Exception as exc:
                if not _gone(exc) or time.monotonic() - start >= deadline_s:
                    raise
                time.sleep(_backoff(attempt))
                attempt += 1
