"""Shared helpers for benchmark scripts: machine description, RESULTS.md sections, result JSON."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS_MD = BENCH / "RESULTS.md"
RESULTS_DIR = BENCH / "results"
HISTORY_DIR = BENCH / "history"
sys.path.insert(0, str(BENCH.parent))


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, load avg {load:.2f} at start"


def corpus_split(folder: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """The photos in ``folder`` (jpg/png, sorted) in ``model.synth.pairs.split_paths``' train/val/test
    split: the split every remover benchmark trains and tests on."""
    from model.synth.pairs import split_paths

    return split_paths(sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")))


def command() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0], BENCH.parent)] + sys.argv[1:])


def write_results(name: str, figures: dict, markdown_body: str) -> None:
    """Record one benchmark's figures: ``bench/results/<name>.json`` (the figures, the command,
    the machine, the commit and the markdown body: the data), a dated section appended to
    ``bench/history/<YYYY-MM-DD>.md`` (the log), and ``bench/RESULTS.md`` rewritten from every
    results file (today's figures, one section per benchmark). ``UNMARK_BENCH_DRY=1``: print the
    figures instead, for exploratory runs."""
    if os.environ.get("UNMARK_BENCH_DRY"):
        print(f"[dry run: not recorded] {name}: {json.dumps(figures, default=str)}")
        return
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    figures = {**figures, "date": now.isoformat(timespec="seconds"), "machine": machine(), "command": command(),
               "commit": _git_head(), "markdown": markdown_body.strip()}
    figures = json.loads(_unplaced(json.dumps(figures, default=str)))
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(figures, indent=2, default=str) + "\n")
    HISTORY_DIR.mkdir(parents=True, exist_ok=True)
    with open(HISTORY_DIR / f"{now:%Y-%m-%d}.md", "a") as fh:
        fh.write(_section(name, figures) + "\n")
    render_results()


def _unplaced(text: str) -> str:
    """``text`` with this checkout's absolute paths made relative to the repository (and the
    shared folder beside it shown as ``../shared``, the home folder as ``~``): results name no machine
    paths."""
    root = Path(__file__).resolve().parents[1]
    text = text.replace(str(root) + "/", "").replace(str(root.parent / "shared"), "../shared")
    return text.replace(str(Path.home()) + "/", "~/")


def _section(name: str, r: dict) -> str:
    return (f"\n## {name} — {r.get('date', '?')[:16].replace('T', ' ')} UTC\n\n"
            f"Command: `{r.get('command', '?')}`  \nMachine: {r.get('machine', '?')}  \nCommit: {r.get('commit', '?')}\n\n"
            f"{r.get('markdown', '').strip()}\n")


def render_results() -> Path:
    """``bench/RESULTS.md`` from ``bench/results/*.json``: the latest figures of each benchmark."""
    sections = []
    for path in sorted(RESULTS_DIR.glob("*.json")):
        sections.append(_section(path.stem, json.loads(path.read_text())))
    RESULTS_MD.write_text(
        "# Benchmark results: the latest figures\n\n"
        "One section per benchmark, generated from `bench/results/<name>.json` by `bench/_common.py` each time\n"
        "a benchmark records a run (re-render: `python bench/_common.py`). Every earlier run is in\n"
        "`bench/history/`, by date.\n" + "".join(sections))
    return RESULTS_MD


def _git_head() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=BENCH.parent, timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def offline_photo_files(folder: Path, name: str = "photo{i}.jpg") -> list[Path]:
    """The seven colour photos that load without a network (``pipeline.demo.sample_photos`` less
    the stereo motorcycle pair, whose halves are near-duplicates), written under ``folder`` as
    ``name`` (its suffix picks the format; JPEGs at quality 92)."""
    from PIL import Image

    from pipeline.demo import sample_photos

    arrays = [a for k, a in sample_photos().items() if not k.startswith("motorcycle")]
    paths = []
    for i, arr in enumerate(arrays):
        p = Path(folder) / name.format(i=i)
        Image.fromarray(arr).save(p, quality=92)
        paths.append(p)
    return paths


if __name__ == "__main__":
    print(render_results())
