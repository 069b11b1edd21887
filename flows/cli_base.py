"""What every ``unmark`` command shares: the Typer app, the consoles, settings and workspace,
JSON-or-table output and the progress display. The commands live in ``flows.cli`` and
``flows.cli_clean``."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from pipeline.config import Settings, load_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Unmark: scrape, dedup, triage and clean watermarked images.")
catalog_app = typer.Typer(no_args_is_help=True, help="Query the catalog.")
app.add_typer(catalog_app, name="catalog")
console = Console(stderr=False)
err = Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]

def settings_now() -> Settings:
    return load_settings()

EXIT_CATALOG = 3  # the catalog could not be opened: damaged, or its database unreachable

def open_all(settings: Settings | None = None):  # noqa: ANN202
    """Settings, catalog and blob store; a catalog that cannot be opened (a damaged file, say) is
    a one-line error and exit ``EXIT_CATALOG``, before any step starts."""
    from storage import BlobStore, open_catalog
    from storage.db import CatalogError

    settings = settings or settings_now()
    try:
        cat = open_catalog(settings)
    except CatalogError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(EXIT_CATALOG) from exc
    return settings, cat, BlobStore.from_settings(settings)

def emit(data: Any, as_json: bool, title: str = "") -> None:
    """Print ``data`` as JSON, or as a two-column rich table (nested dicts flattened)."""
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        return
    table = Table(title=title or None, show_header=False)
    for k, v in _flatten(data):
        table.add_row(k, str(v))
    console.print(table)

@contextlib.contextmanager
def stage_progress(disabled: bool = False):  # noqa: ANN201
    """A rich progress display on stderr with one bar per stage; yields ``progress(stage, done, total)``."""
    from rich.progress import Progress

    with Progress(console=err, transient=True, disable=disabled) as bar:
        tasks: dict[str, Any] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield progress

def stopped_exit(exc: Any, as_json: bool, title: str) -> None:
    """A step stopped by a signal (``pipeline.stopping.Stopped``): what it did (with ``stopped``
    naming the signal), the reason on stderr, and exit ``EXIT_STOPPED``."""
    from pipeline.stopping import EXIT_STOPPED

    emit({**exc.summary, "stopped": exc.reason}, as_json, f"{title} (stopped)")
    err.print(f"[red]stopped:[/red] {exc}")
    raise typer.Exit(EXIT_STOPPED) from exc

def _flatten(d: Any, prefix: str = ""):  # noqa: ANN202
    if isinstance(d, dict):
        if not d and prefix:
            yield prefix.rstrip("."), "—"
        for k, v in d.items():
            yield from _flatten(v, f"{prefix}{k}.")
    else:
        yield prefix.rstrip("."), d

