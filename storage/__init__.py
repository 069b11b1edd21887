"""The catalog and the content-addressed blob store. Usable without torch.

- ``models``: the schema (SQLAlchemy 2 models); ``migrations``: its Alembic history.
- ``db``: the engine and session factory (``Catalog``); ``integrity`` and ``retry``: a damaged
  SQLite file and lost connections.
- ``queries``: the named writes and reads; ``pools``: what training and cleaning work on;
  ``reports``: the counts flows publish; ``status``: an image's status transitions;
  ``hashes``: dedup's stored codes and groups; ``claims``: work units that several workers share.
- ``blobs``: the content-addressed blob store (local folder or fsspec).
"""

from storage.blobs import BlobStore, blob_key
from storage.db import Catalog, open_catalog

__all__ = ["BlobStore", "Catalog", "blob_key", "open_catalog"]
