"""The catalog (SQLAlchemy 2 models, engine/session factory, named queries, Alembic migrations)
and the content-addressed blob store. Usable without torch."""

from storage.blobs import BlobStore, blob_key
from storage.db import Catalog, open_catalog

__all__ = ["BlobStore", "Catalog", "blob_key", "open_catalog"]
