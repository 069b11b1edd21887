"""What every flow shares: settings from flow parameters, the catalog and blob store for one task,
the bounded task runner, and small helpers over step summaries.

Tasks receive plain values (a home folder, URLs, image ids) and open the catalog themselves:
a Prefect task argument must be hashable and serialisable, and a database engine is neither.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from prefect.task_runners import ThreadPoolTaskRunner

from pipeline.config import Settings, load_settings

# Bounded: Prefect's default thread pool has no limit (sys.maxsize workers).
MAX_TASK_THREADS = 4

def task_runner(kind: str = "thread", settings: Settings | None = None):
    """The runner for a flow's mapped tasks. ``thread``: a bounded thread pool in the flow's
    process. ``dask`` (prefect-dask): the Dask scheduler at ``settings.scale.dask_address``, or else a
    local cluster of ``settings.scale.dask_workers`` processes (one thread each), every socket on
    127.0.0.1 and no dashboard."""
    if kind == "thread":
        return ThreadPoolTaskRunner(max_workers=MAX_TASK_THREADS)
    if kind != "dask":
        raise ValueError(f"task runner must be thread or dask, not {kind!r}")
    from prefect_dask import DaskTaskRunner

    if settings is not None and settings.scale.dask_address:
        return DaskTaskRunner(address=settings.scale.dask_address)
    _project_on_sys_path()
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": settings.scale.dask_workers if settings is not None else 2,
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            # The scheduler's HTTP server cannot be switched off; keep it on loopback, on a free
            # port (the default 8787 clashes between parallel runs), without the dashboard pages.
            "dashboard_address": "127.0.0.1:0",
            "scheduler_kwargs": {"dashboard": False},
            "worker_dashboard_address": None,
        },
    )


def _project_on_sys_path() -> None:
    """Local Dask workers start with their scratch folders first on ``sys.path``, and each holds a
    ``storage/`` folder (Dask's spill space). An editable install finds this project through a
    finder that runs after the path search, so in a worker ``import storage`` found that folder as
    an empty namespace package and every task failed to import. Workers copy the parent's
    ``sys.path``: with the project's root on it the real package wins (a regular package beats
    namespace folders wherever they sit on the path)."""
    root = Path(__file__).resolve().parents[1]
    if (root / "storage" / "__init__.py").is_file() and str(root) not in sys.path:
        sys.path.append(str(root))


def flow_settings(home: str | None = None, **overrides: Any) -> Settings:
    """The settings a flow run works with: the environment (``UNMARK_*``), with ``home`` and any
    non-None overrides from the flow's parameters on top."""
    fields = {k: v for k, v in overrides.items() if v is not None}
    if home:
        fields["home"] = home
    return load_settings(**fields)


def chunks(items: Sequence, size: int) -> list[list]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def merge_counts(summaries: Iterable[dict]) -> dict:
    """Sum the numbers of several step summaries key by key (nested dicts too); other values
    keep the last one seen. Used to fold the summaries of batched tasks into one."""
    out: dict = {}
    for summary in summaries:
        for key, value in (summary or {}).items():
            if isinstance(value, bool) or not isinstance(value, int | float | dict):
                out[key] = value
            elif isinstance(value, dict):
                out[key] = merge_counts([out.get(key) if isinstance(out.get(key), dict) else {}, value])
            else:
                prev = out.get(key, 0)
                out[key] = (prev if isinstance(prev, int | float) and not isinstance(prev, bool) else 0) + value
    return out


def small(summary: Any, limit: int = 40) -> Any:
    """A step summary cut down to what fits in a flow result: scalars and short containers."""
    if isinstance(summary, dict):
        return {str(k): small(v, limit) for k, v in list(summary.items())[:limit]}
    if isinstance(summary, list | tuple):
        return [small(v, limit) for v in list(summary)[:limit]]
    if isinstance(summary, str | int | float | bool) or summary is None:
        return summary
    return str(summary)
