"""Dedup on real photos (the offline samples of scikit-image, scikit-learn and matplotlib):
transformed copies are grouped, distinct photos are not, canonical choice, incremental runs,
idempotence, corrupt images, hash implementations, and the real (watermarked, clean) pairs."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from sqlalchemy import select, update

from pipeline.dedup import Row, dedup
from pipeline.importer import import_paths
from pipeline.perceptual import HASH_IMPL, N_WINDOWS
from storage import pools
from storage import queries as q
from storage.models import Failure, WindowHash
from storage.models import Image as ImageRow

SIDE = 192  # short side of the test photos: small enough to be quick, big enough to be photos


def _photos() -> dict[str, Image.Image]:
    import matplotlib.cbook
    import skimage.data
    from sklearn.datasets import load_sample_images

    arrays = {
        "astronaut": skimage.data.astronaut(),
        "chelsea": skimage.data.chelsea(),
        "coffee": skimage.data.coffee(),
        "rocket": skimage.data.rocket(),
        "motorcycle": skimage.data.stereo_motorcycle()[0],
    }
    arrays.update(zip(("china", "flower"), load_sample_images().images, strict=True))
    out = {k: Image.fromarray(v).convert("RGB") for k, v in arrays.items()}
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as fh:
        out["grace_hopper"] = Image.open(fh).convert("RGB")
    for k, im in out.items():
        s = SIDE / min(im.size)
        out[k] = im.resize((round(im.width * s), round(im.height * s)), Image.LANCZOS)
    return out


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    return _photos()


def _save(im: Image.Image, path: Path, fmt: str = "JPEG", quality: int = 92) -> Path:
    if fmt == "JPEG":
        im.save(path, "JPEG", quality=quality)
    else:
        im.save(path, fmt)
    return path


def _rotate(im: Image.Image, deg: float) -> Image.Image:
    w, h = im.size
    a = math.radians(abs(deg))
    s = 1.0 / (math.cos(a) + math.sin(a) * max(w / h, h / w))
    cw, ch = int(w * s), int(h * s)
    return im.rotate(deg, resample=Image.BICUBIC).crop(((w - cw) // 2, (h - ch) // 2, (w + cw) // 2, (h + ch) // 2))


def _watermark(im: Image.Image) -> Image.Image:
    layer = Image.new("RGBA", im.size, (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    font = ImageFont.load_default(size=max(12, im.height // 7))
    d.text((im.width // 8, im.height // 2 - im.height // 14), "(c) SAMPLE", font=font, fill=(255, 255, 255, 120),
           stroke_width=2, stroke_fill=(0, 0, 0, 120))
    return Image.alpha_composite(im.convert("RGBA"), layer).convert("RGB")


def _brightness(im: Image.Image, delta: int) -> Image.Image:
    return Image.fromarray(np.clip(np.asarray(im, dtype=np.int16) + delta, 0, 255).astype(np.uint8))


def variants(im: Image.Image) -> dict[str, tuple[Image.Image, str, int]]:
    """Every transformation the issue names: (image, format, JPEG quality)."""
    w, h = im.size
    return {
        "q30": (im, "JPEG", 30),
        "q90": (im, "JPEG", 90),
        "half": (im.resize((w // 2, h // 2), Image.LANCZOS), "JPEG", 90),
        "double": (im.resize((w * 2, h * 2), Image.LANCZOS), "JPEG", 90),
        "crop10-corner": (im.crop((0, 0, int(w * 0.9), int(h * 0.9))), "JPEG", 90),
        "crop10-center": (im.crop((int(w * 0.05), int(h * 0.05), int(w * 0.95), int(h * 0.95))), "JPEG", 90),
        "crop10-left": (im.crop((int(w * 0.1), 0, w, h)), "JPEG", 90),
        "crop5-corner": (im.crop((w - int(w * 0.95), h - int(h * 0.95), w, h)), "JPEG", 90),
        "brighter": (_brightness(im, 30), "JPEG", 90),
        "darker": (_brightness(im, -30), "JPEG", 90),
        "rot3": (_rotate(im, 3), "JPEG", 90),
        "rot-2": (_rotate(im, -2), "JPEG", 90),
        "png": (im, "PNG", 0),
        "webp": (im, "WEBP", 0),
        "wm": (_watermark(im), "JPEG", 90),
    }


def _write_set(folder: Path, photos: dict[str, Image.Image], names=None, kinds=None) -> dict[str, str]:
    """Write base + variants; returns {file name: photo name}."""
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for name in names or photos:
        im = photos[name]
        truth[_save(im, folder / f"{name}-base.jpg", quality=95).name] = name
        for kind, (v, fmt, quality) in variants(im).items():
            if kinds is not None and kind not in kinds:
                continue
            ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[fmt]
            truth[_save(v, folder / f"{name}-{kind}.{ext}", fmt, quality).name] = name
    return truth


def _groups_by_file(catalog) -> dict[str, int | None]:
    with catalog.session() as s:
        rows = q.list_images(s)
    return {unquote(Path(r["url"]).name): r["group_id"] for r in rows}


def _image_rows(catalog) -> dict[int, dict]:
    with catalog.session() as s:
        return {r["id"]: dict(r) for r in s.execute(select(*ImageRow.__table__.columns)).mappings()}


def _snapshot(catalog) -> list[tuple]:
    with catalog.session() as s:
        images = [tuple(r) for r in s.execute(select(*ImageRow.__table__.columns).order_by(ImageRow.id))]
        windows = [tuple(r) for r in s.execute(select(*WindowHash.__table__.columns).order_by(
            WindowHash.image_id, WindowHash.window))]
    return images + windows


def test_transformed_copies_are_grouped_and_distinct_photos_are_not(tmp_path, photos, catalog, blobs, settings):
    truth = _write_set(tmp_path / "set", photos)
    stats = import_paths([tmp_path / "set"], catalog, blobs, settings)
    assert stats.added == len(truth)

    summary = dedup(catalog, blobs, settings)
    assert summary["hashed"] == len(truth) and summary["failed"] == 0

    groups = _groups_by_file(catalog)
    for name in photos:
        members = {f: g for f, g in groups.items() if truth[f] == name}
        missed = sorted(f for f, g in members.items() if g != members[f"{name}-base.jpg"])
        assert not missed, f"{name}: copies not grouped with the original: {missed}"
    assert len({groups[f"{n}-base.jpg"] for n in photos}) == len(photos), "distinct photos were merged"
    assert summary["groups"] == len(photos)
    assert summary["duplicates"] == len(truth) - len(photos)

    with catalog.session() as s:
        rows = s.scalars(select(ImageRow)).all()
        assert all(r.hash_impl == HASH_IMPL and r.phash is not None and r.dhash is not None for r in rows)
        assert all(-(2**63) <= r.phash < 2**63 for r in rows)
        n_windows = s.scalar(select(q.func.count()).select_from(WindowHash))
        assert n_windows == N_WINDOWS * len(rows)
        for r in rows:  # the canonical points at itself, every member at its canonical
            canon = s.get(ImageRow, r.group_id)
            assert canon.dedup_role == "canonical" and canon.group_id == canon.id
            assert r.dedup_role == ("canonical" if r.id == canon.id else "duplicate")


def test_canonical_is_highest_resolution_then_larger_file_then_first_seen(tmp_path, photos, catalog, blobs, settings):
    im = photos["coffee"]
    folder = tmp_path / "c"
    folder.mkdir()
    _save(im.resize((im.width // 2, im.height // 2), Image.LANCZOS), folder / "a-small.jpg")
    _save(im, folder / "b-same-size-jpeg.jpg", quality=85)
    _save(im, folder / "c-same-size-png.png", "PNG")  # same resolution, larger file
    import_paths([folder], catalog, blobs, settings)
    dedup(catalog, blobs, settings)
    groups = _groups_by_file(catalog)
    assert len(set(groups.values())) == 1
    with catalog.session() as s:
        canon = s.get(ImageRow, groups["a-small.jpg"])
        assert canon.mime == "image/png" and canon.dedup_role == "canonical"

    # the rule itself: resolution beats size, size beats age, age beats id
    from datetime import UTC, datetime

    t1, t2 = datetime(2024, 1, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC)

    def row(i, w, h, b, t):
        return Row(i, "x", "k", w, h, b, t, 0, 0, HASH_IMPL, None, None)

    assert min([row(1, 10, 10, 900, t1), row(2, 20, 10, 100, t2)], key=Row.canonical_key).id == 2
    assert min([row(1, 20, 10, 100, t1), row(2, 20, 10, 900, t2)], key=Row.canonical_key).id == 2
    assert min([row(1, 20, 10, 900, t2), row(2, 20, 10, 900, t1)], key=Row.canonical_key).id == 2


def test_incremental_run_hashes_only_new_images_and_joins_existing_groups(tmp_path, photos, catalog, blobs, settings):
    names = ["astronaut", "chelsea", "rocket"]
    _write_set(tmp_path / "first", photos, names, kinds={"q30", "half"})
    import_paths([tmp_path / "first"], catalog, blobs, settings)
    first = dedup(catalog, blobs, settings)
    assert first["hashed"] == 9 and first["groups"] == 3
    before = _image_rows(catalog)

    # new: a larger copy of the astronaut (becomes canonical), a crop of the cat, an unrelated photo
    new = tmp_path / "second"
    new.mkdir()
    a = photos["astronaut"]
    _save(a.resize((a.width * 2, a.height * 2), Image.LANCZOS), new / "astronaut-big.jpg")
    c = photos["chelsea"]
    _save(c.crop((0, 0, int(c.width * 0.92), c.height)), new / "chelsea-crop.jpg")
    _save(photos["flower"], new / "flower.jpg")
    import_paths([new], catalog, blobs, settings)
    second = dedup(catalog, blobs, settings)
    assert second["hashed"] == 3  # only the new images
    assert second["groups"] == 3 and second["duplicates"] == 6 + 2

    groups = _groups_by_file(catalog)
    after = _image_rows(catalog)
    (big,) = [r for r in after.values() if r["width"] == a.width * 2]
    assert groups["astronaut-big.jpg"] == big["id"] and big["dedup_role"] == "canonical"
    assert groups["astronaut-base.jpg"] == groups["astronaut-half.jpg"] == big["id"]  # re-pointed
    assert groups["chelsea-crop.jpg"] == groups["chelsea-base.jpg"]
    assert groups["flower.jpg"] not in {groups[f"{n}-base.jpg"] for n in names}
    # no old image was hashed again; only the astronaut rows (new canonical) were rewritten
    old_astronaut = {i for i, r in before.items() if r["group_id"] == before[r["group_id"]]["id"]
                     and before[r["group_id"]]["width"] == a.width}
    for image_id, old in before.items():
        assert (after[image_id]["phash"], after[image_id]["dhash"]) == (old["phash"], old["dhash"])
        if image_id in old_astronaut:
            assert after[image_id]["group_id"] == big["id"] and after[image_id]["dedup_role"] == "duplicate"
        else:
            assert after[image_id] == old, image_id


def test_a_new_image_bridging_two_groups_merges_them(catalog, blobs, settings):
    """Union-find across runs, on rows with chosen codes (no pixels needed: already hashed)."""
    settings.dedup.dedup_threshold = 12
    rng = np.random.default_rng(1)
    base = rng.integers(0, 2**63, size=2, dtype=np.int64)
    bits = rng.choice(128, 20, replace=False)

    def flipped(code, which):
        c = code.copy().view(np.uint64)
        for b in which:
            c[b // 64] ^= np.uint64(1) << np.uint64(b % 64)
        return c.view(np.int64)

    a, b, bridge = base, flipped(base, bits), flipped(base, bits[:10])  # a-b 20 bits, bridge 10 from each

    def add(name, code, width):
        with catalog.write() as s:
            image_id = q.add_images(s, [{"sha256": name * 64, "blob_key": "none", "mime": "image/jpeg",
                                         "width": width, "height": 100, "bytes": 1000}])[name * 64]
            s.execute(update(ImageRow).where(ImageRow.id == image_id).values(
                phash=int(code[0]), dhash=int(code[1]), hash_impl=HASH_IMPL))
            far = rng.integers(0, 2**63, size=(N_WINDOWS, 2), dtype=np.int64)  # windows far from all
            s.add_all([WindowHash(image_id=image_id, window=w + 1, phash=int(far[w, 0]), dhash=int(far[w, 1]))
                       for w in range(N_WINDOWS)])
        return image_id

    ia, ib = add("a", a, 100), add("b", b, 300)
    first = dedup(catalog, blobs, settings)
    assert first["hashed"] == 0 and first["groups"] == 0 and first["matches"] == 0
    ic = add("c", bridge, 200)
    second = dedup(catalog, blobs, settings)
    assert second["matches"] == 2 and second["groups"] == 1 and second["duplicates"] == 2
    with catalog.session() as s:
        rows = {r.id: r for r in s.scalars(select(ImageRow))}
        assert {rows[i].group_id for i in (ia, ib, ic)} == {ib}  # the widest image is canonical
        assert rows[ib].dedup_role == "canonical" and rows[ia].dedup_role == rows[ic].dedup_role == "duplicate"


def test_rerun_with_nothing_new_changes_no_rows(tmp_path, photos, catalog, blobs, settings):
    _write_set(tmp_path / "s", photos, ["coffee", "china", "flower"], kinds={"q30", "crop10-corner", "wm"})
    import_paths([tmp_path / "s"], catalog, blobs, settings)
    dedup(catalog, blobs, settings)
    snap = _snapshot(catalog)
    again = dedup(catalog, blobs, settings)
    assert again["hashed"] == 0 and again["changed"] == 0 and again["matches"] == 0
    assert _snapshot(catalog) == snap


def test_corrupt_image_is_recorded_and_the_run_goes_on(tmp_path, photos, catalog, blobs, settings):
    _write_set(tmp_path / "s", photos, ["rocket"], kinds={"q30"})
    import_paths([tmp_path / "s"], catalog, blobs, settings)
    # a blob that passed the import check once but is truncated now (a bad disk, a partial copy)
    buf = io.BytesIO()
    photos["china"].save(buf, "JPEG", quality=90)
    sha, key = blobs.put(buf.getvalue()[:600])
    with catalog.write() as s:
        q.add_images(s, [{"sha256": sha, "blob_key": key, "mime": "image/jpeg", "width": 10, "height": 10,
                          "bytes": 600}])
    summary = dedup(catalog, blobs, settings)
    assert summary["failed"] == 1 and summary["hashed"] == 2 and summary["groups"] == 1
    with catalog.session() as s:
        bad = s.scalar(select(ImageRow).where(ImageRow.sha256 == sha))
        assert bad.status == "failed" and bad.group_id is None
        fail = s.scalar(select(Failure).where(Failure.stage == "dedup"))
        assert fail.subject == sha and fail.error_class == "BadImage"
    snap = _snapshot(catalog)
    again = dedup(catalog, blobs, settings)  # not retried, nothing changes
    assert again["failed"] == 0 and again["hashed"] == 0 and _snapshot(catalog) == snap


def test_hashes_of_another_implementation_are_replaced_not_compared(tmp_path, photos, catalog, blobs, settings):
    _write_set(tmp_path / "s", photos, ["chelsea"], kinds={"q90"})
    import_paths([tmp_path / "s"], catalog, blobs, settings)
    with catalog.write() as s:  # as if hashed by an older implementation: identical codes
        s.execute(update(ImageRow).values(phash=7, dhash=7, hash_impl="imagehash-4.0/phash64"))
    summary = dedup(catalog, blobs, settings)
    assert summary["hashed"] == 2
    with catalog.session() as s:
        rows = s.scalars(select(ImageRow)).all()
        assert all(r.hash_impl == HASH_IMPL and r.phash != 7 for r in rows)
        assert len({r.group_id for r in rows}) == 1  # grouped by the new hashes


def test_parallel_hashing_gives_the_same_hashes(tmp_path, photos, catalog, blobs, settings):
    from pipeline.dedup import hash_blobs

    _write_set(tmp_path / "s", photos, ["astronaut", "flower"], kinds={"q30", "half", "png", "rot3"})
    import_paths([tmp_path / "s"], catalog, blobs, settings)
    with catalog.session() as s:
        jobs = [tuple(r) for r in s.execute(select(ImageRow.id, ImageRow.blob_key).order_by(ImageRow.id))]
    settings.dedup.dedup_workers, settings.dedup.dedup_chunk_size = 1, 100
    serial = list(hash_blobs(jobs, settings))
    settings.dedup.dedup_workers, settings.dedup.dedup_chunk_size = 2, 3
    parallel = list(hash_blobs(jobs, settings))
    assert [r[0] for r in parallel] == [r[0] for r in serial]
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(serial, parallel, strict=True))


def test_real_pairs_lists_each_watermarked_clean_pair_once(tmp_path, photos, catalog, blobs, settings):
    folder = tmp_path / "p"
    folder.mkdir()
    _save(photos["grace_hopper"], folder / "clean.jpg")
    _save(_watermark(photos["grace_hopper"]), folder / "marked.jpg")
    _save(photos["rocket"], folder / "other.jpg")
    import_paths([folder], catalog, blobs, settings)
    dedup(catalog, blobs, settings)
    groups = _groups_by_file(catalog)
    assert groups["clean.jpg"] == groups["marked.jpg"] != groups["other.jpg"]
    with catalog.session() as s:
        assert pools.real_pairs(s) == []  # no triage labels yet
    with catalog.write() as s:  # what triage would record
        ids = {Path(r["url"]).name: r["id"] for r in q.list_images(s)}
        for name, label in (("clean.jpg", "clean"), ("marked.jpg", "watermarked"), ("other.jpg", "watermarked")):
            s.execute(update(ImageRow).where(ImageRow.id == ids[name]).values(label=label))
    with catalog.session() as s:
        pairs = [(wm.id, cl.id) for wm, cl in pools.real_pairs(s)]
        pool = [im.id for im in pools.watermarked_pool(s)]
    assert pairs == [(ids["marked.jpg"], ids["clean.jpg"])]
    assert pool == [ids["other.jpg"]]  # the marked copy has a free clean asset


def test_exact_duplicates_fold_at_import(tmp_path, photos, catalog, blobs, settings):
    folder = tmp_path / "e"
    folder.mkdir()
    _save(photos["coffee"], folder / "one.jpg")
    (folder / "two.jpg").write_bytes((folder / "one.jpg").read_bytes())
    stats = import_paths([folder], catalog, blobs, settings)
    assert stats.added == 1 and stats.known == 1
    with catalog.session() as s:
        (row,) = s.scalars(select(ImageRow)).all()
        assert len(row.sightings) == 2
    again = import_paths([folder], catalog, blobs, settings)  # page-less sightings are not repeated
    assert again.added == 0 and again.known == 2
    with catalog.session() as s:
        (row,) = s.scalars(select(ImageRow)).all()
        assert sorted(x.image_url.rsplit("/", 1)[1] for x in row.sightings) == ["one.jpg", "two.jpg"]


def test_cli_dedup_json(tmp_path, photos, settings, unmark_env):
    _write_set(tmp_path / "s", photos, ["china"], kinds={"q30", "png"})
    run = [sys.executable, "-m", "flows.cli"]
    subprocess.run([*run, "import", str(tmp_path / "s"), "--json"], env=unmark_env, check=True, capture_output=True)
    out = subprocess.run([*run, "dedup", "--json"], env=unmark_env, check=True, capture_output=True, text=True)
    summary = json.loads(out.stdout)
    assert summary["hashed"] == 3 and summary["groups"] == 1 and summary["duplicates"] == 2
    assert summary["hash_impl"] == HASH_IMPL


def test_regroup_compares_everything_again_with_a_new_threshold(tmp_path, photos, catalog, blobs, settings):
    _write_set(tmp_path / "s", photos, ["coffee", "rocket"], kinds={"png", "crop10-corner", "rot3"})
    import_paths([tmp_path / "s"], catalog, blobs, settings)
    assert dedup(catalog, blobs, settings)["groups"] == 2
    settings.dedup.dedup_threshold = 0
    assert dedup(catalog, blobs, settings)["changed"] == 0  # incremental: stored groups stay
    summary = dedup(catalog, blobs, settings, regroup=True)
    assert summary["hashed"] == 0 and summary["changed"] > 0
    groups = _groups_by_file(catalog)
    assert len(set(groups.values())) > 2
    for name in ("coffee", "rocket"):  # rotation moves the codes far more than 0 bits
        assert groups[f"{name}-rot3.jpg"] != groups[f"{name}-base.jpg"]
    settings.dedup.dedup_threshold = 22
    back = dedup(catalog, blobs, settings, regroup=True)
    assert back["groups"] == 2 and back["duplicates"] == 6 and back["hashed"] == 0
