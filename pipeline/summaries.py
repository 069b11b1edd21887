"""What a run produced, as rows and markdown a person reads: counts after ingest, a training
report with curves and test metrics, the worst cleanings. Plain functions over the catalog; the
flows publish them as Prefect artifacts and the demo prints them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from storage import pools, reports
from storage import queries as q

_SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float | None]) -> str:
    """A one-line curve: ``▁▂▄█``; missing values are spaces."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return ""
    lo, hi = min(finite), max(finite)
    span = (hi - lo) or 1.0
    return "".join(
        " " if v is None or not math.isfinite(v) else _SPARK[round((v - lo) / span * (len(_SPARK) - 1))]
        for v in values
    )


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def ingest_rows(catalog) -> list[dict[str, Any]]:
    """One row per image status and per (stage, failure reason), with counts."""
    with catalog.session() as s:
        stats = q.catalog_stats(s)
        fails = reports.failure_counts(s)
    rows = [{"kind": "pages", "name": "pages", "count": stats["pages"]}]
    rows += [{"kind": "status", "name": k, "count": v} for k, v in sorted(stats["images"].items())]
    rows += [{"kind": "dedup", "name": k, "count": v} for k, v in sorted(stats.get("dedup", {}).items())]
    rows += [{"kind": f"failure:{f['stage']}", "name": f["reason"], "count": f["count"]} for f in fails]
    return rows


def _history_columns(history: list[dict]) -> list[str]:
    cols: list[str] = []
    for row in history:
        for k, v in row.items():
            if k not in cols and isinstance(v, int | float) and not isinstance(v, bool):
                cols.append(k)
    return cols


def training_markdown(catalog, model_version: str | None) -> str:
    """A markdown report of a training run: parameters, curves (sparklines and the per-epoch
    table), test metrics of the model, and whether it was promoted."""
    with catalog.session() as s:
        run = reports.latest_training_run(s, model_version)
        model = q.get_model(s, model_version) if model_version else None
        promoted = q.promoted_model(s, "remover")
        run_info = None if run is None else {
            "status": run.status, "params": run.params or {}, "history": run.history or [],
            "timings": run.timings or {}, "run_dir": run.run_dir, "error": run.error,
        }
        model_info = None if model is None else {"version": model.version, "metrics": model.metrics or {},
                                                 "promoted": model.promoted}
        promoted_version = promoted.version if promoted else None

    lines = [f"# Training report: {model_version or 'no model registered'}", ""]
    if run_info is None:
        lines += ["No training run is recorded in the catalog.", ""]
    else:
        lines += [f"Status **{run_info['status']}**" + (f" ({run_info['error']})" if run_info["error"] else ""), ""]
        params = run_info["params"]
        if params:
            lines += ["| parameter | value |", "| --- | --- |"]
            lines += [f"| {k} | {_fmt(v)} |" for k, v in sorted(params.items()) if not isinstance(v, dict | list)]
            lines.append("")
        history = [h for h in run_info["history"] if isinstance(h, dict)]
        cols = _history_columns(history)
        if history and cols:
            lines += ["## Curves", "", "| series | first | last | curve |", "| --- | --- | --- | --- |"]
            for c in cols:
                if c == "epoch":
                    continue
                vals = [h.get(c) for h in history]
                lines.append(f"| {c} | {_fmt(vals[0])} | {_fmt(vals[-1])} | `{sparkline(vals)}` |")
            lines += ["", "## Per epoch", "", "| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
            lines += ["| " + " | ".join(_fmt(h.get(c)) for c in cols) + " |" for h in history]
            lines.append("")
        if run_info["timings"]:
            lines += ["Timings: " + ", ".join(f"{k} {_fmt(v)}" for k, v in run_info["timings"].items()
                                              if not isinstance(v, dict | list)), ""]
        if run_info["run_dir"]:
            lines += [f"Run folder (checkpoints, history CSV/JSON, plots): `{run_info['run_dir']}`", ""]
    if model_info is not None:
        lines += ["## Test metrics", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in sorted(_flat(model_info["metrics"]).items())]
        lines += ["", f"Promoted: **{'yes' if model_info['promoted'] else 'no'}**"
                      f" (promoted remover now: {promoted_version or 'none'})", ""]
    return "\n".join(lines).rstrip() + "\n"


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif not isinstance(v, list):
            out[f"{prefix}{k}"] = v
    return out


def worst_cleaning_rows(catalog, model_version: str | None, limit: int = 10) -> list[dict[str, Any]]:
    with catalog.session() as s:
        rows = reports.worst_cleanings(s, model_version, limit)
    return [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]



def catalog_counts(catalog) -> dict[str, Any]:
    """``unmark catalog stats`` as a dict: pages, images per status, failures per stage, …"""
    with catalog.session() as s:
        return q.catalog_stats(s)


def promoted_version(catalog, kind: str = "remover") -> str | None:
    with catalog.session() as s:
        m = q.promoted_model(s, kind)
        return m.version if m else None


def pending_cleanings(catalog, model_version: str) -> int:
    """Watermarked-pool images that ``model_version`` has not cleaned yet."""
    with catalog.session() as s:
        return len(pools.images_without_cleaning(s, model_version))


def cleaning_percent(catalog, model_version: str | None, since: datetime, total: int) -> float | None:
    """Share (0–100) of ``total`` images cleaned since ``since``."""
    if total <= 0:
        return None
    with catalog.session() as s:
        return 100.0 * reports.count_cleanings(s, model_version, since) / total


def training_percent(catalog, since: datetime, max_minutes: float | None) -> float | None:
    """How far the training run started after ``since`` is: finished epochs out of planned ones
    when the run records them, else the share of its time cap used."""
    with catalog.session() as s:
        run = reports.latest_training_run(s)
        if run is not None and _aware(run.started_at) >= since:
            epochs = (run.params or {}).get("epochs")
            if isinstance(epochs, int) and epochs > 0 and run.history:
                return 100.0 * len(run.history) / epochs
    if max_minutes:
        return 100.0 * (datetime.now(UTC) - since).total_seconds() / (60.0 * max_minutes)
    return None


def _aware(dt: datetime) -> datetime:
    # SQLite hands datetimes back without a zone; the catalog stores UTC.
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def demo_snapshot(catalog, since: datetime) -> dict[str, Any]:
    """Where a pipeline run stands, for a live display: pages and images so far, how many are
    triaged, the training run started after ``since`` (epochs, last validation PSNR, share of
    its time cap used) and the cleanings made since then out of the watermarked pool."""
    with catalog.session() as s:
        stats = q.catalog_stats(s)
        images = sum(stats["images"].values())
        snap: dict[str, Any] = {
            "pages": stats["pages"],
            "images": images,
            "triaged": images - stats["images"].get("fetched", 0),
            "failures": sum(stats["failures"].values()),
            "detector": q.promoted_model(s, "detector") is not None,
            "watermarked_pool": len(pools.watermarked_pool(s)),
            "cleaned": reports.count_cleanings(s, since=since),
            "train": None,
        }
        run = reports.latest_training_run(s)
        if run is not None and _aware(run.started_at) >= since:
            history = [h for h in (run.history or []) if isinstance(h, dict)]
            cap = (run.params or {}).get("max_minutes")
            elapsed = ((_aware(run.finished_at) if run.finished_at else datetime.now(UTC)) - _aware(run.started_at))
            snap["train"] = {
                "status": run.status,
                "epochs": len(history),
                "val_psnr": next((h[k] for h in reversed(history) for k in ("val_psnr", "psnr") if k in h), None),
                "minutes": elapsed.total_seconds() / 60.0,
                "max_minutes": cap,
            }
    return snap


def failure_rows(catalog) -> list[dict[str, Any]]:
    """Failures per stage and reason, most frequent first."""
    with catalog.session() as s:
        return reports.failure_counts(s)


def model_metric(catalog, version: str | None, key: str) -> Any:
    """One top-level metric of a registered model (None when absent)."""
    if not version:
        return None
    with catalog.session() as s:
        m = q.get_model(s, version)
        return (m.metrics or {}).get(key) if m else None


def pool_sizes(catalog) -> dict[str, int]:
    """Clean-pool images per split and the watermarked pool's size: what training and cleaning
    would get now."""
    with catalog.session() as s:
        sizes = {split: len(pools.clean_pool(s, split)) for split in ("train", "val", "test")}
        sizes["watermarked"] = len(pools.watermarked_pool(s))
    return sizes
