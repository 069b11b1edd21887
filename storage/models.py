"""Catalog tables (the README's "Querying the catalog" shows them in use). The schema itself is owned by Alembic
(``storage/migrations``); these classes must match the latest migration."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Page(Base):
    __tablename__ = "pages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    url: Mapped[str] = mapped_column(Text, unique=True)
    host: Mapped[str] = mapped_column(String(255), index=True)
    status: Mapped[int | None] = mapped_column(Integer)  # HTTP status of the last fetch
    fetched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    etag: Mapped[str | None] = mapped_column(Text)
    last_modified: Mapped[str | None] = mapped_column(Text)
    depth: Mapped[int] = mapped_column(Integer, default=0)
    opted_out: Mapped[str | None] = mapped_column(String(64))  # noai / noimageai / noindex ... or None
    error: Mapped[str | None] = mapped_column(Text)
    # same-site links found when the page was last parsed (a 304 re-crawl follows these)
    outlinks: Mapped[list[Any] | None] = mapped_column(nullable=True)

    sightings: Mapped[list[Sighting]] = relationship(back_populates="page")


class Image(Base):
    __tablename__ = "images"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    blob_key: Mapped[str] = mapped_column(String(200))
    mime: Mapped[str] = mapped_column(String(64))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    bytes: Mapped[int] = mapped_column(BigInteger)
    source: Mapped[str | None] = mapped_column(String(200))  # "scrape" or an import source name
    status: Mapped[str] = mapped_column(String(16), default="fetched", index=True)

    # dedup: perceptual hashes as signed int64, the implementation that made them, the group
    phash: Mapped[int | None] = mapped_column(BigInteger, index=True)
    dhash: Mapped[int | None] = mapped_column(BigInteger)
    hash_impl: Mapped[str | None] = mapped_column(String(64))
    group_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="SET NULL"), index=True)
    dedup_role: Mapped[str | None] = mapped_column(String(16))

    # triage
    label: Mapped[str | None] = mapped_column(String(16), index=True)
    watermark_score: Mapped[float | None] = mapped_column(Float)
    detector_version: Mapped[str | None] = mapped_column(String(64))

    split: Mapped[str | None] = mapped_column(String(8), index=True)
    first_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    sightings: Mapped[list[Sighting]] = relationship(back_populates="image")
    cleanings: Mapped[list[Cleaning]] = relationship(back_populates="image")

    __table_args__ = (Index("ix_images_label_group", "label", "group_id"),)


class Sighting(Base):
    __tablename__ = "sightings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    page_id: Mapped[int | None] = mapped_column(ForeignKey("pages.id", ondelete="CASCADE"), index=True)
    image_url: Mapped[str] = mapped_column(Text)
    alt: Mapped[str | None] = mapped_column(Text)
    found_by: Mapped[str] = mapped_column(String(32))
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    image: Mapped[Image] = relationship(back_populates="sightings")
    page: Mapped[Page | None] = relationship(back_populates="sightings")

    __table_args__ = (
        UniqueConstraint("image_id", "page_id", "image_url", name="uq_sighting"),
        Index("ix_sightings_image_url", "image_url", postgresql_using="hash"),
    )


class Model(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16), index=True)  # remover | detector
    checkpoint_key: Mapped[str | None] = mapped_column(String(200))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    promoted: Mapped[bool] = mapped_column(Boolean, default=False)


class TrainingRun(Base):
    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_version: Mapped[str | None] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(16), default="remover")
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    history: Mapped[list[Any]] = mapped_column(default=list)
    status: Mapped[str] = mapped_column(String(16), default="running")  # running|completed|failed
    timings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    run_dir: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Cleaning(Base):
    __tablename__ = "cleanings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    model_version: Mapped[str] = mapped_column(String(64), index=True)
    output_key: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(16), default="model")  # model | duplicate
    psnr_vs_input: Mapped[float | None] = mapped_column(Float)
    ssim_vs_input: Mapped[float | None] = mapped_column(Float)
    changed_fraction: Mapped[float | None] = mapped_column(Float)
    score_before: Mapped[float | None] = mapped_column(Float)
    score_after: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    runtime_s: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    image: Mapped[Image] = relationship(back_populates="cleanings")

    __table_args__ = (UniqueConstraint("image_id", "model_version", name="uq_cleaning"),)


class Failure(Base):
    __tablename__ = "failures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    stage: Mapped[str] = mapped_column(String(32), index=True)
    subject: Mapped[str] = mapped_column(Text)  # URL, sha256, image id, path
    error_class: Mapped[str] = mapped_column(String(128))
    message: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    first_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (UniqueConstraint("stage", "subject", name="uq_failure"),)


class Claim(Base):
    """A unit of work (one image for one stage, e.g. ``clean:<model version>``) that a worker may
    hold under a lease. Free rows have no worker and an ``expires_at`` in the past; a worker that
    dies simply lets its lease run out. See ``storage/claims.py``."""

    __tablename__ = "claims"

    stage: Mapped[str] = mapped_column(String(96), primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    worker: Mapped[str | None] = mapped_column(String(128))
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    done_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (Index("ix_claims_stage_free", "stage", "done_at", "expires_at"),)


class WindowHash(Base):
    """The (pHash, dHash) of one crop window of an image (dedup; same ``hash_impl`` as the image's
    own hashes, written and replaced together with them)."""

    __tablename__ = "window_hashes"

    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    window: Mapped[int] = mapped_column(SmallInteger, primary_key=True)  # 1..N_WINDOWS
    phash: Mapped[int] = mapped_column(BigInteger)
    dhash: Mapped[int] = mapped_column(BigInteger)
