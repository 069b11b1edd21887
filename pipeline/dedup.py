"""``unmark dedup``: fold near-duplicate images into groups with one canonical member each.

Exact duplicates never get here as two rows: an image row is one sha256, and the same bytes seen
again only add a sighting. This step handles the near duplicates (recompressed, resized, cropped,
brightened, rotated, re-encoded or watermarked copies of one photo):

1. hash every image that has no hash from the current implementation (``HASH_IMPL``), in a
   process pool, a chunk of images per task; an unreadable image is marked ``failed`` and
   recorded in ``failures``, and the run goes on;
2. match each newly hashed image against every hashed image (``pipeline.hashindex``): two images
   are near duplicates when the Hamming distance between their 128-bit (pHash ‖ dHash) codes, or
   between one's code and the code of one of the other's eight 90 % crop windows (so that crops
   match; ``pipeline.perceptual``), is at most ``settings.dedup.dedup_threshold`` (chosen from the
   precision/recall curve, see ``bench/dedup.py`` and ``bench/results/dedup.json``);
3. join matches with union-find, starting from the groups already stored, so a new image that
   matches two groups merges them; pick each changed group's canonical image (highest
   resolution, then larger file, then first seen) and point every member at it.

Old pairs are not compared again, and only rows whose group or role changes are written, so a
re-run with nothing new changes nothing. ``regroup=True`` drops the stored groups and compares
every pair again (after changing the threshold, say).

Stopped (``stop``, SIGTERM at the command line) while hashing, the step writes the hashes in
hand, cancels the chunks not yet started and raises ``Stopped`` before matching: the hashed
images keep no group (``group_id`` NULL), so the next run matches them with the rest, exactly
as if it had hashed them itself.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from pipeline.config import Settings
from pipeline.hashindex import make_index
from pipeline.images import BadImage
from pipeline.perceptual import HASH_IMPL, N_WINDOWS, hash_image
from pipeline.stopping import StopFlag
from storage import BlobStore, Catalog, hashes, status
from storage import queries as q
from storage.blobs import STORE_FAULTS, BlobError, check_content

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


def _read_blob(store: BlobStore, key: str) -> bytes:
    """A blob's bytes; a local store's straight from the file (fsspec's ``cat_file`` costs
    ~0.15 ms per call, a tenth of a JPEG's hashing)."""
    if not store.is_local:
        return store.get(key)
    try:
        return check_content(key, store.local_path(key).read_bytes())
    except FileNotFoundError as exc:
        raise BlobError(key, "not found") from exc


def _hash_chunk(blob_root: str, storage_options: dict, retry_s: float, max_pixels: int,
                jobs: Sequence[tuple[int, str]]) -> list[tuple[int, np.ndarray | None, str | None, str | None]]:
    """Worker: ``(id, codes, error class, message)`` for each ``(id, blob key)``; ``codes`` is
    ``hash_image``'s (1 + N_WINDOWS, 2) int64 array. A fault of the store itself
    (``STORE_FAULTS``: down past ``retry_s``) is raised, not written down as the image's failure:
    the step stops with it, and a re-run hashes what was left."""
    store = BlobStore(blob_root, storage_options, retry_s)
    out = []
    for image_id, key in jobs:
        try:
            out.append((image_id, hash_image(_read_blob(store, key), max_pixels), None, None))
        except STORE_FAULTS:
            raise
        except (BadImage, BlobError, OSError) as exc:
            out.append((image_id, None, type(exc).__name__, str(exc)))
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
    chunk = max(1, settings.dedup.dedup_chunk_size)
    workers = settings.dedup.dedup_workers or os.cpu_count() or 1
    chunks = [jobs[i : i + chunk] for i in range(0, len(jobs), chunk)]
    st = settings.storage
    args = (st.blob_root, st.blob_storage_options(), st.blob_retry_s, settings.images.max_image_pixels)
    if workers <= 1 or len(chunks) <= 1:
        for c in chunks:
            yield from _hash_chunk(*args, c)
        return
    pool = ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=_pool_context())
    try:
        for result in pool.map(_hash_chunk, *zip(*[(*args, c) for c in chunks], strict=True)):
            yield from result
    finally:  # closed early (a stop): the chunks not started are dropped, the running ones end
        pool.shutdown(wait=True, cancel_futures=True)


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
    with catalog.session() as s:
        return [Row(*r) for r in hashes.hash_rows(s, list(Row.__dataclass_fields__))]


def _load_windows(catalog: Catalog) -> tuple[np.ndarray, np.ndarray]:
    """``(owner ids, (n, 2) uint64 codes)`` of every stored window of a current-impl image."""
    with catalog.session() as s:
        arr = np.array(hashes.window_codes(s, HASH_IMPL), dtype=np.int64).reshape(-1, 3)
    return arr[:, 0], np.ascontiguousarray(arr[:, 1:]).view(np.uint64)


def _images_with_windows(catalog: Catalog) -> set[int]:
    with catalog.session() as s:
        return hashes.images_with_windows(s, N_WINDOWS)


def _query_windows(query_ids: np.ndarray, fresh: dict[int, np.ndarray], win_ids: np.ndarray,
                   win: np.ndarray) -> np.ndarray:
    """The window codes of each query image in turn: from this run's hashes, else the stored ones."""
    stored = {i for i in query_ids.tolist() if i not in fresh}
    positions: dict[int, list[int]] = {}
    for pos, owner in enumerate(win_ids.tolist()):
        if owner in stored:
            positions.setdefault(owner, []).append(pos)
    parts = [fresh[i][1:].view(np.uint64) if i in fresh else win[positions[i]] for i in query_ids.tolist()]
    return np.concatenate(parts) if parts else np.empty((0, 2), np.uint64)


def _codes(rows: Sequence[Row]) -> np.ndarray:
    return np.array([(r.phash, r.dhash) for r in rows], dtype=np.int64).reshape(-1, 2).view(np.uint64)


def _write_hashes(catalog: Catalog, results: list[tuple[int, np.ndarray]]) -> None:
    """Store each image's own codes and replace its window codes, in one transaction."""
    if not results:
        return
    own = [(i, int(c[0, 0]), int(c[0, 1])) for i, c in results]
    windows = [(i, w, int(c[w, 0]), int(c[w, 1])) for i, c in results for w in range(1, len(c))]
    with catalog.write() as s:
        hashes.store_hashes(s, HASH_IMPL, own, windows)


def find_pairs(full_ids: np.ndarray, full: np.ndarray, win_ids: np.ndarray, win: np.ndarray,
               query_ids: np.ndarray, query_full: np.ndarray, query_win: np.ndarray,
               threshold: int) -> set[tuple[int, int]]:
    """Near-duplicate pairs ``(smaller id, larger id)`` between the query images and the indexed
    ones: a query's own code within ``threshold`` of an image's own code or of one of its windows,
    or one of the query's windows within ``threshold`` of an image's own code. (Window against
    window is not compared: eight times the comparisons, and the false matches grow with them.)
    ``query_win`` is (len(query_ids) * N_WINDOWS, 2), the windows of each query in turn."""
    full_index = make_index(full, full_ids)
    found: list[tuple[np.ndarray, np.ndarray]] = []
    rows, ids, _ = full_index.pairs_within(query_full, threshold)
    found.append((query_ids[rows], ids))
    if len(win):
        rows, ids, _ = make_index(win, win_ids).pairs_within(query_full, threshold)
        found.append((query_ids[rows], ids))
    # a query's windows against the codes of the images that are not queries themselves (query
    # against query is covered above, from the other side)
    others = ~np.isin(full_ids, query_ids)
    if len(query_win) and others.any():
        rows, ids, _ = make_index(full[others], full_ids[others]).pairs_within(query_win, threshold)
        found.append((np.repeat(query_ids, N_WINDOWS)[rows], ids))
    pairs: set[tuple[int, int]] = set()
    for a, b in found:
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            if x != y:
                pairs.add((x, y) if x < y else (y, x))
    return pairs


def _hash_new(catalog: Catalog, rows: list[Row], by_id: dict[int, Row], settings: Settings,
              hasher: Callable[[Sequence[tuple[int, str]], Settings], Iterable[tuple]],
              stop: StopFlag | None = None) -> tuple[dict[int, np.ndarray], int]:
    """Stage 1: hash what has no hash of the current implementation. Returns the fresh window
    codes by image id and how many failed; a failed image leaves ``by_id`` (and its group). Once
    ``stop`` is set, the hashes in hand are written and ``Stopped`` is raised."""
    windowed = _images_with_windows(catalog)
    todo = [r for r in rows if r.hash_impl != HASH_IMPL or r.phash is None or r.dhash is None or r.id not in windowed]
    failed = 0
    fresh: dict[int, np.ndarray] = {}
    batch: list[tuple[int, np.ndarray]] = []
    hashed = hasher([(r.id, r.blob_key) for r in todo], settings)
    for image_id, codes, err_class, message in hashed:
        row = by_id[image_id]
        if codes is None:
            failed += 1
            with catalog.write() as s:
                status.mark_hash_failed(s, image_id)
                q.record_failure(s, STAGE, row.sha256, f"{message} (blob {row.blob_key})", error_class=err_class)
            del by_id[image_id]
            continue
        row.phash, row.dhash, row.hash_impl = int(codes[0, 0]), int(codes[0, 1]), HASH_IMPL
        fresh[image_id] = codes
        batch.append((image_id, codes))
        if len(batch) >= settings.storage.write_batch_size:
            _write_hashes(catalog, batch)
            batch.clear()
            if stop is not None and stop.requested:
                break
    if hasattr(hashed, "close"):
        hashed.close()  # a stop: the pool's chunks not yet started are cancelled
    _write_hashes(catalog, batch)
    if stop is not None:
        stop.check(STAGE, {"images": len(by_id), "hashed": len(fresh), "failed": failed, "todo": len(todo)})
    return fresh, failed


def _match(catalog: Catalog, rows: list[Row], by_id: dict[int, Row], fresh: dict[int, np.ndarray], regroup: bool,
           threshold: int) -> tuple[UnionFind, set[tuple[int, int]]]:
    """Stage 2: match the images never grouped (or just re-hashed; every one with ``regroup``)
    against every hashed image. Returns the groups so far and the pairs found."""
    uf = UnionFind()
    if regroup:
        queries = rows
    else:
        queries = [r for r in rows if r.id in fresh or r.group_id is None]
        for r in rows:
            if r.id not in fresh and r.group_id is not None and r.group_id in by_id:
                uf.union(r.id, r.group_id)
    pairs: set[tuple[int, int]] = set()
    if queries:
        win_ids, win = _load_windows(catalog)
        query_ids = np.array([r.id for r in queries], dtype=np.int64)
        query_win = _query_windows(query_ids, fresh, win_ids, win)
        pairs = find_pairs(np.array([r.id for r in rows], dtype=np.int64), _codes(rows), win_ids, win,
                           query_ids, _codes(queries), query_win, threshold)
        for a, b in pairs:
            uf.union(a, b)
    return uf, pairs


def _write_groups(catalog: Catalog, rows: list[Row], uf: UnionFind, batch_size: int) -> tuple[list[dict], int, int]:
    """Stage 3: the canonical member per group; writes only what changed. Returns the changes,
    the groups with two or more members and the duplicates."""
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
    for i in range(0, len(changes), batch_size):
        with catalog.write() as s:
            hashes.set_groups(s, changes[i : i + batch_size])
    return changes, groups, duplicates


def dedup(catalog: Catalog, blobs: BlobStore, settings: Settings, regroup: bool = False,
          hasher: Callable[[Sequence[tuple[int, str]], Settings], Iterable[tuple]] | None = None,
          stop: StopFlag | None = None) -> dict:
    """Hash new images, match them against the catalog, and update groups. Returns counts:
    ``hashed``, ``failed``, ``matches`` (near-duplicate pairs found in this run), ``changed``
    (rows whose group or role changed), ``groups`` (with two or more members) and ``duplicates``
    (catalog-wide), and timings. ``hasher`` replaces ``hash_blobs`` (same arguments, the same tuples
    in the same order): the flows pass one that maps the chunks onto Dask workers. Once ``stop``
    is set, the hashes in hand are written and ``Stopped`` is raised (see the module's notes)."""
    t0 = time.perf_counter()
    threshold = settings.dedup.dedup_threshold
    rows = _load_rows(catalog)
    by_id = {r.id: r for r in rows}

    fresh, failed = _hash_new(catalog, rows, by_id, settings, hasher or hash_blobs, stop)
    t_hash = time.perf_counter()
    rows = [r for r in by_id.values() if r.hash_impl == HASH_IMPL]
    uf, pairs = _match(catalog, rows, by_id, fresh, regroup, threshold)
    t_match = time.perf_counter()
    changes, groups, duplicates = _write_groups(catalog, rows, uf, settings.storage.write_batch_size)
    t_end = time.perf_counter()
    return {
        "images": len(rows),
        "hashed": len(fresh),
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
