"""The catalog and blob store named by a settings object, opened for one unit of work."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from pipeline.config import Settings
from storage import BlobStore, Catalog, open_catalog


@contextlib.contextmanager
def open_workspace(settings: Settings) -> Iterator[tuple[Catalog, BlobStore]]:
    """``(catalog, blobs)``, migrated and ready; the catalog's engine is disposed on exit, so a
    task or thread that opens one leaves no connections behind."""
    catalog = open_catalog(settings.storage)
    try:
        yield catalog, BlobStore.from_settings(settings.storage)
    finally:
        catalog.dispose()
