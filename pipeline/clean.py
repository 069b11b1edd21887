"""``unmark clean``: run the promoted remover over the watermarked pool and record every result.

What gets cleaned:
- the watermarked pool (watermarked images whose dedup group has no clean member) not yet cleaned
  by this model version: each is decoded in DataLoader workers (EXIF orientation applied; grey,
  palette and 16-bit images become RGB; RGBA keeps its alpha, re-attached after cleaning the RGB),
  cleaned by the tiled engine (``model.remover.infer``; with the hardened mask when the model was
  evaluated that way, ``config["harden_mask"]``), encoded as PNG or JPEG q95
  (``settings.clean.output_format``; images with alpha are always PNG), stored as a blob, and described
  by a ``cleanings`` row;
- watermarked images whose group does have a clean member (real pairs): that clean copy is the
  asset (``source='duplicate'``; no output is computed for it). With
  ``settings.clean.clean_score_real_pairs`` the model is still run on them, to measure it against real
  ground truth: PSNR/SSIM of its output (and of the input, the baseline) against the clean copy,
  resized to match, go into the row's metrics; its output is kept as ``metrics["model_output"]``.

Metrics per model cleaning: pixels are "changed" where any channel moved by more than
``settings.clean.clean_changed_threshold`` levels; ``changed_fraction``; PSNR and SSIM of output vs input
outside the changed region (PSNR capped at 100 dB where the untouched region is bit-identical;
SSIM over pixels whose 7×7 window holds no changed pixel); in ``metrics``: mean absolute residual,
predicted mask area (mask-head models), detector score before/after (when a detector is promoted,
also in ``score_before``/``score_after``), and timings.

Each chunk of images is committed in one transaction after its blobs are written, so a run killed
at any point loses at most the chunk in flight and a re-run does only what is missing; an image
that cannot be decoded or cleaned becomes a ``failures`` row (stage ``clean``) and the rest go on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from model.device import resolve_device
from model.remover.infer import Cleaner
from model.remover.masks import MaskRule
from pipeline import registry
from pipeline.clean_decode import Decoded, WorkItem, iter_decoded
from pipeline.clean_metrics import cleaning_metrics, encode_mask, encode_output, versus_clean
from pipeline.config import CleanSettings, Settings
from pipeline.stopping import StopFlag
from storage import BlobStore, Catalog, claims, pools, status
from storage import queries as q
from storage.blobs import STORE_FAULTS
from storage.models import Image

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]
STAGE = "clean"


class DeviceUnavailable(RuntimeError):
    """The device asked for (``cuda``) is not present on this machine."""


@dataclass
class Remover:
    version: str
    model: torch.nn.Module
    config: dict = field(default_factory=dict)


def load_remover(catalog: Catalog, blobs: BlobStore, model_version: str | None = None) -> Remover:
    """The promoted remover (or ``model_version``), its network loaded from the checkpoint blob;
    `registry.NoModel` when there is none."""
    ref, model = registry.load_remover(catalog, blobs, model_version)
    return Remover(ref.version, model, ref.config)


def work_items(catalog: Catalog, version: str, detector_version: str | None) -> tuple[list[WorkItem], list[WorkItem]]:
    """(watermarked-pool images to clean, real-pair images to record) for ``version``."""
    def before(im: Image) -> float | None:
        return im.watermark_score if detector_version and im.detector_version == detector_version else None

    with catalog.session() as s:
        pool = [WorkItem(im.id, im.sha256, im.blob_key, score_before=before(im))
                for im in pools.images_without_cleaning(s, version)]
        done = pools.cleaned_image_ids(s, version)
        pairs = [WorkItem(wm.id, wm.sha256, wm.blob_key, cl.blob_key, cl.sha256, before(wm))
                 for wm, cl in pools.real_pairs(s) if wm.id not in done]
    return pool, pairs


# --- the step ------------------------------------------------------------------------------------


def engine_options(settings: CleanSettings, device: torch.device) -> dict[str, Any]:
    """Tile, overlap and batch for the device, unless the settings name them."""
    cuda = device.type == "cuda"
    return {
        "tile": settings.clean_tile or 512,
        "overlap": settings.clean_overlap if settings.clean_overlap is not None else (64 if cuda else 32),
        "batch_size": settings.clean_batch_size or (16 if cuda else 1),
        "precision": settings.clean_precision,
        "compile": settings.clean_compile,
        "backend": settings.clean_backend,
    }


def pick_device(device: str, settings: Settings) -> torch.device:
    """``device`` (``auto``: the settings' choice); `DeviceUnavailable` for a CUDA that is not here."""
    dev = resolve_device(device if device != "auto" else settings.models.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable(f"device {device!r} asked for, but CUDA is not available here (use --device cpu or auto)")
    return dev


def output_rule(remover: Remover, mask_rule: MaskRule | None = None) -> tuple[bool, MaskRule]:
    """(harden, rule) of ``remover``'s output: without ``mask_rule``, the rule the model was
    evaluated (and promoted) with (``config["harden_mask"]``, the default mask rule); with one, a
    hardened output by that rule."""
    return bool(remover.config.get("harden_mask", False)) or mask_rule is not None, mask_rule or MaskRule()


def mask_settings(harden: bool, rule: MaskRule) -> dict[str, Any]:
    """How a cleaning's output was masked, as its metrics record it."""
    return {"harden_mask": harden, **(rule.as_metrics() if harden else {})}


def make_cleaner(remover: Remover, settings: Settings, dev: torch.device, mask_rule: MaskRule | None = None) -> Cleaner:
    """The engine for ``remover`` with its ``output_rule``."""
    harden, rule = output_rule(remover, mask_rule)
    return Cleaner(remover.model, device=dev, harden_mask=harden, mask_rule=rule, **engine_options(settings.clean, dev))


def _detector(catalog: Catalog, blobs: BlobStore):
    """The promoted watermark detector (``registry.load_detector``), or None when there is none."""
    try:
        return registry.load_detector(catalog, blobs)
    except STORE_FAULTS:
        raise  # the store is down, not the detector: cleaning without scores would record other rows
    except Exception as exc:  # noqa: BLE001 - scores are optional; cleaning goes on without them
        log.warning("detector unavailable, cleaning without scores: %s", exc)
        return None


def _record_duplicates(catalog: Catalog, version: str, items: Sequence[WorkItem]) -> None:
    rows = [dict(image_id=it.image_id, model_version=version, output_key=it.clean_key, source="duplicate",
                 score_before=it.score_before, metrics={"clean_copy": it.clean_sha}, runtime_s=0.0)
            for it in items]
    catalog.retry(_commit, catalog, rows, [])


def _commit(catalog: Catalog, rows: list[dict], failed: list[tuple[WorkItem, BaseException]],
            claim: tuple[str, str] | None = None) -> int:
    """One transaction per chunk: the cleanings, the status change, the failures. With ``claim``
    (stage, worker) the chunk's claims are completed in the same transaction and only the images
    this worker still held are recorded: one whose lease ran out and that another worker took
    over is that worker's to record (so each image is cleaned exactly once). Returns how many
    results were dropped that way."""
    lost = 0
    with catalog.write() as s:
        if claim is not None:
            held = set(claims.complete(s, *claim, [r["image_id"] for r in rows] + [it.image_id for it, _ in failed]))
            kept_rows = [r for r in rows if r["image_id"] in held]
            kept_failed = [(it, exc) for it, exc in failed if it.image_id in held]
            lost = len(rows) + len(failed) - len(kept_rows) - len(kept_failed)
            rows[:], failed[:] = kept_rows, kept_failed
        if rows:
            q.add_cleanings(s, rows)
            ids = [r["image_id"] for r in rows]
            status.mark_cleaned(s, ids)
            shas = q.shas_by_id(s, ids)
            for i in ids:
                q.clear_failure(s, STAGE, shas[i])
        for item, exc in failed:
            q.record_failure(s, STAGE, item.sha256, exc)
    return lost


def _enqueue(catalog: Catalog, stage: str, version: str, items: Sequence[WorkItem]) -> None:
    """Work units for ``items``; those a past run completed with a failure (no cleaning row) are
    opened again, so every run retries failures, as the step did before claims."""
    ids = [it.image_id for it in items]
    cleaned = pools.claim_has_cleaning(version)
    with catalog.write() as s:
        claims.enqueue(s, stage, ids)
        claims.reopen(s, stage, ids, unless=cleaned)


def _claimed_batches(catalog: Catalog, stage: str, worker: str, settings: Settings,
                     limit: int | None, stop: StopFlag | None = None) -> Iterator[list[int]]:
    """Batches of image ids claimed for ``worker`` until the stage has nothing left: no free
    claim, none held by another worker. While others hold claims it waits and tries again, so the
    images of a worker that died come back when its lease runs out, and a run ends only when the
    pool is done (or ``limit`` images were claimed)."""
    taken = 0
    while (limit is None or taken < limit) and not (stop is not None and stop.requested):
        n = settings.scale.claim_batch if limit is None else min(settings.scale.claim_batch, limit - taken)
        ids = claims.claim(catalog, stage, worker, n, settings.scale.claim_lease_s)
        if ids:
            taken += len(ids)
            yield ids
            continue
        if claims.free_dead_local(catalog, stage):
            continue  # a killed run on this machine held them: free now, no need to wait
        if catalog.read(claims.progress, stage)["held"] == 0:
            return
        time.sleep(min(5.0, max(0.2, settings.scale.claim_lease_s / 20)))


def clean(
    catalog: Catalog,
    blobs: BlobStore,
    settings: Settings,
    model_version: str | None = None,
    device: str = "auto",
    limit: int | None = None,
    progress: Progress | None = None,
    mask_rule: MaskRule | None = None,
    stop: StopFlag | None = None,
) -> dict[str, Any]:
    """Clean every watermarked image the remover (promoted, or ``model_version``) has not cleaned
    yet; returns counts, timings and the model version. ``mask_rule`` (threshold, dilate,
    feather) hardens the output with that rule; None keeps the model's own (``make_cleaner``).
    Once ``stop`` is set, the chunk in hand is committed, the claims released and ``Stopped`` raised."""
    t0 = time.perf_counter()
    remover = load_remover(catalog, blobs, model_version)
    dev = pick_device(device, settings)
    detector = _detector(catalog, blobs)
    pool, pairs = catalog.retry(work_items, catalog, remover.version, detector.version if detector else None)
    if limit is not None:
        pool, pairs = pool[:limit], pairs[: max(0, limit - len(pool))]

    summary: dict[str, Any] = {"model": remover.version, "device": str(dev), "todo": len(pool) + len(pairs),
                               "cleaned": 0, "duplicates": len(pairs), "failed": 0,
                               "detector": detector.version if detector else None}
    if not settings.clean.clean_score_real_pairs and pairs:
        _record_duplicates(catalog, remover.version, pairs)
        pairs = []
    items = pool + pairs
    if not items:
        summary["seconds"] = round(time.perf_counter() - t0, 2)
        return summary

    cleaner = make_cleaner(remover, settings, dev, mask_rule)
    summary.update({"tile": cleaner.tile, "overlap": cleaner.overlap, "precision": cleaner.precision,
                    "backend": cleaner.backend, **mask_settings(cleaner.harden_mask, cleaner.mask_rule)})
    compute_s = 0.0
    done = 0
    chunk: list[Decoded] = []
    # Several workers (processes, machines) may clean one catalog at once: each image is claimed
    # (storage/claims.py) before it is cleaned, and recorded only while the claim is held.
    stage, worker = f"{STAGE}:{remover.version}", claims.worker_id(STAGE)
    by_id = {it.image_id: it for it in items}
    catalog.retry(_enqueue, catalog, stage, remover.version, items)  # lost connections: run again whole
    summary.update({"worker": worker, "claimed": 0, "lost": 0})

    def flush() -> None:
        nonlocal compute_s, done
        rows, failed = _clean_chunk(chunk, cleaner, detector, blobs, settings, remover.version)
        summary["lost"] += catalog.retry(_commit, catalog, rows, failed, (stage, worker))
        compute_s += sum(r["runtime_s"] for r in rows)
        summary["cleaned"] += sum(1 for r in rows if r["source"] == "model")
        summary["failed"] += len(failed)
        done += len(chunk)
        chunk.clear()
        if progress:
            progress("clean", done, len(items))

    try:
        for batch in _claimed_batches(catalog, stage, worker, settings, limit, stop):
            summary["claimed"] += len(batch)
            todo = _batch_items(catalog, batch, by_id, (stage, worker), remover.version,
                                detector.version if detector else None)
            for dec in iter_decoded(todo, settings):
                chunk.append(dec)
                if len(chunk) >= settings.clean.clean_chunk_images:
                    flush()
                    if stop is not None and stop.requested:
                        break  # the next claim sees the flag too: nothing more is taken
                    claims.renew(catalog, stage, worker, batch, settings.scale.claim_lease_s)
            if chunk:
                flush()
    finally:
        claims.release(catalog, stage, worker)  # whatever an error left unfinished, others may take
    if stop is not None:
        stop.check("clean", summary)
    return _finish(summary, t0, compute_s, settings)


def _batch_items(catalog: Catalog, batch: Sequence[int], by_id: dict[int, WorkItem], claim: tuple[str, str],
                 version: str, detector_version: str | None) -> list[WorkItem]:
    """The work items of a claimed ``batch`` (``by_id`` learns those another run queued); ids
    with nothing left to do (cleaned or re-labelled meanwhile) are completed at once."""
    if any(i not in by_id for i in batch):  # queued by another run: look them up
        more_pool, more_pairs = catalog.retry(work_items, catalog, version, detector_version)
        by_id.update({it.image_id: it for it in more_pool + more_pairs})
    gone = [i for i in batch if i not in by_id]
    if gone:
        with catalog.write() as s:
            claims.complete(s, *claim, gone)
    return [by_id[i] for i in batch if i in by_id]


def _finish(summary: dict[str, Any], t0: float, compute_s: float, settings: Settings) -> dict[str, Any]:
    summary["compute_s"] = round(compute_s, 2)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    n = summary["cleaned"] + (summary["duplicates"] if settings.clean.clean_score_real_pairs else 0)
    summary["images_per_s"] = round(n / summary["seconds"], 3) if n and summary["seconds"] > 0 else None
    return summary


def _clean_chunk(chunk: Sequence[Decoded], cleaner: Cleaner, detector, blobs: BlobStore,
                 settings: Settings, version: str) -> tuple[list[dict], list[tuple[WorkItem, BaseException]]]:
    """(cleaning rows, per-image failures) of a decoded chunk, its blobs written. A store fault
    (``STORE_FAULTS``, in a read or a write) is raised: the chunk is left uncommitted, its claims
    to be released, and a re-run does it again; its blobs already written are the same bytes then."""
    for d in chunk:
        if isinstance(d.error, STORE_FAULTS):
            raise d.error
    failed = [(d.item, d.error) for d in chunk if d.error is not None]
    good = [d for d in chunk if d.error is None]
    results: list = []
    if good:
        try:
            results = cleaner.clean([d.rgb for d in good])
        except Exception:  # noqa: BLE001 - isolate the image that broke the batch
            results = []
            for d in good:
                try:
                    results.append(cleaner.clean([d.rgb])[0])
                except Exception as exc:  # noqa: BLE001
                    results.append(exc)
    scores_after: list[float | None] = [None] * len(good)
    scores_before: list[float | None] = [d.item.score_before for d in good]
    if detector is not None and good:
        ok = [k for k, r in enumerate(results) if not isinstance(r, BaseException)]
        try:
            after = detector.score([results[k].image for k in ok]) if ok else []
            for k, sc in zip(ok, after, strict=True):
                scores_after[k] = float(sc)
            missing = [k for k in ok if scores_before[k] is None]
            if missing:
                for k, sc in zip(missing, detector.score([good[k].rgb for k in missing]), strict=True):
                    scores_before[k] = float(sc)
        except Exception as exc:  # noqa: BLE001 - scores are optional
            log.warning("detector scoring failed: %s", exc)

    rows = []
    for k, (d, res) in enumerate(zip(good, results, strict=True)):
        if isinstance(res, BaseException):
            failed.append((d.item, res))
            continue
        try:
            t = time.perf_counter()
            m = cleaning_metrics(d.rgb, res.image, res.mask, settings.clean.clean_changed_threshold)
            m["score_before"], m["score_after"] = scores_before[k], scores_after[k]
            _, out_key = blobs.put(encode_output(res.image, d.alpha, settings.clean.output_format))
            if res.mask is not None:  # what the model took for the mark: the report shows it
                _, m["mask_key"] = blobs.put(encode_mask(res.mask))
            if res.weights is not None:  # the region the output took from the model (clean-files' masks)
                _, m["weights_key"] = blobs.put(encode_mask(res.weights))
            m.update(mask_settings(cleaner.harden_mask, cleaner.mask_rule))
            row = dict(image_id=d.item.image_id, model_version=version, source="model", output_key=out_key,
                       psnr_vs_input=m["psnr_vs_input"], ssim_vs_input=m["ssim_vs_input"],
                       changed_fraction=m["changed_fraction"], score_before=scores_before[k],
                       score_after=scores_after[k])
            if d.item.clean_key:  # real pair: the clean copy is the asset; the model is measured
                m.update({"vs_clean": versus_clean(d.rgb, res.image, d.clean), "model_output": out_key,
                          "clean_copy": d.item.clean_sha})
                row.update(source="duplicate", output_key=d.item.clean_key)
            m["inference_s"] = round(res.seconds, 4)
            m["width"], m["height"] = int(d.rgb.shape[1]), int(d.rgb.shape[0])
            m["alpha"] = d.alpha is not None
            row["runtime_s"] = res.seconds + (time.perf_counter() - t)
            row["metrics"] = m
            rows.append(row)
        except STORE_FAULTS:
            raise
        except Exception as exc:  # noqa: BLE001 - this image's failure; the chunk goes on
            failed.append((d.item, exc))
    return rows, failed
