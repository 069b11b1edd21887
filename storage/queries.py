"""Named catalog queries shared by the CLI, the flows and the tests.

Every function takes a session; writers expect one from ``Catalog.write()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from storage.db import dialect_insert, insert_ignore, upsert
from storage.models import Cleaning, Failure, Image, Model, Page, Sighting, utcnow

# --- writes -----------------------------------------------------------------------------


def _text(value: Any) -> Any:
    """Text as PostgreSQL accepts it: NUL (which scraped HTML and error messages can hold) becomes
    U+FFFD. SQLite would store it as is; one rule for both keeps the catalogs identical."""
    return value.replace("\x00", "\ufffd") if isinstance(value, str) else value


def record_failure(session: Session, stage: str, subject: str, error: BaseException | str, error_class: str | None = None) -> None:
    """Insert a failure row, or bump ``attempts`` on the existing (stage, subject) row."""
    if isinstance(error, BaseException):
        error_class = error_class or type(error).__name__
        message = str(error) or repr(error)
    else:
        error_class = error_class or "Error"
        message = error
    subject = _text(str(subject)[:2000])
    error_class, message, now = _text(error_class[:128]), _text(message[:4000]), utcnow()
    session.flush()
    # one atomic upsert: concurrent workers recording the same failure each count an attempt
    upsert(
        session,
        Failure,
        {"stage": stage, "subject": subject, "error_class": error_class, "message": message, "attempts": 1,
         "first_at": now, "last_at": now},
        ["stage", "subject"],
        {"attempts": Failure.attempts + 1, "error_class": error_class, "message": message, "last_at": now},
    )
    _expire(session, Failure, lambda f: (f.stage, f.subject) == (stage, subject))


def clear_failure(session: Session, stage: str, subject: str) -> None:
    session.query(Failure).filter(Failure.stage == stage, Failure.subject == str(subject)).delete()


def clear_failures(session: Session, stage: str, subjects: Sequence[str]) -> None:
    """``clear_failure`` for many subjects of one stage: one DELETE per 500."""
    subjects = list(dict.fromkeys(str(x) for x in subjects))
    for i in range(0, len(subjects), 500):
        part = subjects[i : i + 500]
        session.execute(delete(Failure).where(Failure.stage == stage, Failure.subject.in_(part)))


def add_images(session: Session, rows: Sequence[dict]) -> dict[str, int]:
    """Insert image rows (keys: sha256, blob_key, mime, width, height, bytes, source) unless their
    sha256 is known; returns ``{sha256: image id}`` for every row given."""
    now = utcnow()
    insert_ignore(
        session,
        Image,
        [{"status": "fetched", "first_seen_at": now, **r} for r in rows],
        ["sha256"],
    )
    shas = [r["sha256"] for r in rows]
    return image_ids_by_sha(session, shas)


def image_ids_by_sha(session: Session, shas: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in range(0, len(shas), 500):
        part = shas[i : i + 500]
        out.update(dict(session.execute(select(Image.sha256, Image.id).where(Image.sha256.in_(part))).all()))
    return out


def shas_by_id(session: Session, image_ids: Sequence[int]) -> dict[int, str]:
    return dict(session.execute(select(Image.id, Image.sha256).where(Image.id.in_(image_ids))).all())


def image_blobs(session: Session, image_ids: Sequence[int]) -> list[tuple[int, str, str]]:
    """``(id, sha256, blob_key)`` of each of ``image_ids`` in the catalog."""
    stmt = select(Image.id, Image.sha256, Image.blob_key).where(Image.id.in_(list(image_ids)))
    return [tuple(r) for r in session.execute(stmt)]


def images_to_score(session: Session, detector_version: str) -> list[int]:
    """Ids, in order, of the images triage scores next: not failed, and not yet scored by
    ``detector_version``."""
    stmt = select(Image.id).where(
        Image.status != "failed",
        or_(Image.detector_version.is_(None), Image.detector_version != detector_version),
    ).order_by(Image.id)
    return list(session.scalars(stmt))


def images_by_id(session: Session, image_ids: Sequence[int]) -> list[Image]:
    return list(session.scalars(select(Image).where(Image.id.in_(list(image_ids)))))


def cleanings_by(session: Session, model_version: str, image_ids: Sequence[int]) -> list[Cleaning]:
    """The cleanings ``model_version`` made of ``image_ids``."""
    return list(session.scalars(select(Cleaning).where(Cleaning.model_version == model_version,
                                                       Cleaning.image_id.in_(list(image_ids)))))


def add_cleanings(session: Session, rows: Sequence[dict]) -> None:
    """Insert cleaning rows (image_id, model_version, output_key, metrics, …); an image that
    ``model_version`` cleaned already keeps its row."""
    insert_ignore(session, Cleaning, rows, ["image_id", "model_version"])


def drop_model_cleanings(session: Session, model_version: str, image_ids: Sequence[int],
                         sources: Sequence[str] = ("model",)) -> None:
    """Delete ``model_version``'s cleanings of ``image_ids`` from ``sources`` (by default its own,
    ``source='model'``; ``'duplicate'`` adds the real pairs' rows)."""
    session.execute(delete(Cleaning).where(Cleaning.model_version == model_version,
                                           Cleaning.source.in_(list(sources)),
                                           Cleaning.image_id.in_(list(image_ids))))


def add_sightings(session: Session, rows: Sequence[dict]) -> None:
    """Insert sightings (image_id, page_id, image_url, alt, found_by); duplicates are ignored,
    page-less ones (an imported file's ``file://`` URL) too, which the unique key cannot catch
    (its NULL page_id never equals another)."""
    now = utcnow()
    rows = [{"seen_at": now, **{k: _text(v) for k, v in r.items()}} for r in rows]
    loose = [r for r in rows if r.get("page_id") is None]
    if loose:
        seen = set(session.execute(select(Sighting.image_id, Sighting.image_url).where(
            Sighting.page_id.is_(None), Sighting.image_url.in_(sorted({r["image_url"] for r in loose})))).all())
        keep = []
        for r in loose:
            if (r["image_id"], r["image_url"]) not in seen:
                seen.add((r["image_id"], r["image_url"]))
                keep.append(r)
        rows = [r for r in rows if r.get("page_id") is not None] + keep
    insert_ignore(session, Sighting, rows, ["image_id", "page_id", "image_url"])


def add_new_images(session: Session, rows: Sequence[dict]) -> tuple[dict[str, int], set[str]]:
    """``add_images``, and the sha256 of the rows that were not in the catalog before (the one
    count of new images that the scrape and the import both report)."""
    known = set(image_ids_by_sha(session, [r["sha256"] for r in rows]))
    ids = add_images(session, rows)
    return ids, set(ids) - known


def upsert_page(session: Session, url: str, host: str, **fields: Any) -> int:
    """Create or update the page row for ``url``; returns its id. One atomic upsert, so workers
    crawling the same page at once do not collide on the unique URL."""
    url, host = _text(url), _text(host)
    fields = {k: _text(v) for k, v in fields.items()}
    session.flush()
    page_id = upsert(session, Page, {"url": url, "host": host, **fields}, ["url"], {"host": host, **fields})
    _expire(session, Page, lambda p: p.id == page_id)
    return page_id


def upsert_pages(session: Session, rows: Sequence[dict]) -> dict[str, int]:
    """``upsert_page`` for many rows (each with ``url``, ``host`` and the fields to set), one
    executemany per set of field names; rows for the same URL apply in order. Returns
    ``{url: page id}``."""
    groups: dict[tuple[str, ...], list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(sorted(row)), []).append({k: _text(v) for k, v in row.items()})
    session.flush()
    for cols, part in groups.items():
        stmt = dialect_insert(session)(Page.__table__)
        stmt = stmt.on_conflict_do_update(index_elements=["url"],
                                          set_={c: stmt.excluded[c] for c in cols if c != "url"})
        for i in range(0, len(part), 500):
            session.execute(stmt, part[i : i + 500])
    urls = list(dict.fromkeys(r["url"] for r in rows))
    _expire(session, Page, lambda p: p.url in urls)
    return page_ids_by_url(session, urls)


def page_ids_by_url(session: Session, urls: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in range(0, len(urls), 500):
        part = [_text(u) for u in urls[i : i + 500]]
        out.update(dict(session.execute(select(Page.url, Page.id).where(Page.url.in_(part))).all()))
    return out


def page_validators(session: Session, urls: Sequence[str]) -> dict[str, tuple[str | None, str | None]]:
    """``{url: (etag, last_modified)}`` for the pages among ``urls`` that have either validator."""
    out: dict[str, tuple[str | None, str | None]] = {}
    for i in range(0, len(urls), 500):
        part = [_text(u) for u in urls[i : i + 500]]
        rows = session.execute(select(Page.url, Page.etag, Page.last_modified).where(
            Page.url.in_(part), (Page.etag.is_not(None)) | (Page.last_modified.is_not(None))))
        out.update({url: (etag, lm) for url, etag, lm in rows})
    return out


def scrape_memory(session: Session, image_stage: str) -> dict[str, bool]:
    """Whether the catalog holds anything a crawl must look up before fetching: pages with
    validators, sightings (image URLs met before), failures of ``image_stage``. Three LIMIT 1
    queries; a crawl on a catalog with none of them skips its per-URL look-ups."""
    return {
        "validators": session.scalar(select(Page.id).where(
            (Page.etag.is_not(None)) | (Page.last_modified.is_not(None))).limit(1)) is not None,
        "sightings": session.scalar(select(Sighting.id).limit(1)) is not None,
        "image_failures": session.scalar(select(Failure.id).where(Failure.stage == image_stage).limit(1)) is not None,
    }


def _expire(session: Session, model: type, match) -> None:
    """Core upserts bypass the ORM: expire any loaded copy so that it is read again."""
    for obj in list(session.identity_map.values()):
        if isinstance(obj, model) and match(obj):
            session.expire(obj)


def get_page(session: Session, url: str) -> Page | None:
    return session.scalar(select(Page).where(Page.url == url))


def image_ids_by_url(session: Session, urls: Sequence[str]) -> dict[str, int]:
    """``{image URL: image id}`` for the URLs that some sighting already holds."""
    out: dict[str, int] = {}
    for i in range(0, len(urls), 500):
        part = list(urls[i : i + 500])
        out.update(dict(session.execute(select(Sighting.image_url, Sighting.image_id).where(Sighting.image_url.in_(part))).all()))
    return out


def failure_classes(session: Session, stage: str, subjects: Sequence[str]) -> dict[str, str]:
    """``{subject: error class}`` of the recorded failures of ``stage`` among ``subjects``."""
    out: dict[str, str] = {}
    for i in range(0, len(subjects), 500):
        part = list(subjects[i : i + 500])
        rows = session.execute(select(Failure.subject, Failure.error_class).where(Failure.stage == stage, Failure.subject.in_(part)))
        out.update(dict(rows.all()))
    return out


def register_model(
    session: Session,
    version: str,
    kind: str,
    checkpoint_key: str | None,
    config: dict,
    metrics: dict,
) -> Model:
    m = Model(version=version, kind=kind, checkpoint_key=checkpoint_key, config=config, metrics=metrics)
    session.add(m)
    session.flush()
    return m


def promote_model(session: Session, version: str) -> None:
    """Make ``version`` the one promoted model of its kind."""
    m = session.scalar(select(Model).where(Model.version == version))
    if m is None:
        raise KeyError(f"no model {version!r}")
    session.execute(update(Model).where(Model.kind == m.kind).values(promoted=False))
    m.promoted = True
    session.flush()


# --- reads ------------------------------------------------------------------------------


def promoted_model(session: Session, kind: str) -> Model | None:
    return session.scalar(select(Model).where(Model.kind == kind, Model.promoted.is_(True)))


def get_model(session: Session, version: str) -> Model | None:
    return session.scalar(select(Model).where(Model.version == version))


def list_models(session: Session, kind: str | None = None) -> list[Model]:
    stmt = select(Model).order_by(Model.created_at)
    if kind:
        stmt = stmt.where(Model.kind == kind)
    return list(session.scalars(stmt))


def catalog_stats(session: Session) -> dict[str, Any]:
    """``{"pages": n, "images": {status: n}, "failures": {stage: n}, ...}``."""
    pages = session.scalar(select(func.count()).select_from(Page)) or 0
    images = dict(session.execute(select(Image.status, func.count()).group_by(Image.status)).all())
    failures = dict(session.execute(select(Failure.stage, func.count()).group_by(Failure.stage)).all())
    roles = dict(
        session.execute(
            select(Image.dedup_role, func.count()).where(Image.dedup_role.is_not(None)).group_by(Image.dedup_role)
        ).all()
    )
    cleanings = session.scalar(select(func.count()).select_from(Cleaning)) or 0
    models = dict(session.execute(select(Model.kind, func.count()).group_by(Model.kind)).all())
    return {
        "pages": pages,
        "images": images,
        "failures": failures,
        "dedup": roles,
        "cleanings": cleanings,
        "models": models,
    }


def first_sighting_url():
    s = aliased(Sighting)
    return (
        select(s.image_url)
        .where(s.image_id == Image.id)
        .order_by(s.seen_at, s.id)
        .limit(1)
        .correlate(Image)
        .scalar_subquery()
    )


def list_images(
    session: Session,
    status: str | None = None,
    min_psnr: float | None = None,
    label: str | None = None,
    limit: int | None = None,
    model_version: str | None = None,
) -> list[dict[str, Any]]:
    """Images with their first-sighting URL and, when cleaned, the newest (or ``model_version``'s)
    cleaning output and its PSNR against the input. ``status='duplicate'`` filters on the dedup
    role instead of the lifecycle status."""
    latest = (
        select(Cleaning.image_id, func.max(Cleaning.id).label("cid"))
        .group_by(Cleaning.image_id)
    )
    if model_version:
        latest = latest.where(Cleaning.model_version == model_version)
    latest = latest.subquery()
    stmt = (
        select(Image, first_sighting_url().label("url"), Cleaning)
        .outerjoin(latest, latest.c.image_id == Image.id)
        .outerjoin(Cleaning, Cleaning.id == latest.c.cid)
        .order_by(Image.id)
    )
    if status == "duplicate" or status == "canonical":
        stmt = stmt.where(Image.dedup_role == status)
    elif status:
        stmt = stmt.where(Image.status == status)
    if label:
        stmt = stmt.where(Image.label == label)
    if min_psnr is not None:
        stmt = stmt.where(Cleaning.psnr_vs_input >= min_psnr)
    if limit:
        stmt = stmt.limit(limit)
    out = []
    for img, url, cl in session.execute(stmt).all():
        row = {
            "id": img.id,
            "sha256": img.sha256,
            "status": img.status,
            "label": img.label,
            "dedup_role": img.dedup_role,
            "group_id": img.group_id,
            "split": img.split,
            "width": img.width,
            "height": img.height,
            "bytes": img.bytes,
            "mime": img.mime,
            "blob_key": img.blob_key,
            "watermark_score": img.watermark_score,
            "url": url,
        }
        if cl is not None:
            row.update(
                {
                    "output": cl.output_key,
                    "model_version": cl.model_version,
                    "cleaning_source": cl.source,
                    "psnr_vs_input": cl.psnr_vs_input,
                    "ssim_vs_input": cl.ssim_vs_input,
                }
            )
        out.append(row)
    return out


def group_sizes(session: Session, group_ids: Sequence[int]) -> dict[int, int]:
    """How many images each of ``group_ids`` (dedup groups, by their canonical image) holds."""
    rows = session.execute(select(Image.group_id, func.count()).where(Image.group_id.in_(list(group_ids)))
                           .group_by(Image.group_id))
    return {int(g): int(n) for g, n in rows}


def images_in_group(session: Session, group_id: int) -> list[Image]:
    return list(session.scalars(select(Image).where(Image.group_id == group_id).order_by(Image.id)))


def count_by_status(session: Session) -> dict[str, int]:
    return dict(session.execute(select(Image.status, func.count()).group_by(Image.status)).all())


def split_for(sha256: str, fractions: tuple[float, float, float] = (0.7, 0.2, 0.1)) -> str:
    """Stable train/val/test split from the content hash: a re-run never moves an image."""
    u = int(sha256[:8], 16) / 0xFFFFFFFF
    if u < fractions[0]:
        return "train"
    return "val" if u < fractions[0] + fractions[1] else "test"


def failures(session: Session, stage: str | None = None) -> list[Failure]:
    stmt = select(Failure).order_by(Failure.last_at.desc())
    if stage:
        stmt = stmt.where(Failure.stage == stage)
    return list(session.scalars(stmt))
