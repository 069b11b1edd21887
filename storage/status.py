"""An image's status, changed only here: one named transition per step of its life.

``fetched`` (scrape/import) → ``failed`` (dedup could not hash it, or triage could not decode it)
→ ``clean`` | ``watermarked`` | ``uncertain`` (triage, or a reviewer in the demo) → ``cleaned``
(a remover's output recorded for a watermarked image). A clean image gets its stable split when it
is first labelled clean.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import update
from sqlalchemy.orm import Session

from storage.models import Image
from storage.queries import split_for


def mark_triaged(session: Session, image_id: int, label: str, score: float, detector_version: str) -> None:
    """The detector's label and score; a cleaned image the detector still calls watermarked keeps
    its ``cleaned`` status."""
    img = session.get(Image, image_id)
    img.label, img.watermark_score, img.detector_version = label, float(score), detector_version
    if not (img.status == "cleaned" and label == "watermarked"):
        img.status = label
    if label == "clean" and img.split is None:
        img.split = split_for(img.sha256)


def mark_triage_failed(session: Session, image_id: int, detector_version: str) -> None:
    img = session.get(Image, image_id)
    img.status, img.detector_version = "failed", detector_version


def mark_reviewed(session: Session, image_id: int, sha256: str, label: str) -> None:
    """A reviewer's label, which replaces the detector's."""
    session.execute(update(Image).where(Image.id == image_id).values(
        label=label, status=label, split=split_for(sha256) if label == "clean" else None))


def mark_hash_failed(session: Session, image_id: int) -> None:
    """Dedup could not hash the image: it leaves its group and every later step."""
    session.execute(update(Image).where(Image.id == image_id).values(status="failed", group_id=None, dedup_role=None))


def mark_cleaned(session: Session, image_ids: Sequence[int]) -> None:
    """The watermarked images among ``image_ids`` now have a cleaning."""
    session.execute(update(Image).where(Image.id.in_(image_ids), Image.label == "watermarked").values(status="cleaned"))


def assign_splits(session: Session, splits: Sequence[tuple[int, str]]) -> None:
    """Record each ``(image_id, split)``: the stable split of a clean-pool image that has none."""
    for split in sorted({sp for _, sp in splits}):
        ids = [i for i, sp in splits if sp == split]
        for k in range(0, len(ids), 500):
            session.execute(update(Image).where(Image.id.in_(ids[k : k + 500])).values(split=split))
