"""``unmark clean-files INPUT... --out DIR``: a folder of photos cleaned in one command.

The stages, each the catalog's own step, so dedup, triage and the metrics still apply:

1. **plan**: every file named, and every image file under the folders named; each gets its
   output path (the input's name, under DIR; a folder's files keep their sub-folders). An output
   that would overwrite an input is refused before anything is done (`CleanFilesError`).
2. **import** (``pipeline.importer.import_files``, as ``unmark import``): a file that is not an
   acceptable image (zero bytes, truncated, a bomb, not an image whatever its name) is a failed
   row with its reason; the other files go on.
3. **dedup** (``pipeline.dedup.dedup``, as ``unmark dedup``: only images not yet hashed are
   hashed): near-duplicates among the files and the catalog share a group (the manifest's
   ``group`` and ``duplicates``); a file called watermarked whose group holds a clean copy is a
   real pair, and its cleaning is also measured against that copy (``metrics.vs_clean``).
   ``--no-dedup`` skips it.
4. **triage** (``pipeline.triage.score_chunk`` with the promoted detector; the shipped one is
   registered first when the catalog promotes none, as ``unmark triage`` does): files it calls
   watermarked are cleaned, the others passed through (copied only with ``--all``). With
   ``--no-triage``, or with no detector promoted and none shipped, every file is cleaned,
   labelled ``untriaged``, and the summary says so.
5. **clean** (``pipeline.clean``'s engine, chunks and commits; the shipped remover is registered
   first when the catalog promotes none): a file whose image this model already cleaned with the
   same mask settings is not cleaned again; its stored output is used. Animated files are passed
   through (only single-frame images are cleaned).
6. **write** (``pipeline.writeback``): each output in the input's format, mode, size, EXIF
   orientation and ICC profile, written atomically; ``--masks`` (or ``--mask-only``, which writes
   no images) the mask beside it as ``NAME.mask.png``; then ``manifest.json`` and
   ``manifest.csv``, one row per input file.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage

from model.remover.masks import MaskRule
from pipeline import registry
from pipeline.clean import (
    _clean_chunk,  # the pool step's own chunk and commit: one way to clean and record
    _commit,
    load_remover,
    make_cleaner,
    mask_settings,
    output_rule,
    pick_device,
)
from pipeline.clean_decode import WorkItem, iter_decoded
from pipeline.config import Settings
from pipeline.images import BadImage, displayed
from pipeline.importer import import_files, iter_image_files
from pipeline.writeback import (
    NotWritable,
    atomic_write,
    compose,
    encode_like,
    mask_like,
    read_original,
    write_manifest,
)
from storage import BlobStore, Catalog, pools
from storage import queries as q
from storage.models import Cleaning

Progress = Callable[[str, int, int], None]
STAGE = "clean-files"
NO_DETECTOR = ("no detector is promoted and none ships: every file was treated as watermarked and cleaned "
               "(label 'untriaged'); `unmark triage` trains one")
NO_TRIAGE = "triage off (--no-triage): every file was treated as watermarked and cleaned (label 'untriaged')"


class CleanFilesError(ValueError):
    """The command cannot start: the output folder is unusable or would overwrite an input."""


@dataclass
class Options:
    out_dir: Path
    masks: bool = False
    copy_clean: bool = False  # --all
    mask_only: bool = False
    mask_rule: MaskRule | None = None
    model_version: str | None = None
    device: str = "auto"
    triage: bool = True  # False (--no-triage): every file is treated as watermarked
    dedup: bool = True  # False (--no-dedup): no near-duplicate groups, no real pairs


@dataclass
class FileRow:
    """One input file in the manifest."""

    input: str
    output: str | None = None
    mask: str | None = None
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    label: str | None = None
    score: float | None = None
    action: str = "pending"  # cleaned | masked | copied | skipped | failed
    reason: str | None = None
    cached: bool = False  # the cleaning was already in the catalog: the model did not run
    model: str | None = None
    mask_area: float | None = None
    group: int | None = None  # the dedup group (its canonical image's id) when it has near-duplicates
    duplicates: int | None = None  # other images of the catalog in its group (None: dedup was off)
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class Job:
    path: Path
    dest: Path
    row: FileRow
    image_id: int | None = None
    blob_key: str | None = None
    passthrough: str | None = None  # why a file that triage would clean is passed through
    mask_dest: Path | None = None

    def fail(self, reason: str) -> None:
        self.row.action, self.row.reason = "failed", reason


def plan(paths: Sequence[str | os.PathLike], out_dir: Path, masks: bool = False) -> list[Job]:
    """A job per input file, with its output path (and mask path, with ``masks``): `FileNotFoundError`
    for a missing input, `CleanFilesError` when ``out_dir`` is a file or an output would replace
    an input. A mask is ``NAME.mask.png`` for ``NAME.ext``, or ``NAME.ext.mask.png`` when another
    output has that name already; two inputs with one output name make the second a failed row."""
    out = Path(out_dir).resolve()
    if out.exists() and not out.is_dir():
        raise CleanFilesError(f"--out {out_dir} is a file, not a folder")
    found: list[tuple[Path, Path]] = []
    for arg in map(Path, paths):
        for f in iter_image_files([arg]):
            if arg.is_dir() and out != arg.resolve() and out in f.resolve().parents:
                continue  # outputs of an earlier run inside the input folder
            found.append((f, f.relative_to(arg) if arg.is_dir() else Path(f.name)))
    inputs = {f.resolve() for f, _ in found}
    for f, rel in found:
        if (out / rel).resolve() in inputs:
            raise CleanFilesError(f"--out {out_dir} would overwrite the input {f}: choose another folder")
    jobs: list[Job] = []
    taken: dict[Path, Path] = {out / "manifest.json": out, out / "manifest.csv": out}
    for f, rel in found:
        job = Job(f, out / rel, FileRow(str(f)))
        jobs.append(job)
        if job.dest in taken:
            job.fail(f"duplicate-output-name: {taken[job.dest]} has the same output {job.dest.name}")
            continue
        taken[job.dest] = f
    for job in jobs if masks else []:
        if job.row.action == "failed":
            continue
        options = [job.dest.with_name(job.dest.stem + ".mask.png"), job.dest.with_name(job.dest.name + ".mask.png")]
        job.mask_dest = next((m for m in options if m not in taken and m.resolve() not in inputs), None)
        if job.mask_dest is None:
            job.fail(f"duplicate-output-name: no free name for the mask of {job.dest.name}")
        else:
            taken[job.mask_dest] = f
    return jobs


def why(exc: BaseException) -> str:
    """``reason: message`` for a failed row (a ``BadImage``'s message starts with its reason)."""
    reason, msg = getattr(exc, "reason", None) or type(exc).__name__, str(exc) or repr(exc)
    return msg if msg.startswith(reason) else f"{reason}: {msg}"


def _frames(path: Path) -> int:
    try:
        with PILImage.open(path) as im:
            return int(getattr(im, "n_frames", 1) or 1)
    except Exception:  # noqa: BLE001 - the import judged the file; a second look only counts frames
        return 1


def import_jobs(jobs: Sequence[Job], catalog: Catalog, blobs: BlobStore, settings: Settings,
                progress: Progress | None = None) -> None:
    """Import the planned files (``unmark import``'s path); failures get their reason."""
    live = [j for j in jobs if j.row.action == "pending"]
    tell = (lambda done, total: progress("import", done, total)) if progress else None
    _, results = import_files([j.path for j in live], catalog, blobs, settings, source="clean-files", progress=tell)
    by_path = {r.path: r for r in results}
    with catalog.session() as s:
        ids = q.image_ids_by_sha(s, [r.sha256 for r in results if r.sha256])
        rows = {im.id: (im.blob_key, im.width, im.height) for im in q.images_by_id(s, list(ids.values()))}
    for j in live:
        r = by_path[j.path]
        if r.error is not None:
            j.fail(why(r.error))
            continue
        j.row.sha256, j.image_id = r.sha256, ids[r.sha256]
        j.blob_key, j.row.width, j.row.height = rows[j.image_id]


def dedup_jobs(jobs: Sequence[Job], catalog: Catalog, blobs: BlobStore, settings: Settings,
               notes: list[str] | None = None) -> None:
    """Hash the imported files not yet hashed, group them with their near-duplicates in the
    catalog (``unmark dedup``'s step), and record each file's group."""
    from pipeline.dedup import dedup

    live = [j for j in jobs if j.image_id is not None]
    if not live:
        return
    res = dedup(catalog, blobs, settings)
    with catalog.session() as s:
        group = {im.id: im.group_id for im in q.images_by_id(s, [j.image_id for j in live])}
        sizes = q.group_sizes(s, sorted({g for g in group.values() if g is not None}))
    for j in live:
        g = group[j.image_id]
        j.row.duplicates = max(0, sizes.get(g, 1) - 1) if g is not None else 0
        j.row.group = g if j.row.duplicates else None
    if notes is not None and res["matches"]:
        notes.append(f"dedup: {res['matches']} near-duplicate pair(s) found among the new images")


def triage_jobs(jobs: Sequence[Job], catalog: Catalog, blobs: BlobStore, settings: Settings,
                progress: Progress | None = None, notes: list[str] | None = None, enabled: bool = True):
    """Label the imported files with the promoted detector (scoring those it has not scored),
    registering the shipped one first when none is promoted; returns the detector, or None when
    triage is off (``enabled`` False) or no detector is promoted or ships (every file is then
    ``untriaged``). What it did goes to ``notes``."""
    from pipeline.triage import score_chunk

    live = [j for j in jobs if j.image_id is not None]
    detector = registry.load_detector(catalog, blobs) if enabled else None
    if enabled and detector is None and (
            shipped := registry.register_shipped_detector(catalog, blobs, settings.models.shipped_weights)):
        detector = registry.load_detector(catalog, blobs)
        if notes is not None:
            notes.append(f"registered the shipped detector {shipped['version']} (as `unmark init` does)")
    if notes is not None and detector is None:
        notes.append(NO_DETECTOR if enabled else NO_TRIAGE)
    if detector is None:
        for j in live:
            j.row.label = "untriaged"
        return None
    with catalog.session() as s:
        stale = sorted({im.id for im in q.images_by_id(s, [j.image_id for j in live])
                        if im.detector_version != detector.version and im.status != "failed"})
    bs = settings.triage.triage_batch_size
    for i in range(0, len(stale), bs):
        score_chunk(catalog, blobs, settings, detector, stale[i : i + bs])
        if progress:
            progress("triage", min(i + bs, len(stale)), len(stale))
    with catalog.session() as s:
        labels = {im.id: (im.label, im.watermark_score, im.status)
                  for im in q.images_by_id(s, [j.image_id for j in live])}
    for j in live:
        label, score, status = labels[j.image_id]
        j.row.label, j.row.score = label, score
        if status == "failed":
            j.fail("triage: the image is marked failed in the catalog (it could not be decoded)")
    return detector


def _wants_cleaning(job: Job) -> bool:
    return job.row.action == "pending" and job.passthrough is None and job.row.label in ("watermarked", "untriaged")


def _snapshot(c: Cleaning) -> dict[str, Any]:
    # a real pair's asset is its clean copy; the model's own output, when it was run, is kept aside
    out = c.output_key if c.source == "model" else (c.metrics or {}).get("model_output")
    return {"output_key": out, "source": c.source, "metrics": dict(c.metrics or {}), "psnr_vs_input": c.psnr_vs_input,
            "ssim_vs_input": c.ssim_vs_input, "changed_fraction": c.changed_fraction}


def _cleanings(catalog: Catalog, version: str, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    with catalog.session() as s:
        rows = q.cleanings_by(s, version, ids)
        return {c.image_id: _snapshot(c) for c in rows}


def _reusable(snap: dict[str, Any], expected: dict[str, Any]) -> bool:
    """A stored cleaning this run may use: the model's own output, masked the way asked now."""
    m = snap["metrics"]
    if snap["output_key"] is None:
        return False  # the asset is a clean copy of the photo, not this model's output
    recorded = {k: m.get(k) for k in expected}
    return recorded == expected and ("weights_key" in m or "mask_key" not in m)


def clean_jobs(jobs: Sequence[Job], catalog: Catalog, blobs: BlobStore, settings: Settings, options: Options,
               detector, progress: Progress | None = None) -> tuple[str, dict[int, dict]]:
    """Clean the images of the jobs that want it (not those this model already cleaned the same
    way); returns the remover's version and the cleaning of each image id."""
    remover = load_remover(catalog, blobs, options.model_version)
    expected = mask_settings(*output_rule(remover, options.mask_rule))
    ids = sorted({j.image_id for j in jobs if _wants_cleaning(j)})
    done = _cleanings(catalog, remover.version, ids)
    cached = {i for i, snap in done.items() if _reusable(snap, expected)}
    for j in jobs:
        j.row.cached = j.image_id in cached
    todo = [i for i in ids if i not in cached]
    if not todo:
        return remover.version, done
    cleaner = make_cleaner(remover, settings, pick_device(options.device, settings), options.mask_rule)
    store = settings.updated(output_format="png")  # lossless: the outputs are written from it
    before = {j.image_id: j.row.score if detector else None for j in jobs}
    blob_of = {j.image_id: (j.row.sha256, j.blob_key) for j in jobs if j.image_id is not None}
    with catalog.session() as s:  # real pairs: measured against their clean copy too
        copy_of = {wm.id: (cl.blob_key, cl.sha256) for wm, cl in pools.real_pairs(s) if wm.id in set(todo)}
    items = [WorkItem(i, blob_of[i][0], blob_of[i][1], *copy_of.get(i, (None, None)), score_before=before.get(i))
             for i in todo]
    errors: dict[int, str] = {}
    chunk: list = []

    def flush() -> None:
        rows, failed = _clean_chunk(chunk, cleaner, detector, blobs, store, remover.version)
        with catalog.write() as s:  # a cleaning masked another way is replaced
            q.drop_model_cleanings(s, remover.version, [r["image_id"] for r in rows], sources=("model", "duplicate"))
        _commit(catalog, rows, failed)
        errors.update({it.image_id: why(e) for it, e in failed})
        chunk.clear()

    try:
        for k, dec in enumerate(iter_decoded(items, settings), 1):
            chunk.append(dec)
            if len(chunk) >= settings.clean.clean_chunk_images or k == len(items):
                flush()
                if progress:
                    progress("clean", k, len(items))
    finally:
        cleaner.close()
    done.update(_cleanings(catalog, remover.version, todo))
    for j in jobs:
        if j.image_id in errors:
            j.fail(f"clean: {errors[j.image_id]}")
    return remover.version, done


def _decode_png(blobs: BlobStore, key: str) -> np.ndarray:
    with PILImage.open(io.BytesIO(blobs.get(key))) as im:
        return np.asarray(im)


def _weights(blobs: BlobStore, snap: dict[str, Any], changed: np.ndarray) -> np.ndarray:
    key = snap["metrics"].get("weights_key")
    if key:
        return _decode_png(blobs, key).astype(np.float32) / 255.0
    return changed.astype(np.float32)  # a network without a mask head: what changed is the mask


def write_cleaned(job: Job, snap: dict[str, Any], blobs: BlobStore, settings: Settings, options: Options) -> None:
    """The job's output (unless ``mask_only``) and mask (with ``masks`` or ``mask_only``)."""
    data = job.path.read_bytes()
    if hashlib.sha256(data).hexdigest() != job.row.sha256:
        raise NotWritable("changed", "the file changed while it was being cleaned; run again")
    if snap["output_key"] is None:
        raise NotWritable("no-output", "the catalog's asset for this image is a clean duplicate, not a cleaning")
    orig = read_original(data, settings.images.max_image_pixels)
    rgb = np.asarray(displayed(orig.image).convert("RGB"))  # what the remover was given
    cleaned = _decode_png(blobs, snap["output_key"])[..., :3]
    changed = (cleaned != rgb).any(axis=2)
    weights = _weights(blobs, snap, changed)
    if not options.mask_only:
        atomic_write(job.dest, encode_like(orig, compose(orig, cleaned, changed)))
        job.row.output = str(job.dest)
    if options.masks or options.mask_only:
        atomic_write(job.mask_dest, mask_like(orig, weights))
        job.row.mask = str(job.mask_dest)
    job.row.action = "masked" if options.mask_only else "cleaned"
    job.row.mask_area = round(float((weights > 0).mean()), 6)
    internal = ("mask_key", "weights_key", "model_output")  # blob keys: the catalog's, not the user's
    job.row.metrics = {**{k: v for k, v in snap["metrics"].items() if k not in internal},
                       **{k: snap[k] for k in ("psnr_vs_input", "ssim_vs_input", "changed_fraction")}}


def write_jobs(jobs: Sequence[Job], cleanings: dict[int, dict], version: str | None, catalog: Catalog,
               blobs: BlobStore, settings: Settings, options: Options, progress: Progress | None = None) -> None:
    """Write every job's file (cleaned, copied or passed over); a job that fails here is a
    failed row (and a ``failures`` row, stage ``clean-files``)."""
    for n, job in enumerate(jobs, 1):
        try:
            if job.row.action != "pending":
                pass  # failed before (or passed over): nothing to write
            elif _wants_cleaning(job) and job.image_id in cleanings:
                job.row.model = version
                write_cleaned(job, cleanings[job.image_id], blobs, settings, options)
            elif _wants_cleaning(job):
                job.fail("clean: no cleaning of this image was recorded")
            elif options.copy_clean and not options.mask_only:
                atomic_write(job.dest, job.path.read_bytes())
                job.row.output, job.row.action = str(job.dest), "copied"
                job.row.reason = job.passthrough or f"triage: {job.row.label}"
            else:
                job.row.action = "skipped"
                job.row.reason = job.passthrough or f"triage: {job.row.label}"
        except (BadImage, NotWritable, OSError, ValueError) as exc:
            job.fail(f"write: {why(exc)}")
            with catalog.write() as s:
                q.record_failure(s, STAGE, job.path.resolve().as_uri(), exc)
        if progress:
            progress("write", n, len(jobs))


def _pass_animated(jobs: Sequence[Job]) -> None:
    for j in jobs:
        if _wants_cleaning(j) and (frames := _frames(j.path)) > 1:
            j.passthrough = f"animated ({frames} frames): only single-frame images are cleaned"


def clean_files(paths: Sequence[str | os.PathLike], catalog: Catalog, blobs: BlobStore, settings: Settings,
                options: Options, progress: Progress | None = None) -> dict[str, Any]:
    """Import, triage and clean the files in ``paths`` and write them to ``options.out_dir``; see
    the module docstring. Returns the summary (counts by action, the failures, the manifest)."""
    t0 = time.perf_counter()
    jobs = plan(paths, options.out_dir, masks=options.masks or options.mask_only)
    notes: list[str] = []
    import_jobs(jobs, catalog, blobs, settings, progress)
    if options.dedup:
        dedup_jobs(jobs, catalog, blobs, settings, notes)
    detector = triage_jobs(jobs, catalog, blobs, settings, progress, notes, enabled=options.triage)
    _pass_animated(jobs)
    version, cleanings = None, {}
    if any(_wants_cleaning(j) for j in jobs):
        if options.model_version is None and (shipped := registry.register_shipped(catalog, blobs, settings.models.shipped_weights)):
            notes.append(f"registered the shipped remover {shipped['version']} (as `unmark init` does)")
        version, cleanings = clean_jobs(jobs, catalog, blobs, settings, options, detector, progress)
    write_jobs(jobs, cleanings, version, catalog, blobs, settings, options, progress)
    rows = [j.row for j in jobs]
    manifest = write_manifest([asdict(r) for r in rows], [f.name for f in fields(FileRow)], Path(options.out_dir))
    counts = {a: sum(r.action == a for r in rows) for a in ("cleaned", "masked", "copied", "skipped", "failed")}
    return {"files": len(rows), **counts, "cached": sum(r.cached and r.action in ("cleaned", "masked") for r in rows),
            "model": version, "detector": detector.version if detector else None,
            "triage": "detector" if detector else ("untriaged" if options.triage else "off"), "out": str(options.out_dir), **manifest,
            "failures": [{"input": r.input, "reason": r.reason} for r in rows if r.action == "failed"],
            "notes": notes, "seconds": round(time.perf_counter() - t0, 2)}
