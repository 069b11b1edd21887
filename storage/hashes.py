"""Dedup's reads and writes: each image's own perceptual codes, its window codes, and its group.

Codes are plain signed 64-bit integers here (pHash and dHash as stored); ``pipeline/dedup.py``
turns them into the arrays it matches on.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session

from storage.models import Image, WindowHash


def hash_rows(session: Session, fields: Sequence[str]) -> list[tuple]:
    """The ``fields`` (``Image`` column names) of every image that has not failed, by id."""
    cols = [getattr(Image, f) for f in fields]
    return [tuple(r) for r in session.execute(select(*cols).where(Image.status != "failed").order_by(Image.id))]


def window_codes(session: Session, hash_impl: str) -> list[tuple[int, int, int]]:
    """``(image_id, phash, dhash)`` of every stored window of an image hashed by ``hash_impl``
    that has not failed."""
    stmt = (
        select(WindowHash.image_id, WindowHash.phash, WindowHash.dhash)
        .join(Image, Image.id == WindowHash.image_id)
        .where(Image.hash_impl == hash_impl, Image.status != "failed")
    )
    return [tuple(r) for r in session.execute(stmt)]


def images_with_windows(session: Session, n_windows: int) -> set[int]:
    """Ids of the images that have all ``n_windows`` window codes stored."""
    stmt = select(WindowHash.image_id).group_by(WindowHash.image_id).having(func.count() == n_windows)
    return set(session.scalars(stmt))


def store_hashes(session: Session, hash_impl: str, codes: Sequence[tuple[int, int, int]],
                 windows: Sequence[tuple[int, int, int, int]]) -> None:
    """Each image's own ``(image_id, phash, dhash)``, hashed by ``hash_impl``, and its window codes
    ``(image_id, window, phash, dhash)``, which replace the windows it had."""
    if not codes:
        return
    images, window_table = Image.__table__, WindowHash.__table__
    # Core statements, not ORM bulk operations: the ORM's per-row bookkeeping cost more than the
    # SQL here (eight window rows per image)
    session.execute(update(images).where(images.c.id == bindparam("b_id")),
                    [{"b_id": i, "phash": p, "dhash": d, "hash_impl": hash_impl} for i, p, d in codes])
    session.execute(delete(window_table).where(window_table.c.image_id.in_([i for i, _, _ in codes])))
    if windows:
        session.execute(insert(window_table), [{"image_id": i, "window": w, "phash": p, "dhash": d}
                                               for i, w, p, d in windows])


def set_groups(session: Session, changes: Sequence[dict]) -> None:
    """Dedup's groups: ``{"id", "group_id", "dedup_role"}`` per image, by primary key."""
    session.execute(update(Image), list(changes))
