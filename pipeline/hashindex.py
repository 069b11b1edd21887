"""Radius search over binary codes (Hamming distance), for near-duplicate lookup.

A code is a row of ``words`` uint64 values (dedup uses two: pHash and dHash, a 128-bit code), and
the distance between two codes is the popcount of their XOR summed over the words.

- ``BruteForceIndex``: vectorised numpy (XOR, ``np.bitwise_count``) over every code; exact, and
  the fastest choice up to ~10^5 codes.
- ``MultiIndexHash``: multi-index hashing (Norouzi, Punjani & Fleet, arXiv 1307.2982). The code
  is cut into ``m`` substrings of ``chunk_bits`` bits, each with its own bucket table. If two
  codes are within ``r`` bits, then by the pigeonhole principle some substring is within
  ``r // m`` bits, so probing every bucket within ``r // m`` flips of each query substring finds
  every answer; candidates are then checked with the full distance. Same answers as brute force.

``make_index`` picks one by size. Both take ids (any int64) alongside the codes and return
``(ids, distances)`` sorted by distance, then id.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

BRUTE_FORCE_MAX = 100_000


def as_codes(codes, words: int | None = None) -> np.ndarray:
    """A (n, words) uint64 array from ints (signed or unsigned), rows of ints, or an array."""
    arr = np.asarray(codes)
    if arr.dtype != np.uint64:
        arr = np.asarray(codes, dtype=np.int64).view(np.uint64) if arr.dtype.kind == "i" else arr.astype(np.uint64)
    if arr.ndim == 1:
        arr = arr[:, None] if words in (None, 1) else arr[None, :]
    if words is not None and arr.shape[1] != words:
        raise ValueError(f"codes have {arr.shape[1]} words, the index {words}")
    return np.ascontiguousarray(arr)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distances between the rows of ``a`` (..., w) and ``b`` (broadcast), as int32."""
    d = np.bitwise_count(np.bitwise_xor(a[..., 0], b[..., 0])).astype(np.int32)
    for w in range(1, a.shape[-1]):
        d += np.bitwise_count(np.bitwise_xor(a[..., w], b[..., w]))
    return d


def _distances(cols: list[np.ndarray], rows: np.ndarray | None, q: np.ndarray) -> np.ndarray:
    """Distances from code ``q`` to the stored codes at ``rows`` (all when None); ``cols`` holds
    one contiguous array per word, which gathers and XORs faster than an (n, w) array."""
    d = None
    for w, col in enumerate(cols):
        part = np.bitwise_count(np.bitwise_xor(col if rows is None else col[rows], q[w]))
        d = part.astype(np.int32) if d is None else d + part
    return d


class BruteForceIndex:
    def __init__(self, words: int = 2):
        self.words = words
        self._codes = np.empty((0, words), dtype=np.uint64)
        self._ids = np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, codes, ids) -> None:
        codes = as_codes(codes, self.words)
        ids = np.asarray(ids, dtype=np.int64)
        if len(codes) != len(ids):
            raise ValueError("codes and ids differ in length")
        self._codes = np.concatenate([self._codes, codes])
        self._ids = np.concatenate([self._ids, ids])
        self._cols = [np.ascontiguousarray(self._codes[:, w]) for w in range(self.words)]

    def query(self, code, radius: int) -> tuple[np.ndarray, np.ndarray]:
        q = as_codes(code, self.words)[0]
        d = _distances(self._cols, None, q)
        hit = np.flatnonzero(d <= radius)
        return _sorted(self._ids[hit], d[hit])

    def pairs_within(self, codes, radius: int, block: int = 1 << 22) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every (query row, id, distance) within ``radius``, for many queries at once."""
        qs = as_codes(codes, self.words)
        rows, ids, dists = [], [], []
        step = max(1, block // max(1, len(self._ids)))
        for s in range(0, len(qs), step):
            block_q = qs[s : s + step]
            # the first word alone must be within the radius: filter on it (q, n) and finish the
            # distance on the few survivors only
            d0 = np.bitwise_count(block_q[:, 0, None] ^ self._cols[0][None, :])
            r, c = np.nonzero(d0 <= radius)
            d = d0[r, c].astype(np.int32)
            for w in range(1, self.words):
                d += np.bitwise_count(block_q[r, w] ^ self._cols[w][c])
            keep = d <= radius
            rows.append(r[keep] + s)
            ids.append(self._ids[c[keep]])
            dists.append(d[keep])
        if not rows:
            return (np.empty(0, np.int64),) * 2 + (np.empty(0, np.int32),)
        return np.concatenate(rows), np.concatenate(ids), np.concatenate(dists)


class MultiIndexHash:
    """Exact radius search in sub-linear time: ``m = 64 * words / chunk_bits`` bucket tables.

    Codes added after the tables were built wait in a small brute-force buffer; the tables are
    rebuilt when that buffer outgrows an eighth of the indexed codes."""

    def __init__(self, words: int = 2, chunk_bits: int = 16):
        if 64 % chunk_bits:
            raise ValueError("chunk_bits must divide 64")
        self.words = words
        self.chunk_bits = chunk_bits
        self.m = 64 * words // chunk_bits
        self._ids = np.empty(0, dtype=np.int64)
        self._cols = [np.empty(0, dtype=np.uint64) for _ in range(words)]  # one array per word
        self._built = 0  # codes[:built] are in the tables
        self._order: list[np.ndarray] = []
        self._sorted_cols: list[list[np.ndarray]] = []
        self._offsets: list[np.ndarray] = []
        self._masks: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, codes, ids) -> None:
        codes = as_codes(codes, self.words)
        ids = np.asarray(ids, dtype=np.int64)
        if len(codes) != len(ids):
            raise ValueError("codes and ids differ in length")
        self._ids = np.concatenate([self._ids, ids])
        self._cols = [np.concatenate([col, codes[:, w]]) for w, col in enumerate(self._cols)]
        if len(self._ids) - self._built > max(1024, self._built // 8):
            self.build()

    def _chunk(self, words, j: int) -> np.ndarray:
        """Substring ``j`` of a code (a (w,) array) or of every code (the list of word columns)."""
        word, k = divmod(j, 64 // self.chunk_bits)
        mask = np.uint64((1 << self.chunk_bits) - 1)
        return ((words[word] >> np.uint64(k * self.chunk_bits)) & mask).astype(np.int64)

    def build(self) -> None:
        """(Re)build the bucket tables over every code added so far."""
        n_buckets = 1 << self.chunk_bits
        self._order, self._offsets, self._sorted_cols = [], [], []
        for j in range(self.m):
            keys = self._chunk(self._cols, j)
            order = np.argsort(keys, kind="stable").astype(np.int64)
            self._order.append(order)
            self._sorted_cols.append([col[order] for col in self._cols])
            offsets = np.zeros(n_buckets + 1, dtype=np.int64)
            np.cumsum(np.bincount(keys, minlength=n_buckets), out=offsets[1:])
            self._offsets.append(offsets)
        self._built = len(self._ids)

    def _flip_masks(self, r: int) -> np.ndarray:
        """Every chunk_bits-bit mask with at most ``r`` bits set."""
        if r not in self._masks:
            masks = [0]
            for k in range(1, min(r, self.chunk_bits) + 1):
                masks.extend(sum(1 << b for b in c) for c in combinations(range(self.chunk_bits), k))
            self._masks[r] = np.array(masks, dtype=np.int64)
        return self._masks[r]

    def _probe(self, code: np.ndarray, radius: int) -> np.ndarray:
        """Positions of the indexed codes within ``radius`` of ``code`` (unsorted, unique)."""
        if self._built == 0:
            return np.empty(0, np.int64)
        masks = self._flip_masks(radius // self.m)
        hits = []
        for j in range(self.m):
            probes = self._chunk(code, j) ^ masks
            starts = self._offsets[j][probes]
            lens = self._offsets[j][probes + 1] - starts
            keep = lens > 0
            starts, lens = starts[keep], lens[keep]
            total = int(lens.sum())
            if total == 0:
                continue
            # the bucket ranges [start, start+len), concatenated without a Python loop; the
            # table keeps its own copy of the codes in bucket order, so these reads are runs
            at = np.repeat(starts - (np.cumsum(lens) - lens), lens) + np.arange(total)
            d = _distances(self._sorted_cols[j], at, code)
            hits.append(self._order[j][at[d <= radius]])
        return np.unique(np.concatenate(hits)) if hits else np.empty(0, np.int64)

    def query(self, code, radius: int) -> tuple[np.ndarray, np.ndarray]:
        q = as_codes(code, self.words)[0]
        hit = self._probe(q, radius)
        tail = np.arange(self._built, len(self._ids))
        if len(tail):
            hit = np.concatenate([hit, tail[_distances(self._cols, tail, q) <= radius]])
        return _sorted(self._ids[hit], _distances(self._cols, hit, q))

    def pairs_within(self, codes, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        qs = as_codes(codes, self.words)
        rows, ids, dists = [], [], []
        for i, q in enumerate(qs):
            found, d = self.query(q, radius)
            rows.append(np.full(len(found), i, dtype=np.int64))
            ids.append(found)
            dists.append(d)
        if not rows:
            return (np.empty(0, np.int64),) * 2 + (np.empty(0, np.int32),)
        return np.concatenate(rows), np.concatenate(ids), np.concatenate(dists)


def _sorted(ids: np.ndarray, dists: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((ids, dists))
    return ids[order], dists[order].astype(np.int32)


def make_index(codes, ids, words: int = 2, kind: str = "auto") -> BruteForceIndex | MultiIndexHash:
    """An index over ``codes``: brute force up to BRUTE_FORCE_MAX codes, multi-index hashing
    beyond (``kind`` = "auto" | "brute" | "mih")."""
    codes = as_codes(codes, words)
    if kind == "auto":
        kind = "brute" if len(codes) <= BRUTE_FORCE_MAX else "mih"
    index: BruteForceIndex | MultiIndexHash = BruteForceIndex(words) if kind == "brute" else MultiIndexHash(words)
    index.add(codes, ids)
    if isinstance(index, MultiIndexHash) and index._built < len(index):
        index.build()  # every code in the tables, none waiting in the brute-force tail
    return index
