"""A training run's folder: its lock, its JSON and CSV files, its changelog and the RNG state that
a resumed run restores. ``model.remover.train`` writes every file through these."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from model.synth.pairs import one_opencv_thread


class RunLocked(RuntimeError):
    """Another process is training in this run folder."""

    def __init__(self, run_dir: Path):
        super().__init__(f"run folder {run_dir} is locked by another training process")
        self.run_dir = run_dir

@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` (released by the OS if the process dies)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fh = open(run_dir / ".lock", "w")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise RunLocked(run_dir) from exc
        yield
    finally:
        fh.close()


def run_is_locked(run_dir: Path) -> bool:
    """True while a live process trains in ``run_dir``."""
    try:
        with run_lock(run_dir):
            return False
    except RunLocked:
        return True


def write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=json_default))
    tmp.replace(path)


def json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_history(run_dir: Path, history: list[dict]) -> None:
    write_json(run_dir / "history.json", history)
    cols = list(dict.fromkeys(k for row in history for k in row))
    tmp = run_dir / ".history.csv.tmp"
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(history)
    tmp.replace(run_dir / "history.csv")


def changelog(run_dir: Path, line: str) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    with open(run_dir / "changelog.md", "a") as fh:
        fh.write(f"- {stamp}: {line}\n")


def batches(loader: DataLoader) -> Iterator[dict]:
    with one_opencv_thread():  # the workers fork here (once: they persist) and keep one OpenCV thread
        it = iter(loader)
    while True:
        yield from it
        it = iter(loader)


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].tolist(),
            "python": list(random.getstate()[1])}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np_state = np.random.get_state()
    np.random.set_state((np_state[0], np.array(state["numpy"], dtype=np.uint32), *np_state[2:]))
    py = random.getstate()
    random.setstate((py[0], tuple(state["python"]), py[2]))
