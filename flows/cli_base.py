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
EXIT_UNAVAILABLE = 4  # the catalog's database or the object store stayed unreachable past its deadline
EXIT_DISK_FULL = 5  # no space left for a blob or the catalog


def fault_exit(exc: BaseException) -> tuple[int, str] | None:
    """(exit status, one-line message) for the faults a step stops on with a named error rather
    than a traceback: a damaged catalog, a server or store gone past its deadline, a full disk,
    a second stop signal. None for anything else (a bug: the traceback is what is wanted)."""
    from pipeline.stopping import EXIT_STOPPED, Stopped
    from storage.blobs import BlobStoreUnavailable, DiskFull
    from storage.db import CatalogError
    from storage.integrity import is_malformed
    from storage.retry import CatalogUnavailable

    orig = getattr(exc, "orig", None)
    if isinstance(exc, Stopped):
        return EXIT_STOPPED, str(exc)
    if isinstance(exc, DiskFull):
        return EXIT_DISK_FULL, str(exc)
    if isinstance(exc, CatalogUnavailable | BlobStoreUnavailable):
        return EXIT_UNAVAILABLE, str(exc)
    if isinstance(exc, CatalogError):
        return EXIT_CATALOG, str(exc)
    if orig is not None and type(orig).__module__ == "sqlite3":
        if "disk is full" in str(orig):
            return EXIT_DISK_FULL, f"disk full: no space left for the catalog {settings_now().storage.catalog_url}; free space and re-run"
        if is_malformed(orig):
            return EXIT_CATALOG, f"catalog {settings_now().storage.catalog_url} is damaged: {orig}; run `unmark check`"
    return None

def open_all(settings: Settings | None = None):
    """Settings, catalog and blob store; a catalog that cannot be opened (a damaged file, say) is
    a one-line error and exit ``EXIT_CATALOG``, before any step starts."""
    from storage import BlobStore, open_catalog
    from storage.db import CatalogError

    settings = settings or settings_now()
    try:
        cat = open_catalog(settings.storage)
    except CatalogError as exc:
        err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(EXIT_CATALOG) from exc
    return settings, cat, BlobStore.from_settings(settings.storage)

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
def stage_progress(disabled: bool = False):
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
    err.print(f"[red]stopped:[/red] {exc}", soft_wrap=True)
    raise typer.Exit(EXIT_STOPPED) from exc

def _flatten(d: Any, prefix: str = ""):
    if isinstance(d, dict):
        if not d and prefix:
            yield prefix.rstrip("."), "—"
        for k, v in d.items():
            yield from _flatten(v, f"{prefix}{k}.")
    else:
        yield prefix.rstrip("."), d

