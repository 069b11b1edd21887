"""``unmark dedup``: fold near-duplicate images into groups with one canonical member each.

Exact duplicates never get here as two rows: an image row is one sha256, and the same bytes seen
again only add a sighting. This step handles the near duplicates (recompressed, resized, cropped,
brightened, rotated, re-encoded or watermarked copies of one photo):

1. hash every image that has no hash from the current implementation (``HASH_IMPL``), in a
   process pool, a chunk of images per task; an unreadable image is marked ``failed`` and
   recorded in ``failures``, and the run goes on;
2. match each newly hashed image against every hashed image (``pipeline.hashindex``): two images
   are near duplicates when the Hamming distance between their 128-bit (pHash ‖ dHash) codes is
   at most ``settings.dedup_threshold`` (chosen from the precision/recall curve, see
   ``bench/dedup.py`` and ``bench/RESULTS.md``);
3. join matches with union-find, starting from the groups already stored, so a new image that
   matches two groups merges them; pick each changed group's canonical image (highest
   resolution, then larger file, then first seen) and point every member at it.

Old pairs are not compared again, and only rows whose group or role changes are written, so a
re-run with nothing new changes nothing. ``regroup=True`` drops the stored groups and compares
every pair again (after changing the threshold, say).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import select, update

from pipeline.config import Settings
from pipeline.hashindex import make_index
from pipeline.images import BadImage
from pipeline.perceptual import HASH_IMPL, hash_image
from storage import BlobStore, Catalog
from storage import queries as q
from storage.blobs import BlobError
from storage.models import Image

STAGE = "dedup"


@dataclass
class Row:
    id: int
    sha256: str
    blob_key: str
    width: int
    height: int
    bytes: int
    first_seen_at: datetime
    phash: int | None
    dhash: int | None
    hash_impl: str | None
    group_id: int | None
    dedup_role: str | None

    def canonical_key(self) -> tuple:
        """Smallest first: highest resolution, then larger file, then first seen."""
        return (-(self.width * self.height), -self.bytes, self.first_seen_at, self.id)


# --- hashing in a process pool -------------------------------------------------------------


def _hash_chunk(blob_root: str, storage_options: dict, max_pixels: int,
                jobs: Sequence[tuple[int, str]]) -> list[tuple[int, int | None, int | None, str | None, str | None]]:
    """Worker: ``(id, phash, dhash, error class, message)`` for each ``(id, blob key)``."""
    store = BlobStore(blob_root, storage_options)
    out = []
    for image_id, key in jobs:
        try:
            ph, dh = hash_image(store.get(key), max_pixels)
            out.append((image_id, ph, dh, None, None))
        except (BadImage, BlobError, OSError) as exc:
            out.append((image_id, None, None, type(exc).__name__, str(exc)))
    return out


def _pool_context() -> multiprocessing.context.BaseContext:
    # fork is the cheapest start (no re-import) but is unsafe when other threads may hold locks
    # (a Prefect worker, say); then forkserver.
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def hash_blobs(jobs: Sequence[tuple[int, str]], settings: Settings) -> Iterator[tuple]:
    """Hash ``(id, blob key)`` jobs, in a process pool when there is enough work for one; yields
    the worker tuples of ``_hash_chunk`` chunk by chunk, in order."""
    chunk = max(1, settings.dedup_chunk_size)
    workers = settings.dedup_workers or os.cpu_count() or 1
    chunks = [jobs[i : i + chunk] for i in range(0, len(jobs), chunk)]
    args = (settings.blob_root, settings.blob_storage_options(), settings.max_image_pixels)
    if workers <= 1 or len(chunks) <= 1:
        for c in chunks:
            yield from _hash_chunk(*args, c)
        return
    with ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=_pool_context()) as pool:
        for result in pool.map(_hash_chunk, *zip(*[(*args, c) for c in chunks], strict=True)):
            yield from result


# --- union-find ---------------------------------------------------------------------------


class UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        parent = self.parent
        root = parent.setdefault(x, x)
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


# --- the step ------------------------------------------------------------------------------


def _load_rows(catalog: Catalog) -> list[Row]:
    cols = [getattr(Image, f) for f in Row.__dataclass_fields__]
    with catalog.session() as s:
        return [Row(*r) for r in s.execute(select(*cols).where(Image.status != "failed").order_by(Image.id))]


def _codes(rows: Sequence[Row]) -> np.ndarray:
    return np.array([(r.phash, r.dhash) for r in rows], dtype=np.int64).reshape(-1, 2).view(np.uint64)


def dedup(catalog: Catalog, blobs: BlobStore, settings: Settings, regroup: bool = False) -> dict:
    """Hash new images, match them against the catalog, and update groups. Returns counts:
    ``hashed``, ``failed``, ``matches`` (new near-duplicate pairs), ``changed`` (rows whose
    group or role changed), ``groups`` / ``duplicates`` (catalog-wide), and timings."""
    t0 = time.perf_counter()
    threshold = settings.dedup_threshold
    rows = _load_rows(catalog)
    by_id = {r.id: r for r in rows}

    # 1. hash what has no hash of the current implementation
    todo = [r for r in rows if r.hash_impl != HASH_IMPL or r.phash is None or r.dhash is None]
    hashed, failed = 0, 0
    fresh: set[int] = set()
    batch: list[dict] = []

    def flush() -> None:
        if batch:
            with catalog.write() as s:
                s.execute(update(Image), batch)
            batch.clear()

    for image_id, ph, dh, err_class, message in hash_blobs([(r.id, r.blob_key) for r in todo], settings):
        row = by_id[image_id]
        if err_class is not None:
            failed += 1
            with catalog.write() as s:
                s.execute(update(Image).where(Image.id == image_id)
                          .values(status="failed", group_id=None, dedup_role=None))
                q.record_failure(s, STAGE, row.sha256, f"{message} (blob {row.blob_key})", error_class=err_class)
            del by_id[image_id]
            continue
        hashed += 1
        row.phash, row.dhash, row.hash_impl = ph, dh, HASH_IMPL
        fresh.add(image_id)
        batch.append({"id": image_id, "phash": ph, "dhash": dh, "hash_impl": HASH_IMPL})
        if len(batch) >= settings.write_batch_size:
            flush()
    flush()
    t_hash = time.perf_counter()

    # 2. match: images never grouped (or re-hashed) against every hashed image
    rows = [r for r in by_id.values() if r.hash_impl == HASH_IMPL]
    uf = UnionFind()
    if regroup:
        queries = rows
    else:
        queries = [r for r in rows if r.id in fresh or r.group_id is None]
        for r in rows:
            if r.id not in fresh and r.group_id is not None and r.group_id in by_id:
                uf.union(r.id, r.group_id)
    pairs: set[tuple[int, int]] = set()
    if queries and rows:
        index = make_index(_codes(rows), [r.id for r in rows])
        qi, found, _ = index.pairs_within(_codes(queries), threshold)
        for a, b in zip(qi.tolist(), found.tolist(), strict=True):
            a = queries[a].id
            if a != b:
                pairs.add((min(a, b), max(a, b)))
                uf.union(a, b)
    t_match = time.perf_counter()

    # 3. canonical per group; write only what changed
    members: dict[int, list[Row]] = {}
    for r in rows:
        members.setdefault(uf.find(r.id), []).append(r)
    changes = []
    groups = duplicates = 0
    for group in members.values():
        canon = min(group, key=Row.canonical_key)
        groups += len(group) > 1
        for r in group:
            role = "canonical" if r is canon else "duplicate"
            duplicates += role == "duplicate"
            if r.group_id != canon.id or r.dedup_role != role:
                changes.append({"id": r.id, "group_id": canon.id, "dedup_role": role})
    for i in range(0, len(changes), settings.write_batch_size):
        with catalog.write() as s:
            s.execute(update(Image), changes[i : i + settings.write_batch_size])
    t_end = time.perf_counter()
    return {
        "images": len(rows),
        "hashed": hashed,
        "failed": failed,
        "matches": len(pairs),
        "changed": len(changes),
        "groups": groups,
        "duplicates": duplicates,
        "threshold": threshold,
        "hash_impl": HASH_IMPL,
        "seconds": {"hash": round(t_hash - t0, 3), "match": round(t_match - t_hash, 3),
                    "group": round(t_end - t_match, 3), "total": round(t_end - t0, 3)},
    }
