"""``unmark clean-files`` against ``unmark clean``: CPU per image on the same folder, same run.

    python bench/clean_files.py [--images 200] [--side 1024x768] [--threads 1]

The folder: the offline sample photos (``_common.offline_photo_files``) resized to 1024×768, each
with a seeded synthetic mark (``model.synth.renderer.WatermarkRenderer``), repeated with a different
mark until there are ``--images`` JPEGs (quality 92). Each side runs as its own ``unmark``
process on a fresh home with the shipped models (``unmark init``), with
``--threads`` torch/OpenMP threads (default 1) and the default two decoding workers; its CPU time
is the process's and its children's (``RUSAGE_CHILDREN``), so other load on the machine does not
count against either side.

- ``clean``: ``unmark import DIR``, the images marked watermarked as a reviewer would (no
  detector is trained), then ``unmark clean``: the pool step alone is the reference.
- ``clean-files``: ``unmark clean-files DIR --out OUT --no-triage`` (import, dedup, every file taken as
  watermarked, as the reference's reviewer did, clean, write back as JPEG with the input's
  tables), and its rerun (nothing is cleaned again: the outputs are written from the catalog).
  Without ``--no-triage`` the shipped detector would leave its uncertain files alone, and the two
  sides would not clean the same images.

Figures: ``clean_cpu_s_per_image``, ``import_cpu_s_per_image``, ``clean_files_cpu_s_per_image``,
``ratio`` (clean-files over clean; the target is ≤ 1.2), ``ratio_vs_import_and_clean`` and
``rerun_cpu_s_per_image``. Writes ``bench/results/clean_files.json`` and a section of
``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import offline_photo_files, write_results

ROOT = Path(__file__).resolve().parents[1]


def make_folder(folder: Path, n: int, size: tuple[int, int]) -> list[Path]:
    import numpy as np
    from PIL import Image

    from model.synth.renderer import WatermarkRenderer

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        photos = [np.asarray(Image.open(p).convert("RGB").resize(size, Image.LANCZOS))
                  for p in offline_photo_files(Path(tmp))]
    renderer = WatermarkRenderer(seed=0)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        marked = renderer.render(photos[i % len(photos)], rng, postprocess=False).composite
        p = folder / f"photo{i:03d}.jpg"
        Image.fromarray(marked).save(p, quality=92)
        paths.append(p)
    return paths


def unmark(args: list[str], home: Path, threads: int) -> tuple[float, float, dict]:
    """(CPU seconds, wall seconds, JSON output) of one ``unmark`` command."""
    env = {**os.environ, "UNMARK_HOME": str(home), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "NO_ALBUMENTATIONS_UPDATE": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "flows.cli", *args, "--json"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=6 * 3600)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"unmark {' '.join(args)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall, json.loads(out.stdout)


def mark_all_watermarked(home: Path) -> None:
    from pipeline.config import load_settings
    from storage import open_catalog, status
    from storage.models import Image

    cat = open_catalog(load_settings(home=home).storage)
    with cat.write() as s:
        for im in s.query(Image).all():
            status.mark_reviewed(s, im.id, im.sha256, "watermarked")
    cat.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--side", default="1024x768", help="WxH of every photo")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    size = tuple(int(v) for v in a.side.split("x"))
    with tempfile.TemporaryDirectory(prefix="unmark-bench-clean-files-") as tmp:
        tmp = Path(tmp)
        folder = tmp / "photos"
        make_folder(folder, a.images, size)
        ref, mine = tmp / "home-clean", tmp / "home-files"
        unmark(["init"], ref, a.threads)
        imp_cpu, _, _ = unmark(["import", str(folder)], ref, a.threads)
        mark_all_watermarked(ref)
        clean_cpu, clean_wall, clean_out = unmark(["clean"], ref, a.threads)
        unmark(["init"], mine, a.threads)
        files_cpu, files_wall, files_out = unmark(["clean-files", str(folder), "--out", str(tmp / "out"), "--no-triage"],
                                                   mine, a.threads)
        rerun_cpu, _, rerun_out = unmark(["clean-files", str(folder), "--out", str(tmp / "out"), "--no-triage"],
                                         mine, a.threads)
    n = a.images
    assert clean_out["cleaned"] == n and files_out["cleaned"] == n and rerun_out["cached"] == n, (clean_out, files_out)
    figures = {
        "images": n, "side": a.side, "threads": a.threads, "backend": clean_out.get("backend"),
        "import_cpu_s_per_image": round(imp_cpu / n, 4),
        "clean_cpu_s_per_image": round(clean_cpu / n, 4),
        "clean_files_cpu_s_per_image": round(files_cpu / n, 4),
        "rerun_cpu_s_per_image": round(rerun_cpu / n, 4),
        "ratio": round(files_cpu / clean_cpu, 3),
        "ratio_vs_import_and_clean": round(files_cpu / (clean_cpu + imp_cpu), 3),
        "clean_wall_s": round(clean_wall, 1), "clean_files_wall_s": round(files_wall, 1),
    }
    body = (f"{n} photos at {a.side} (offline samples with synthetic marks, JPEG q92), shipped remover, "
            f"{a.threads} thread(s), backend {figures['backend']}; CPU seconds per image (process + children):\n\n"
            "| command | CPU s / image |\n| --- | --- |\n"
            f"| `unmark import` | {figures['import_cpu_s_per_image']} |\n"
            f"| `unmark clean` | {figures['clean_cpu_s_per_image']} |\n"
            f"| `unmark clean-files --no-triage` (import, dedup, clean, write back) | {figures['clean_files_cpu_s_per_image']} |\n"
            f"| `unmark clean-files` again (nothing cleaned again) | {figures['rerun_cpu_s_per_image']} |\n\n"
            f"clean-files / clean: **{figures['ratio']}** (target ≤ 1.2); clean-files / (import + clean): "
            f"{figures['ratio_vs_import_and_clean']}.\n")
    print(json.dumps(figures, indent=2))
    write_results("clean_files", figures, body)


if __name__ == "__main__":
    main()
