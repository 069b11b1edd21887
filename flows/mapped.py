"""The CPU-heavy parts of ingest as mapped tasks, for the Dask task runner: perceptual hashing
(dedup) and detector scoring (triage), a chunk of images per task.

``dedup_and_triage`` runs ``pipeline.dedup.dedup`` and ``pipeline.triage.triage`` in its own
body and hands them a ``hasher`` / ``score_chunks`` that map the chunks onto the flow's task
runner, so matching, grouping and detector training stay where they were and only the per-image
work moves. ``ingest(task_runner="dask")`` runs it with ``runtime.task_runner("dask")``: a local
cluster on 127.0.0.1, or the scheduler at ``UNMARK_DASK_ADDRESS`` (workers on other machines);
``unmark dedup|triage --task-runner dask`` run ``dedup_mapped`` / ``triage_mapped`` the same way.
The thread runner keeps ingest's plain ``dedup`` and ``triage`` tasks, and both give the same
catalog (``tests/flows/test_dask_runner.py``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE

from flows.runtime import chunks, small, task_runner
from pipeline.config import Settings
from pipeline.workspace import open_workspace

# The detector a worker process has loaded, kept between its tasks: loading it for each chunk
# would cost more than scoring the chunk. One entry: (catalog, blob root, version) -> detector.
_DETECTOR: dict[tuple[str, str, str], object] = {}


@task(name="hash-chunk", cache_policy=NO_CACHE)
def hash_chunk(settings: Settings, jobs: list[tuple[int, str]]) -> list[tuple]:
    """``pipeline.dedup.hash_blobs`` on one chunk, in this worker (no process pool inside a Dask
    worker: its processes are daemons and may not have children)."""
    from pipeline import dedup

    return list(dedup.hash_blobs(jobs, settings.updated(dedup_workers=1)))


@task(name="score-chunk", cache_policy=NO_CACHE)
def score_chunk(settings: Settings, detector_version: str, ids: list[int]) -> dict[str, int]:
    """``pipeline.triage.score_chunk`` on one chunk of image ids with the promoted detector."""
    from pipeline import registry, triage

    with open_workspace(settings) as (catalog, blobs):
        key = (str(settings.storage.catalog_url), str(settings.storage.blob_root), detector_version)
        if key not in _DETECTOR:
            detector = registry.load_detector(catalog, blobs)
            if detector is None or detector.version != detector_version:
                found = detector.version if detector else None
                raise RuntimeError(f"detector {detector_version} is no longer the promoted one ({found})")
            _DETECTOR.clear()
            _DETECTOR[key] = detector
        return triage.score_chunk(catalog, blobs, settings, _DETECTOR[key], ids)


def _mapped_hasher(jobs: Sequence[tuple[int, str]], settings: Settings) -> Iterator[tuple]:
    futures = hash_chunk.map(unmapped(settings), chunks(list(jobs), max(1, settings.dedup.dedup_chunk_size)))
    for fut in futures:  # in submission order, as hash_blobs yields
        yield from fut.result()


def _mapped_scorer(settings: Settings):
    def score_chunks(detector, batches: list[list[int]]) -> Iterator[dict[str, int]]:
        futures = score_chunk.map(unmapped(settings), unmapped(detector.version), batches)
        for fut in futures:
            yield fut.result()

    return score_chunks


def _dedup(settings: Settings, regroup: bool = False) -> dict:
    from pipeline import dedup

    with open_workspace(settings) as (catalog, blobs):
        return small(dedup.dedup(catalog, blobs, settings, regroup=regroup, hasher=_mapped_hasher))


def _triage(settings: Settings, retrain_detector: bool = False) -> dict:
    from pipeline import triage

    with open_workspace(settings) as (catalog, blobs):
        return small(triage.triage(catalog, blobs, settings, retrain_detector=retrain_detector,
                                   score_chunks=_mapped_scorer(settings)))


@flow(name="dedup-mapped", validate_parameters=False)
def dedup_mapped(settings: Settings, regroup: bool = False) -> dict:
    """``unmark dedup`` with the hashing mapped onto this flow's task runner."""
    return _dedup(settings, regroup)


@flow(name="triage-mapped", validate_parameters=False)
def triage_mapped(settings: Settings, retrain_detector: bool = False) -> dict:
    """``unmark triage`` with the scoring mapped onto this flow's task runner."""
    return _triage(settings, retrain_detector)


@flow(name="dedup-triage", validate_parameters=False)
def dedup_and_triage(settings: Settings, retrain_detector: bool = False) -> dict:
    """Dedup, then triage, on one task runner (one Dask cluster for both)."""
    return {"dedup": _dedup(settings), "triage": _triage(settings, retrain_detector)}


def run_mapped(which, settings: Settings, *args, kind: str = "dask") -> dict:
    """One of the flows above, run on the ``kind`` task runner (``dask`` or ``thread``)."""
    return which.with_options(task_runner=task_runner(kind, settings))(settings, *args)


def run_dedup_and_triage(settings: Settings, retrain_detector: bool, kind: str = "dask") -> dict:
    return run_mapped(dedup_and_triage, settings, retrain_detector, kind=kind)
