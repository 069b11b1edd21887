"""``unmark check``: is the catalog whole, and does every row's blob hold the bytes it names?"""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli_base import EXIT_CATALOG, JsonOpt, app, emit, err, settings_now


@app.command()
def check(
    hashes: Annotated[bool, typer.Option(help="hash every named blob (--no-hashes: only check they exist)")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Check the catalog and the blob store: the SQLite file (integrity_check), every blob a row
    names (there, and its bytes hash to its key), and blobs no row names. Exits 1 when anything
    is wrong, 3 when the catalog cannot be opened at all."""
    from storage import BlobStore, open_catalog
    from storage.db import CatalogError
    from storage.integrity import verify

    settings = settings_now()
    try:
        cat = open_catalog(settings.storage)
    except CatalogError as exc:
        emit({"ok": False, "integrity": str(exc), "problems": {"integrity": 1}}, as_json, "check")
        err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(EXIT_CATALOG) from exc
    try:
        report = verify(cat, BlobStore.from_settings(settings.storage), hashes=hashes).as_dict()
    finally:
        cat.dispose()
    if as_json:
        emit(report, True)
    else:
        emit({k: v for k, v in report.items() if k != "details"}, False, "check")
        for p in report["details"][:50]:
            err.print(f"[red]{p['kind']}:[/red] {p['subject']}: {p['detail']}")
    if not report["ok"]:
        raise typer.Exit(1)
