"""The pools of the life of an image: what training learns from and what cleaning works on.

- ``clean_pool``: the best clean member of each dedup group (training's pool, by split);
- ``watermarked_pool``: watermarked images whose group has no clean member (cleaning's pool);
- ``real_pairs``: (watermarked, clean) members of one group, real ground truth for the remover;
- ``images_without_cleaning``: the watermarked pool a remover version has not cleaned yet;
- ``detector_training_keys``: one image per group, what triage trains a detector on.

Every function takes a session.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import ColumnElement, and_, exists, func, or_, select
from sqlalchemy.orm import Session, aliased

from storage.models import Claim, Cleaning, Image


def _group_key():
    # An image not (yet) in a group is its own group.
    return func.coalesce(Image.group_id, Image.id)


def clean_pool(session: Session, split: str | None = None) -> list[Image]:
    """The best clean member of each dedup group (largest area, then bytes, then first seen)."""
    g = _group_key().label("g")
    ranked = (
        select(
            Image.id,
            func.row_number()
            .over(partition_by=g, order_by=[(Image.width * Image.height).desc(), Image.bytes.desc(), Image.id])
            .label("rn"),
        )
        .where(Image.label == "clean")
        .subquery()
    )
    stmt = select(Image).join(ranked, ranked.c.id == Image.id).where(ranked.c.rn == 1).order_by(Image.id)
    if split:
        stmt = stmt.where(Image.split == split)
    return list(session.scalars(stmt))


def watermarked_pool(session: Session) -> list[Image]:
    """Watermarked images whose dedup group has no clean member."""
    other = aliased(Image)
    has_clean = exists().where(
        other.label == "clean", func.coalesce(other.group_id, other.id) == func.coalesce(Image.group_id, Image.id)
    )
    stmt = select(Image).where(Image.label == "watermarked", ~has_clean).order_by(Image.id)
    return list(session.scalars(stmt))


def real_pairs(session: Session) -> list[tuple[Image, Image]]:
    """(watermarked, clean) pairs from groups that hold both: real ground truth for the remover.
    Each watermarked member is paired with its group's best clean member."""
    wm = aliased(Image)
    cl = aliased(Image)
    g_wm = func.coalesce(wm.group_id, wm.id)
    g_cl = func.coalesce(cl.group_id, cl.id)
    ranked = (
        select(
            wm.id.label("wm_id"),
            cl.id.label("cl_id"),
            func.row_number()
            .over(partition_by=wm.id, order_by=[(cl.width * cl.height).desc(), cl.bytes.desc(), cl.id])
            .label("rn"),
        )
        .join(cl, and_(g_cl == g_wm, cl.label == "clean"))
        .where(wm.label == "watermarked")
        .subquery()
    )
    rows = session.execute(select(ranked.c.wm_id, ranked.c.cl_id).where(ranked.c.rn == 1).order_by(ranked.c.wm_id)).all()
    if not rows:
        return []
    ids = {i for r in rows for i in r}
    by_id = {im.id: im for im in session.scalars(select(Image).where(Image.id.in_(ids)))}
    return [(by_id[a], by_id[b]) for a, b in rows]


def images_without_cleaning(session: Session, model_version: str, ids: Iterable[int] | None = None) -> list[Image]:
    """Watermarked-pool images with no cleaning row for ``model_version``."""
    done = exists().where(Cleaning.image_id == Image.id, Cleaning.model_version == model_version)
    pool_ids = [im.id for im in watermarked_pool(session)] if ids is None else list(ids)
    if not pool_ids:
        return []
    out: list[Image] = []
    for i in range(0, len(pool_ids), 500):
        out.extend(session.scalars(select(Image).where(Image.id.in_(pool_ids[i : i + 500]), ~done).order_by(Image.id)))
    return out


def cleaned_image_ids(session: Session, model_version: str) -> set[int]:
    """Ids of the images with a cleaning by ``model_version``."""
    return set(session.scalars(select(Cleaning.image_id).where(Cleaning.model_version == model_version)))


def claim_has_cleaning(model_version: str) -> ColumnElement[bool]:
    """A condition on ``claims`` rows: the claimed image has a cleaning by ``model_version``."""
    return exists().where(Cleaning.image_id == Claim.image_id, Cleaning.model_version == model_version)


def detector_training_keys(session: Session, exclude_watermarked: bool = False) -> list[str]:
    """Blob keys a detector trains on, by image id: one image per dedup group (its canonical
    member, or an ungrouped image), no failures, and with ``exclude_watermarked`` (a retrain) none
    already labelled watermarked."""
    stmt = select(Image.blob_key).where(Image.status != "failed",
                                        or_(Image.dedup_role.is_(None), Image.dedup_role == "canonical"))
    if exclude_watermarked:
        stmt = stmt.where(or_(Image.label.is_(None), Image.label != "watermarked"))
    return list(session.scalars(stmt.order_by(Image.id)))
