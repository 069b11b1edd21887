"""Synthetic data benchmark: (watermarked, target, mask) triplets per second per core at 256 px.

    python bench/synth.py [--n 400] [--size 256] [--context 1] [--images DIR] [--workers N]

One process, one thread everywhere (torch, OpenCV, BLAS), reading photos from disk as training
does: decode, augment, watermark, artifacts, tensors (``model.synth.pairs.WatermarkPairs``). The rate per
core is items / CPU seconds of this process, so other work on the machine does not deflate it;
the wall-clock rate is reported next to it. Photos: ``../shared/corpus/voc150`` when present,
else the sample photos that ship with scikit-image, scikit-learn and matplotlib.

Writes ``bench/results/synth.json`` (``triplets_per_s_per_core``), appends to ``bench/RESULTS.md``
and saves a contact sheet of 64 samples to ``bench/out/synth_contact_sheet.png``.

``--workers N`` also times what training's DataLoader delivers (batches of 8, wall-clock pairs/s)
with N worker processes, once started under ``model.synth.pairs.one_opencv_thread`` (OpenCV on one thread in
each worker, as ``model.remover.train`` starts them) and once without it (every worker inherits this
process's OpenCV pool: ``--opencv-threads``, default one per core).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import BENCH, offline_photo_files, write_results  # noqa: E402

from model.synth.pairs import WatermarkPairs, one_opencv_thread, split_paths  # noqa: E402
from model.synth.renderer import FAMILIES, WatermarkRenderer  # noqa: E402

GOAL = 25.0
CORPUS = BENCH.parent.parent / "shared" / "corpus" / "voc150"


def measure(ds: WatermarkPairs, n: int) -> dict:
    ds[0]  # warm caches (fonts, transforms)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(n):
        item = ds[i % len(ds)]
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    assert item["input"].shape == (3, ds.size, ds.size)
    return {"per_core": n / cpu, "wall": n / wall, "cpu_s": cpu, "wall_s": wall}


def loader_rate(ds: WatermarkPairs, workers: int, init: bool, n: int, batch: int = 8) -> float:
    """Wall-clock pairs/s a DataLoader with ``workers`` processes delivers, after its first batches."""
    from torch.utils.data import DataLoader

    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, persistent_workers=False)
    with one_opencv_thread() if init else contextlib.nullcontext():
        it = iter(loader)  # the workers fork here
    for _ in range(2 * workers):  # start-up: processes forked, fonts and photos warmed
        next(it)
    t = time.perf_counter()
    batches = max(1, n // batch)
    for _ in range(batches):
        next(it)
    rate = batches * batch / (time.perf_counter() - t)
    del it
    return rate


def per_family_ms(renderer: WatermarkRenderer, size: int, reps: int = 40) -> dict[str, float]:
    from skimage import data

    img = cv2.resize(data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(0)
    out = {}
    for fam in FAMILIES:
        t = time.process_time()
        for _ in range(reps):
            renderer.render(img, rng, family=fam, postprocess=False)
        out[fam] = (time.process_time() - t) / reps * 1000
    return out


def contact_sheet(ds: WatermarkPairs, path: Path, n: int = 64, cell: int = 192) -> None:
    """8×8 samples, each as the watermarked input beside its mask, labelled with the family."""
    cols = 8
    rows = (n + cols - 1) // cols
    sheet = np.full((rows * (cell + 4), cols * (2 * cell + 8), 3), 255, np.uint8)
    for i in range(n):
        s = ds.sample(i % len(ds))
        inp = cv2.resize(s["input"], (cell, cell), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(s["mask"].astype(np.uint8) * 255, (cell, cell), interpolation=cv2.INTER_NEAREST)
        tile = np.concatenate([inp, np.repeat(mask[..., None], 3, axis=-1)], axis=1)
        label = s["family"] + (f" {s['style'].get('script', '')}" if "script" in s["style"] else "")
        cv2.putText(tile, label, (cell + 4, cell - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 80, 80), 1, cv2.LINE_AA)
        r, c = divmod(i, cols)
        y, x = r * (cell + 4), c * (2 * cell + 8)
        sheet[y : y + cell, x : x + 2 * cell] = tile
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))


def _loader_rates(args: argparse.Namespace, train_paths: list, renderer: WatermarkRenderer) -> tuple[dict, int]:
    """DataLoader pairs/s with ``args.workers`` workers, started with and without
    ``one_opencv_thread``, and the OpenCV pool the others inherit."""
    ds = WatermarkPairs(train_paths, size=args.size, train=True, seed=0, renderer=renderer, context=args.context,
                        samples_per_image=64)
    cv2.setNumThreads(args.opencv_threads)  # -1: OpenCV's default pool, as a training process has it
    pool = cv2.getNumThreads()
    loader: dict = {}
    for init in (False, True, False, True):  # interleaved, so drift in the machine's load hits both
        loader.setdefault("init" if init else "default", []).append(loader_rate(ds, args.workers, init, args.n))
    cv2.setNumThreads(1)
    loader = {k: round(float(np.mean(v)), 1) for k, v in loader.items()}
    print(f"DataLoader, {args.workers} workers: {loader['default']:.1f} pairs/s with OpenCV's pool of {pool} "
          f"threads in each, {loader['init']:.1f} with one", flush=True)
    return loader, pool


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=400, help="items per measurement")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--context", type=float, default=1.0,
                    help="training marks drawn on a canvas this many times the crop (quick-cpu: 2; see WatermarkPairs)")
    ap.add_argument("--images", type=Path, default=None, help="folder of photos (default: the shared corpus)")
    ap.add_argument("--workers", type=int, default=0,
                    help="also time a DataLoader with this many workers, started with and without one_opencv_thread")
    ap.add_argument("--opencv-threads", type=int, default=-1,
                    help="this process's OpenCV pool while the workers are started without one_opencv_thread "
                    "(default -1: OpenCV's default, one thread per core)")
    return ap


def main() -> None:
    ap = _parser()
    args = ap.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)

    folder = args.images or (CORPUS if CORPUS.is_dir() else None)
    if folder is not None:
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        source = str(folder)
    else:
        paths = offline_photo_files(Path(tempfile.mkdtemp(prefix="unmark-synth-")))
        source = "offline sample photos (skimage, sklearn, matplotlib)"
    train_paths, val_paths, _ = split_paths(paths)

    t = time.process_time()
    renderer = WatermarkRenderer(seed=0)
    init_s = time.process_time() - t
    results = {}
    for pairing in ("supervised", "self-supervised"):
        ds = WatermarkPairs(train_paths, size=args.size, pairing=pairing, train=True, seed=0, renderer=renderer,
                            context=args.context)
        results[pairing] = measure(ds, args.n)
        print(f"{pairing}: {results[pairing]['per_core']:.1f} triplets/s/core "
              f"({results[pairing]['wall']:.1f}/s wall)", flush=True)
    val = WatermarkPairs(val_paths, size=args.size, train=False, seed=1, renderer=renderer)
    results["validation"] = measure(val, min(args.n, 4 * len(val)))
    families = per_family_ms(renderer, args.size)
    loader, pool = _loader_rates(args, train_paths, renderer) if args.workers else ({}, None)

    sheet = BENCH / "out" / "synth_contact_sheet.png"
    contact_sheet(WatermarkPairs(train_paths, size=args.size, train=True, seed=7, renderer=renderer), sheet)

    sup = results["supervised"]["per_core"]
    figures = {
        "triplets_per_s_per_core": round(sup, 1),
        "self_supervised_triplets_per_s_per_core": round(results["self-supervised"]["per_core"], 1),
        "validation_triplets_per_s_per_core": round(results["validation"]["per_core"], 1),
        "wall_triplets_per_s": round(results["supervised"]["wall"], 1),
        "goal_per_core": GOAL,
        "size": args.size,
        "context": args.context,
        "n": args.n,
        "images": source,
        "renderer_init_cpu_s": round(init_s, 2),
        "render_ms_per_family": {k: round(v, 2) for k, v in families.items()},
        **({"loader_workers": args.workers, "loader_opencv_pool": pool, "loader_pairs_per_s_opencv_pool": loader["default"],
            "loader_pairs_per_s_one_thread": loader["init"]} if loader else {}),
        "scripts": renderer.available_scripts(),
        "contact_sheet": str(sheet.relative_to(BENCH.parent)),
    }
    rows = "\n".join(
        f"| {k} | {results[k]['per_core']:.1f} | {results[k]['wall']:.1f} |"
        for k in ("supervised", "self-supervised", "validation"))
    fam = ", ".join(f"{k} {v:.1f} ms" for k, v in families.items())
    loader_line = (f"DataLoader with {args.workers} workers, batches of 8 (mean of two passes each, wall clock): "
                   f"{loader['default']:.1f} pairs/s with the workers inheriting this process's OpenCV pool of {pool} "
                   f"thread(s), "
                   f"{loader['init']:.1f} started under `one_opencv_thread` (one thread).\n" if loader else "")
    body = f"""
{args.n} items per pairing, {args.size} px (marks drawn on a canvas {args.context:g}× the crop), from {len(train_paths)} photos in {source}; one thread
(torch, OpenCV, BLAS). Per core = items / CPU seconds of the process; wall = items / elapsed
seconds (inflated by whatever else runs on the machine). Goal: {GOAL:.0f} triplets/s/core.

| pairing | triplets/s/core | triplets/s wall |
|---|---|---|
{rows}

**triplets_per_s_per_core = {sup:.1f}** ({"meets" if sup >= GOAL else "misses"} the goal of {GOAL:.0f}).
Renderer start-up (font discovery, cmap checks, phrase bank): {init_s:.2f} CPU s, once per process.
One render without post-processing: {fam}.
{loader_line}Scripts drawn: {", ".join(renderer.available_scripts())}. Contact sheet: `{figures['contact_sheet']}`.
"""
    write_results("synth", figures, body)
    print(body)


if __name__ == "__main__":
    main()
