"""Is the catalog whole? A cheap look at a SQLite file before it is opened, and a full check of
the catalog against its blob store (``verify``, what ``unmark check`` prints).

The look at open costs one 100-byte read: the file must start with SQLite's magic string, and (with no
write-ahead log holding pages yet to be copied back) be at least as long as the page count its
header gives (a file cut short, by a full disk or a bad
copy, is caught there, at open, with the path and both sizes, rather than as "database disk
image is malformed" deep inside a step). ``verify`` reads everything: ``PRAGMA
integrity_check``, every blob a row names (present, and its bytes hash to its key), and every
stored blob no row names (an orphan).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from storage.blobs import BlobCorrupt, BlobError, BlobStore
from storage.db import Catalog, CatalogError
from storage.models import Cleaning, Image, Model

SQLITE_MAGIC = b"SQLite format 3\x00"
_CONTENT_KEY = re.compile(r"[0-9a-f]{2}/[0-9a-f]{2}/([0-9a-f]{64})")


class CatalogCorrupt(CatalogError):
    """The catalog file is damaged (cut short, not SQLite, or failing its integrity check)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"catalog {path} is damaged: {reason}; restore it from a backup or move it aside "
                         "and re-run (blobs are kept)")
        self.path, self.reason = path, reason


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (None for other databases and in-memory SQLite)."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def check_sqlite_file(path: Path) -> None:
    """Raise ``CatalogCorrupt`` when ``path`` exists and is not a whole SQLite file by its header.
    A missing or empty file is fine (SQLite creates it)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size == 0:
        return
    with open(path, "rb") as fh:
        header = fh.read(100)
    if len(header) < 100 or not header.startswith(SQLITE_MAGIC):
        raise CatalogCorrupt(str(path), f"not a SQLite file ({size} bytes, no SQLite header)")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    # the header's page count is valid only when its change counter matches (SQLite's own rule);
    # with a write-ahead log the file may lawfully be shorter (a checkpoint cut short by a full
    # disk has written page 1 but not the pages after it, which are still in the log)
    wal = path.with_name(path.name + "-wal")
    in_log = wal.exists() and wal.stat().st_size > 0
    if header[24:28] == header[92:96] and pages * page_size > size and not in_log:
        raise CatalogCorrupt(str(path), f"cut short: {size} bytes, its header says {pages} pages of {page_size} "
                                        f"({pages * page_size} bytes)")


@dataclass
class Problem:
    kind: str  # integrity | missing_blob | corrupt_blob | orphan_blob
    subject: str
    detail: str = ""


@dataclass
class Report:
    integrity: str = "ok"
    rows_checked: int = 0
    blobs_checked: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        counts: dict[str, int] = {}
        for p in self.problems:
            counts[p.kind] = counts.get(p.kind, 0) + 1
        return {"ok": self.ok, "integrity": self.integrity, "rows_checked": self.rows_checked,
                "blobs_checked": self.blobs_checked, "problems": counts,
                "details": [{"kind": p.kind, "subject": p.subject, "detail": p.detail} for p in self.problems]}


def named_blobs(catalog: Catalog) -> Iterator[tuple[str, str]]:
    """(key, what names it) for every blob a row names: images, model checkpoints, cleanings'
    outputs and the masks and model outputs their metrics name."""
    with catalog.session() as s:
        for sha, key in s.execute(select(Image.sha256, Image.blob_key)):
            yield key, f"image {sha[:12]}"
        for version, key in s.execute(select(Model.version, Model.checkpoint_key)):
            if key:
                yield key, f"model {version}"
        for iid, version, out, metrics in s.execute(
                select(Cleaning.image_id, Cleaning.model_version, Cleaning.output_key, Cleaning.metrics)):
            yield out, f"cleaning of image {iid} by {version}"
            for k in ("mask_key", "weights_key", "model_output"):
                if (metrics or {}).get(k):
                    yield metrics[k], f"cleaning of image {iid} by {version} ({k})"


def _integrity(catalog: Catalog) -> str:
    if catalog.dialect != "sqlite":
        with catalog.session() as s:
            s.execute(text("SELECT 1"))
        return "ok (no file check on PostgreSQL)"
    with catalog.engine.connect() as conn:
        rows = [r[0] for r in conn.exec_driver_sql("PRAGMA integrity_check").fetchall()]
    return "ok" if rows == ["ok"] else "; ".join(rows[:20])


def verify(catalog: Catalog, blobs: BlobStore, hashes: bool = True) -> Report:
    """Check the whole catalog: the file (SQLite), every named blob (there, and, with ``hashes``,
    its bytes hash to its content key), and every stored blob that no row names."""
    try:
        report = Report(integrity=_integrity(catalog))
    except DBAPIError as exc:  # too damaged for the check itself to run
        report = Report(integrity=f"integrity_check failed: {exc.orig}")
    if report.integrity.split(" ")[0] != "ok":
        report.problems.append(Problem("integrity", catalog.url, report.integrity))
    named: dict[str, str] = {}
    try:
        for key, owner in named_blobs(catalog):
            report.rows_checked += 1
            named.setdefault(key, owner)
    except DBAPIError as exc:  # rows that cannot be read: the blobs cannot be matched to them
        report.problems.append(Problem("integrity", catalog.url, f"rows unreadable: {exc.orig}"))
        return report
    for key, owner in named.items():
        report.blobs_checked += 1
        try:
            if hashes and _CONTENT_KEY.fullmatch(key):
                blobs.get(key)  # verifies the hash
            elif not blobs.exists(key):
                raise BlobError(key, "not found")
        except BlobCorrupt as exc:
            report.problems.append(Problem("corrupt_blob", key, f"{owner}: {exc.reason}"))
        except BlobError:
            report.problems.append(Problem("missing_blob", key, f"named by {owner}"))
    for key in blobs.keys():
        if key not in named:
            report.problems.append(Problem("orphan_blob", key, "no row names it"))
    return report


def is_malformed(exc: BaseException) -> bool:
    """A SQLite error that means a damaged file (seen deep in a step, past the check at open)."""
    msg = str(exc).lower()
    return "malformed" in msg or "file is not a database" in msg or "disk image" in msg


def file_of(url: str) -> str:
    p = sqlite_path(url)
    return str(p) if p is not None else make_url(url).render_as_string()

