"""Stopping a step on request: what Kubernetes and systemd send (SIGTERM) and what Ctrl-C is.

A long step (``scrape``, ``clean``) takes a ``StopFlag`` and looks at it between batches: once
it is set, the step finishes the batch in hand, commits it, releases its claims and raises
``Stopped``. ``on_signals()`` sets the flag from SIGTERM; a second signal stops at once (the
transaction in flight rolls back whole, which the catalog survives as it survives kill -9).
The command line turns ``Stopped`` into exit status ``EXIT_STOPPED`` (128 + SIGTERM, what a
shell reports for a process the signal killed), so a supervisor sees a stop, not a success.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

EXIT_STOPPED = 128 + signal.SIGTERM


class Stopped(RuntimeError):
    """The step stopped on request before its work was done; what it finished is committed.
    ``summary`` holds the step's counts up to the stop."""

    def __init__(self, step: str, reason: str, summary: dict[str, Any] | None = None):
        super().__init__(f"{step} stopped by {reason}; finished batches are committed, the rest is left for the next run")
        self.step, self.reason, self.summary = step, reason, summary or {}


class StopFlag:
    """Set once, by a signal handler or a caller; steps read ``requested`` between batches."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""
        self.at: float | None = None

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def set(self, reason: str = "request") -> None:
        if not self._event.is_set():
            self.reason, self.at = reason, time.monotonic()
            self._event.set()

    def check(self, step: str, summary: dict[str, Any] | None = None) -> None:
        """Raise ``Stopped`` for ``step`` when a stop was asked for."""
        if self.requested:
            raise Stopped(step, self.reason, summary)


@contextlib.contextmanager
def on_signals(flag: StopFlag, signals: tuple[int, ...] = (signal.SIGTERM,)) -> Iterator[StopFlag]:
    """Within the block, the first of ``signals`` sets ``flag``; a second one raises ``Stopped``
    where the main thread is. Outside the main thread (where Python cannot install handlers) the
    flag is only set by callers. The previous handlers are restored on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if flag.requested:
            raise Stopped("step", f"a second {name}")
        flag.set(name)

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
