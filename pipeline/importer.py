"""``unmark import``: add local image files to the catalog as if they had been fetched."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import Settings
from pipeline.images import BadImage, inspect_image
from pipeline.stopping import StopFlag
from storage import BlobStore, Catalog
from storage import queries as q

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}


@dataclass
class ImportStats:
    seen: int = 0
    added: int = 0
    known: int = 0
    failed: int = 0
    failures: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"seen": self.seen, "added": self.added, "known": self.known, "failed": self.failed, "failures": self.failures}


def iter_image_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files named directly, plus files with an image suffix under named folders, sorted."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    return out


@dataclass(frozen=True)
class ImportedFile:
    """One file's import: its content hash when it is in the catalog now, else the error."""

    path: Path
    sha256: str | None = None
    error: BaseException | None = None

    @property
    def reason(self) -> str | None:
        return None if self.error is None else getattr(self.error, "reason", type(self.error).__name__)


def import_paths(
    paths: Iterable[str | os.PathLike],
    catalog: Catalog,
    blobs: BlobStore,
    settings: Settings,
    source: str = "import",
    stop: StopFlag | None = None,
) -> ImportStats:
    """Import the image files named or found under folders in ``paths`` (``iter_image_files``)."""
    return import_files(iter_image_files(paths), catalog, blobs, settings, source, stop=stop)[0]


def import_files(
    files: Iterable[Path],
    catalog: Catalog,
    blobs: BlobStore,
    settings: Settings,
    source: str = "import",
    progress: Callable[[int, int], None] | None = None,
    stop: StopFlag | None = None,
) -> tuple[ImportStats, list[ImportedFile]]:
    """Store each file's bytes as a blob and its image row and sighting (a ``file://`` URL); a
    file that is not an acceptable image (``pipeline.images.inspect_image``) or cannot be read is a
    ``failures`` row (stage ``import``). Returns the counts and one ``ImportedFile`` per file;
    ``progress(done, total)`` hears of each file. Once ``stop`` is set, the files read so far
    are committed and ``Stopped`` is raised."""
    files = list(files)
    stats = ImportStats()
    done: list[ImportedFile] = []
    batch: list[tuple[Path, dict]] = []

    def flush() -> None:
        if not batch:
            return
        with catalog.write() as s:
            ids, new = q.add_new_images(s, [r for _, r in batch])
            urls = [path.resolve().as_uri() for path, _ in batch]
            q.add_sightings(s, [{"image_id": ids[row["sha256"]], "page_id": None, "image_url": url, "alt": None,
                                 "found_by": "import"} for (_, row), url in zip(batch, urls, strict=True)])
            q.clear_failures(s, "import", urls)
        for _, row in batch:  # a file whose content is new counts once as added, its copies as known
            added = row["sha256"] in new
            stats.added += added
            stats.known += not added
            new.discard(row["sha256"])
        done.extend(ImportedFile(path, row["sha256"]) for path, row in batch)
        batch.clear()

    for path in files:
        if stop is not None and stop.requested:
            break
        stats.seen += 1
        if progress:
            progress(stats.seen - 1, len(files))
        try:
            data = path.read_bytes()
            info = inspect_image(data, settings.images.max_image_pixels)
        except (BadImage, OSError) as exc:
            stats.failed += 1
            done.append(ImportedFile(path, error=exc))
            reason = done[-1].reason
            stats.failures[reason] = stats.failures.get(reason, 0) + 1
            with catalog.write() as s:
                q.record_failure(s, "import", path.resolve().as_uri(), exc)
            continue
        sha, key = blobs.put(data)  # blob first: a row never points at a missing blob
        batch.append(
            (path, {"sha256": sha, "blob_key": key, "mime": info.mime, "width": info.width, "height": info.height,
                    "bytes": len(data), "source": source})
        )
        if len(batch) >= settings.storage.write_batch_size:
            flush()
    flush()
    if stop is not None:
        stop.check("import", stats.as_dict())
    if progress:
        progress(len(files), len(files))
    return stats, done
