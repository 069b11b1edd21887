"""``unmark catalog models``: the registered removers and detectors, the versions that ``unmark
clean --model``, ``Remover.load(version=, catalog=)`` and ``Detector.load`` take."""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli_base import JsonOpt, catalog_app, console, err
from flows.cli_base import open_all as _open


@catalog_app.command("models")
def catalog_models(
    kind: Annotated[str | None, typer.Option(help="remover or detector (default: both)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The registered models, oldest first: version, kind, promoted, created (and, in JSON, the checkpoint blob)."""
    import json

    from rich.table import Table

    from storage import queries as q

    if kind not in (None, "remover", "detector"):
        err.print(f"[red]error:[/red] unknown kind {kind!r}: use remover or detector")
        raise typer.Exit(2)
    _, cat, _ = _open()
    with cat.session() as s:
        rows = [{"version": m.version, "kind": m.kind, "promoted": bool(m.promoted),
                 "created_at": m.created_at.isoformat(timespec="seconds") if m.created_at else None,
                 "checkpoint": m.checkpoint_key} for m in q.list_models(s, kind)]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="models (--json adds the checkpoint blobs)")
    table.add_column("version", overflow="fold")
    for col in ("kind", "promoted", "created (UTC)"):
        table.add_column(col, no_wrap=True)
    for r in rows:
        table.add_row(r["version"], r["kind"], "yes" if r["promoted"] else "", (r["created_at"] or "")[:16])
    console.print(table)
