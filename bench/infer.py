"""Inference speed and memory: naive full-image fp32 vs the tiled engine, in the same run.

    python bench/infer.py [--threads 1] [--images 3] [--naive-large] [--gpu] [--checkpoint PATH]

Each measurement runs in its own subprocess (so its peak RSS is its own), on the seed-size U-Net
(``model.remover.network.UNet()``: base 32, depth 4, ~3.5 M parameters; untrained weights are fine for
speed; the residual head and the attention gain are randomised so the network is not the identity
and the seam check below means something).

- ``naive``: the whole image in one fp32 forward pass (padded to the size multiple).
- ``engine``: ``model.remover.infer.Cleaner`` with the settings the clean step uses on this device
  (``pipeline.clean.engine_options``, backend ``auto``: on a VNNI CPU the int8 copy when its
  probes pass, else the fused fp32 copy; 512 tiles); the fused and the int8 backends forced
  (at 1024×768 and 4000×3000, each with its set-up CPU seconds: the int8 calibration); also with
  the plain (eager) model at the same tiles and at the previous default (320 tiles), fused at
  other tile sizes, with bf16 forced (why ``auto`` picks what it picks on this CPU), and with
  ``torch.compile`` (its compilation timed apart).
- ``jit``: one engine-sized tile through the plain channels-last model, the fused copy, and
  ``torch.jit.trace`` + ``freeze`` (+ ``optimize_for_inference``), with the trace time.
- CPU: images/s at 1024×768 and 4000×3000, peak RSS of each. Images/s are per CPU-second of the
  measuring process (``time.process_time``) with one torch thread by default, so a busy shared
  machine does not skew one side against the other; wall-clock rates are recorded next to them. Naive at 4000×3000 needs many GB
  (full-resolution feature maps), so it only runs with ``--naive-large``; otherwise its peak RSS is
  estimated by a straight line through naive at 1024×768 and 2048×1536 (RSS grows with pixels).
- Seam check: the engine's tiled output vs the naive whole-image output at 1024×768 (uint8 levels).
- Fidelity (``fidelity``): int8 engine output vs fused engine output (PSNR) on real photos
  (``skimage.data`` astronaut, coffee, chelsea with a seeded rendered watermark), for the bench
  network and, with ``--checkpoint``, a trained remover (also PSNR of input, fused and int8
  output against the clean photo: the cleaning quality int8 must keep).
- GPU (``--gpu``, when CUDA is present): images/s at 512×512 and 2048×2048 and the GPU busy fraction
  (CUDA kernel time / wall time, from the torch profiler).

Writes ``bench/results/infer.json`` and appends a dated section to ``bench/RESULTS.md``.
Times on a shared machine are inflated by other load: the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# --- one measurement (runs in a child process) ---------------------------------------------------


def _network():
    import torch

    from model.remover.network import UNet

    torch.manual_seed(0)
    net = UNet().eval()  # the seed size
    with torch.no_grad():
        net.head.weight.normal_(std=1.0)
        net.attention.gamma.fill_(0.5)
    return net


def _images(w: int, h: int, n: int):
    import numpy as np

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / w, yy / h, (xx + yy) / (w + h)], -1) * 200
    return [np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8) for _ in range(n)]


def _naive(net, img, device="cpu"):
    import numpy as np
    import torch
    import torch.nn.functional as F

    h, w = img.shape[:2]
    m = net.size_multiple
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float().div(255).to(device)
    x = F.pad(x, (0, (-w) % m, 0, (-h) % m), mode="reflect")
    with torch.inference_mode():
        y = net(x)["image"][0, :, :h, :w].clamp(0, 1).mul(255).round().byte()
    return np.ascontiguousarray(y.permute(1, 2, 0).cpu().numpy())


def jit_worker(w: int, h: int, n: int, threads: int) -> dict:
    """CPU seconds per ``w``×``h`` tile: plain channels-last model, fused copy, jit trace+freeze,
    jit trace+freeze+optimize_for_inference; trace/freeze CPU seconds and max |Δ| vs plain."""
    import warnings

    import torch

    from model.remover.fused import fuse_unet

    warnings.filterwarnings("ignore")  # torch.jit's deprecation and tracer warnings
    torch.set_num_threads(threads)
    net = _network()
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)).contiguous(memory_format=torch.channels_last)
    out: dict = {"mode": "jit", "size": f"{w}x{h}", "threads": threads, "tiles_timed": n}
    with torch.inference_mode():
        ref = net(x)["image"]
        plain = _network().to(memory_format=torch.channels_last)
        paths = {"eager_channels_last": (plain, 0.0), "fused": (fuse_unet(net), 0.0)}
        for opt in (False, True):
            c = time.process_time()
            frozen = torch.jit.freeze(torch.jit.trace(_network().to(memory_format=torch.channels_last), x, strict=False))
            if opt:
                frozen = torch.jit.optimize_for_inference(frozen)
            frozen(x)  # the first call runs the graph passes
            paths["jit_optimized" if opt else "jit_frozen"] = (frozen, time.process_time() - c)
        for name, (f, prep) in paths.items():
            f(x)
            c = time.process_time()
            for _ in range(n):
                y = f(x)["image"]
            out[f"{name}_s_per_tile"] = (time.process_time() - c) / n
            out[f"{name}_prepare_cpu_s"] = prep
            out[f"{name}_max_abs_diff"] = float((y - ref).abs().max())
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _psnr(a, b) -> float:
    import numpy as np

    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


def fidelity_worker(threads: int, checkpoint: str | None) -> dict:
    """int8 vs fused engine outputs on watermarked real photos (see the module docstring)."""
    import numpy as np
    import skimage.data as sd
    import torch

    from model.remover.infer import Cleaner
    from model.remover.network import load_checkpoint
    from model.synth.renderer import WatermarkRenderer

    torch.set_num_threads(threads)
    renderer, rng = WatermarkRenderer(seed=0), np.random.default_rng(0)
    photos = {n: getattr(sd, n)() for n in ("astronaut", "coffee", "chelsea")}
    marked = {n: renderer.render(img, rng, postprocess=False).composite for n, img in photos.items()}
    nets = {"bench": (_network(), False)}
    if checkpoint:
        net, extra = load_checkpoint(checkpoint)
        harden = bool(json.loads(extra.get("train_config", "{}")).get("harden_mask", False))
        nets[checkpoint] = (net, harden)
    out: dict = {"mode": "fidelity", "threads": threads}
    for label, (net, harden) in nets.items():
        opts = dict(device="cpu", tile=512, overlap=32, batch_size=1, precision="fp32", harden_mask=harden)
        fused, int8 = Cleaner(net, backend="fused", **opts), Cleaner(net, backend="int8", **opts)
        rows = {}
        for name, img in marked.items():
            a, b = fused.clean([img])[0].image, int8.clean([img])[0].image
            rows[name] = {"int8_vs_fp32_db": _psnr(b, a), "input_vs_clean_db": _psnr(img, photos[name]),
                          "fp32_vs_clean_db": _psnr(a, photos[name]), "int8_vs_clean_db": _psnr(b, photos[name])}
        out[label] = {"config": dict(net.config), "harden_mask": harden, "photos": rows}
    return out


def worker(mode: str, w: int, h: int, n: int, threads: int, precision: str, compile: bool = False,
           backend: str = "auto", tile: int | None = None) -> dict:
    import torch

    torch.set_num_threads(threads)
    from model.device import resolve_device
    from model.remover.infer import Cleaner
    from pipeline.clean import engine_options
    from pipeline.config import load_settings

    net = _network()
    imgs = _images(w, h, n)
    warm = _images(min(w, 512), min(h, 384), 1)[0]
    out: dict = {"mode": mode, "size": f"{w}x{h}", "images": n, "threads": threads}
    if mode == "naive":
        _naive(net, warm)
        t, c = time.perf_counter(), time.process_time()
        for im in imgs:
            _naive(net, im)
        dt, cpu = time.perf_counter() - t, time.process_time() - c
    elif mode in ("engine", "seam"):
        dev = resolve_device("cpu")
        opts = engine_options(load_settings().clean, dev)
        if precision != "auto":
            opts["precision"] = precision
        opts["compile"] = compile
        opts["backend"] = backend
        opts["tile"] = tile or opts["tile"]
        c = time.process_time()
        cleaner = Cleaner(net, device=dev, **opts)
        out["setup_cpu_s"] = time.process_time() - c  # int8: the calibration and the probes
        th, tw, starts = cleaner.plan(h, w)
        out.update(tile=opts["tile"], overlap=opts["overlap"], batch_size=opts["batch_size"], precision=cleaner.precision,
                   compile=compile, backend=cleaner.backend, tiles=len(starts), tile_shape=f"{tw}x{th}",
                   tile_pixels_per_pixel=len(starts) * th * tw / (h * w))
        t = time.perf_counter()
        cleaner.clean([warm])  # with compile: the compilation (one tile shape)
        out["warmup_s"] = time.perf_counter() - t
        t, c = time.perf_counter(), time.process_time()
        results = cleaner.clean(imgs)
        dt, cpu = time.perf_counter() - t, time.process_time() - c
        if mode == "seam":
            import numpy as np

            ref = _naive(net, imgs[0])
            diff = np.abs(results[0].image.astype(int) - ref.astype(int))
            out.update(seam_max_abs=int(diff.max()), seam_mean_abs=float(diff.mean()),
                       seam_frac_differs=float((diff > 0).mean()),
                       changed_by_net_mean=float(np.abs(ref.astype(int) - imgs[0].astype(int)).mean()))
    else:
        raise ValueError(mode)
    # With one thread, CPU seconds are the work done whatever else runs on the machine; wall
    # seconds also count the time other processes held the core.
    out["seconds"], out["cpu_seconds"] = dt, cpu
    out["img_per_s"] = n / cpu
    out["img_per_s_wall"] = n / dt
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def gpu_worker(sizes: list[tuple[int, int]], n: int) -> dict:
    """Engine images/s and GPU busy fraction on CUDA (kernel time / wall time)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from model.remover.infer import Cleaner
    from pipeline.clean import engine_options
    from pipeline.config import load_settings

    dev = torch.device("cuda")
    net = _network()
    opts = engine_options(load_settings().clean, dev)
    cleaner = Cleaner(net, device=dev, **opts)
    out: dict = {"device": torch.cuda.get_device_name(dev), **{k: opts[k] for k in ("tile", "overlap", "batch_size")},
                 "precision": cleaner.precision}
    for w, h in sizes:
        imgs = _images(w, h, n)
        cleaner.clean(imgs[:2])  # warm-up (cuDNN autotune, allocator)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            t = time.perf_counter()
            cleaner.clean(imgs)
            torch.cuda.synchronize()
            wall = time.perf_counter() - t
        busy_us = sum(e.self_device_time_total for e in prof.key_averages())
        out[f"img_per_s_{w}x{h}"] = n / wall
        out[f"busy_fraction_{w}x{h}"] = min(1.0, busy_us / 1e6 / wall)
        out[f"peak_gpu_mb_{w}x{h}"] = torch.cuda.max_memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    return out


# --- the driver ----------------------------------------------------------------------------------


def run_child(args: list[str], timeout: float = 1800) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": args[args.index("--threads") + 1] if "--threads" in args else "1"}
    r = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True,
                       timeout=timeout, cwd=ROOT, env=env)
    if r.returncode != 0:
        return {"error": (r.stderr or r.stdout)[-800:], "returncode": r.returncode}
    return json.loads(r.stdout.strip().splitlines()[-1])


def _machine() -> dict:
    cpu = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch

    from model.device import native_bf16

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "native_bf16": native_bf16("cpu"), "cuda": torch.cuda.is_available()}


def _child(argv: list[str]) -> dict:
    """One measurement, in its own process (``--child MODE ...``)."""
    c = argparse.ArgumentParser()
    c.add_argument("mode")
    c.add_argument("--w", type=int)
    c.add_argument("--h", type=int)
    c.add_argument("--n", type=int, default=1)
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--precision", default="auto")
    c.add_argument("--compile", action="store_true")
    c.add_argument("--backend", default="auto")
    c.add_argument("--tile", type=int, default=None)
    c.add_argument("--checkpoint", default=None)
    ca = c.parse_args(argv)
    if ca.mode == "gpu":
        res = gpu_worker([(512, 512), (2048, 2048)], ca.n)
    elif ca.mode == "fidelity":
        res = fidelity_worker(ca.threads, ca.checkpoint)
    elif ca.mode == "jit":
        res = jit_worker(ca.w, ca.h, ca.n, ca.threads)
    else:
        res = worker(ca.mode, ca.w, ca.h, ca.n, ca.threads, ca.precision, ca.compile, ca.backend, ca.tile)
    return res


def _summary(runs: dict[str, dict], a: argparse.Namespace, t0: float, load_start: tuple) -> dict:
    """The measurements of one bench run, summarised as bench/results/infer.json records them."""
    def get(name: str, key: str):
        return runs.get(name, {}).get(key)

    naive_s, eng_s = get("naive_1024x768", "img_per_s"), get("engine_1024x768", "img_per_s")

    def ratio(name: str) -> float | None:
        """``name``'s images/s over the naive pass's at 1024×768 (None when either is missing)."""
        rate = get(name, "img_per_s")
        return rate / naive_s if naive_s and rate else None

    r1, r2 = get("naive_1024x768", "peak_rss_mb"), get("naive_2048x1536", "peak_rss_mb")
    est = None
    if r1 and r2:  # RSS = a + b·pixels through the two naive points
        b = (r2 - r1) / (2048 * 1536 - 1024 * 768)
        est = r1 + b * (4000 * 3000 - 1024 * 768)
    return {
        "naive_img_per_s_1024x768": naive_s,
        "engine_img_per_s_1024x768": eng_s,
        "ratio": ratio("engine_1024x768"),
        "peak_rss_mb_4000x3000": get("engine_4000x3000", "peak_rss_mb"),
        "peak_rss_mb_1024x768": get("engine_1024x768", "peak_rss_mb"),
        "naive_img_per_s_wall_1024x768": get("naive_1024x768", "img_per_s_wall"),
        "engine_img_per_s_wall_1024x768": get("engine_1024x768", "img_per_s_wall"),
        "rate_basis": "images per CPU-second of the measuring process (1 torch thread unless --threads)",
        "engine_img_per_s_4000x3000": get("engine_4000x3000", "img_per_s"),
        "naive_img_per_s_4000x3000": get("naive_4000x3000", "img_per_s"),
        "naive_peak_rss_mb_1024x768": r1,
        "naive_peak_rss_mb_2048x1536": r2,
        "naive_peak_rss_mb_4000x3000": get("naive_4000x3000", "peak_rss_mb"),
        "naive_peak_rss_mb_4000x3000_estimated": est,
        "engine_bf16_img_per_s_1024x768": get("engine_bf16_1024x768", "img_per_s"),
        "engine_compiled_img_per_s_1024x768": get("engine_compiled_1024x768", "img_per_s"),
        "ratio_compiled": ratio("engine_compiled_1024x768"),
        "compile_wall_s": get("engine_compiled_1024x768", "warmup_s"),
        "seam_max_abs": get("engine_1024x768", "seam_max_abs"),
        "seam_mean_abs": get("engine_1024x768", "seam_mean_abs"),
        "engine": {k: get("engine_1024x768", k) for k in ("tile", "overlap", "batch_size", "precision", "backend",
                                                           "tiles", "tile_shape", "tile_pixels_per_pixel")},
        "engine_fused_img_per_s_1024x768": get("engine_fused_1024x768", "img_per_s"),
        "ratio_fused": ratio("engine_fused_1024x768"),
        "engine_int8_img_per_s_1024x768": get("engine_int8_1024x768", "img_per_s"),
        "ratio_int8": ratio("engine_int8_1024x768"),
        "int8_setup_cpu_s": get("engine_int8_1024x768", "setup_cpu_s"),
        "engine_fused_img_per_s_4000x3000": get("engine_fused_4000x3000", "img_per_s"),
        "peak_rss_mb_fused_4000x3000": get("engine_fused_4000x3000", "peak_rss_mb"),
        "fidelity": runs.get("fidelity"),
        "engine_eager_img_per_s_1024x768": get("engine_eager_1024x768", "img_per_s"),
        "ratio_eager": ratio("engine_eager_1024x768"),
        "engine_eager_tile320_img_per_s_1024x768": get("engine_eager_tile320_1024x768", "img_per_s"),
        "ratio_previous_default": ratio("engine_eager_tile320_1024x768"),
        "tile_sweep_img_per_s_1024x768": {
            str(get(k, "tile")): {"img_per_s": get(k, "img_per_s"), "tiles": get(k, "tiles"),
                                  "tile_pixels_per_pixel": get(k, "tile_pixels_per_pixel")}
            for k in ("engine_tile320_1024x768", "engine_1024x768", "engine_tile768_1024x768",
                      "engine_tile1024_1024x768") if k in runs and "error" not in runs[k]},
        "jit": runs.get("jit_tile"),
        "gpu": runs.get("gpu"),
        "threads": a.threads,
        "machine": {**_machine(), "load_avg_start": load_start, "load_avg_end": os.getloadavg()},
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "wall_s": round(time.time() - t0, 1),
        "runs": runs,
    }


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads per measurement (1: stable on a shared box)")
    ap.add_argument("--images", type=int, default=3, help="images timed at 1024x768 (1 at 4000x3000)")
    ap.add_argument("--naive-large", action="store_true", help="also run naive fp32 at 4000x3000 (needs many GB)")
    ap.add_argument("--gpu", action="store_true", help="GPU numbers at 512x512 and 2048x2048 (needs CUDA)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurement (minutes)")
    ap.add_argument("--no-record", action="store_true", help="print only; do not write results")
    ap.add_argument("--no-sweep", action="store_true", help="skip the tile-size sweep and the jit comparison")
    ap.add_argument("--checkpoint", default=None, help="also check int8 fidelity on this trained remover")
    return ap


def main() -> None:
    ap = _parser()
    if sys.argv[1:2] == ["--child"]:  # one measurement, in its own process
        print(json.dumps(_child(sys.argv[2:])))
        return
    a = ap.parse_args()

    t0 = time.time()
    load_start = os.getloadavg()
    th = ["--threads", str(a.threads)]
    runs: dict[str, dict] = {}

    def measure(name: str, *args: str) -> dict:
        print(f"[infer bench] {name} …", file=sys.stderr, flush=True)
        runs[name] = run_child([*args, *th])
        print(f"[infer bench] {name}: {json.dumps(runs[name])}", file=sys.stderr, flush=True)
        return runs[name]

    n = str(a.images)
    measure("naive_1024x768", "naive", "--w", "1024", "--h", "768", "--n", n)
    measure("engine_1024x768", "seam", "--w", "1024", "--h", "768", "--n", n)
    measure("engine_fused_1024x768", "engine", "--w", "1024", "--h", "768", "--n", n, "--backend", "fused")
    measure("engine_int8_1024x768", "engine", "--w", "1024", "--h", "768", "--n", n, "--backend", "int8")
    measure("fidelity", "fidelity", *(["--checkpoint", a.checkpoint] if a.checkpoint else []))
    measure("engine_eager_1024x768", "engine", "--w", "1024", "--h", "768", "--n", n, "--backend", "eager")
    measure("engine_eager_tile320_1024x768", "engine", "--w", "1024", "--h", "768", "--n", n, "--backend", "eager",
            "--tile", "320")
    if not a.no_sweep:
        for t in (320, 768, 1024):
            measure(f"engine_tile{t}_1024x768", "engine", "--w", "1024", "--h", "768", "--n", n, "--tile", str(t))
        measure("jit_tile", "jit", "--w", "368", "--h", "400", "--n", "3")
    measure("engine_bf16_1024x768", "engine", "--w", "1024", "--h", "768", "--n", "1", "--precision", "bf16")
    if not a.no_compile:
        measure("engine_compiled_1024x768", "engine", "--w", "1024", "--h", "768", "--n", n, "--compile")
    measure("naive_2048x1536", "naive", "--w", "2048", "--h", "1536", "--n", "1")
    measure("engine_4000x3000", "engine", "--w", "4000", "--h", "3000", "--n", "1")
    measure("engine_fused_4000x3000", "engine", "--w", "4000", "--h", "3000", "--n", "1", "--backend", "fused")
    if a.naive_large:
        measure("naive_4000x3000", "naive", "--w", "4000", "--h", "3000", "--n", "1")
    if a.gpu:
        measure("gpu", "gpu", "--n", "16")

    result = _summary(runs, a, t0, load_start)
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    if a.no_record:
        return
    out = ROOT / "bench" / "results" / "infer.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    _append_results(result, " ".join(["python bench/infer.py", *sys.argv[1:]]))


def _f(v, d=3) -> str:
    return "—" if v is None else f"{v:.{d}f}"


def _append_results(r: dict, cmd: str) -> None:
    m = r["machine"]
    e = r["engine"]
    lines = [
        f"\n## infer — {r['date']}\n",
        f"Command: `{cmd}` · machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, native bf16: "
        f"{m['native_bf16']}, CUDA: {m['cuda']} · {r['threads']} torch thread(s) per measurement · load average "
        f"{m['load_avg_start'][0]:.1f} at start, {m['load_avg_end'][0]:.1f} at end (other engineers' jobs share "
        "the 2 cores, so absolute times are inflated; both sides ran in the same run). Seed-size U-Net, "
        f"untrained. Engine: backend {e.get('backend')}, tile {e['tile']} ({e.get('tiles')} tiles of {e.get('tile_shape')} at "
        f"1024×768, {_f(e.get('tile_pixels_per_pixel'), 2)} network pixels per image pixel), overlap {e['overlap']}, "
        f"batch {e['batch_size']}, {e['precision']}.\n",
        "Rates are images per CPU-second of the measuring process (one torch thread), which the other "
        "load does not change; wall-clock rates in parentheses.\n",
        "| | naive fp32 full image | engine |",
        "| --- | --- | --- |",
        f"| images/s, 1024×768 | {_f(r['naive_img_per_s_1024x768'])} ({_f(r['naive_img_per_s_wall_1024x768'])}) "
        f"| {_f(r['engine_img_per_s_1024x768'])} ({_f(r['engine_img_per_s_wall_1024x768'])}); "
        f"ratio {_f(r['ratio'], 2)}× |",
        f"| images/s, 4000×3000 | {_f(r['naive_img_per_s_4000x3000'])} | {_f(r['engine_img_per_s_4000x3000'])} |",
        f"| peak RSS MB, 1024×768 | {_f(r['naive_peak_rss_mb_1024x768'], 0)} | {_f(r['peak_rss_mb_1024x768'], 0)} |",
        f"| peak RSS MB, 2048×1536 | {_f(r['naive_peak_rss_mb_2048x1536'], 0)} | |",
        f"| peak RSS MB, 4000×3000 | {_f(r['naive_peak_rss_mb_4000x3000'], 0)}"
        f"{' (estimated ' + _f(r['naive_peak_rss_mb_4000x3000_estimated'], 0) + ', linear in pixels)' if r['naive_peak_rss_mb_4000x3000'] is None else ''}"
        f" | {_f(r['peak_rss_mb_4000x3000'], 0)} |",
        "",
        f"Engine with `torch.compile` (fixed {e['tile']}² tiles, `UNMARK_CLEAN_COMPILE=1`) at 1024×768: "
        f"{_f(r['engine_compiled_img_per_s_1024x768'])} images/s (ratio {_f(r['ratio_compiled'], 2)}× over naive), "
        f"after a compilation of {_f(r['compile_wall_s'], 0)} s wall. "
        f"Engine forced to bf16 at 1024×768: {_f(r['engine_bf16_img_per_s_1024x768'])} images/s. Seams: tiled vs "
        f"whole-image output at 1024×768 differ by at most {r['seam_max_abs']} and on average "
        f"{_f(r['seam_mean_abs'], 3)} levels (0–255).",
        "",
        f"Same run, 1024×768: the plain (eager, channels-last) model at the same tiles "
        f"{_f(r.get('engine_eager_img_per_s_1024x768'))} images/s (ratio {_f(r.get('ratio_eager'), 2)}×); the previous "
        f"default (eager, 320 tiles) {_f(r.get('engine_eager_tile320_img_per_s_1024x768'))} images/s "
        f"(ratio {_f(r.get('ratio_previous_default'), 2)}×).",
    ]
    lines.append(
        f"Backends forced, same run: fused {_f(r.get('engine_fused_img_per_s_1024x768'))} images/s at 1024×768 "
        f"(ratio {_f(r.get('ratio_fused'), 2)}×), {_f(r.get('engine_fused_img_per_s_4000x3000'))} at 4000×3000 "
        f"(peak RSS {_f(r.get('peak_rss_mb_fused_4000x3000'), 0)} MB); int8 "
        f"{_f(r.get('engine_int8_img_per_s_1024x768'))} images/s at 1024×768 (ratio {_f(r.get('ratio_int8'), 2)}×), "
        f"after {_f(r.get('int8_setup_cpu_s'), 1)} CPU s of calibration and probes once per process.")
    fid = r.get("fidelity") or {}
    for label, v in fid.items():
        if isinstance(v, dict) and "photos" in v:
            lines.append(f"int8 fidelity, {'bench network' if label == 'bench' else label} "
                         f"(base {v['config'].get('base')}, harden_mask {v['harden_mask']}): " + "; ".join(
                             f"{n} {p['int8_vs_fp32_db']:.1f} dB from fp32, vs clean: input {p['input_vs_clean_db']:.3f} "
                             f"fp32 {p['fp32_vs_clean_db']:.3f} int8 {p['int8_vs_clean_db']:.3f} dB"
                             for n, p in v["photos"].items()) + ".")
    sweep = r.get("tile_sweep_img_per_s_1024x768") or {}
    if sweep:
        lines.append(f"Engine (backend {e.get('backend')}) by tile size at 1024×768: " + "; ".join(
            f"tile {t}: {_f(v['img_per_s'])} images/s ({v['tiles']} tiles, {_f(v['tile_pixels_per_pixel'], 2)} px/px)"
            for t, v in sorted(sweep.items(), key=lambda kv: int(kv[0]))) + ".")
    j = r.get("jit") or {}
    if j and "error" not in j:
        names = ("eager_channels_last", "fused", "jit_frozen", "jit_optimized")
        lines.append(f"One {j['size']} tile, CPU s (prepare CPU s, max |Δ| vs plain): " + "; ".join(
            f"{k} {_f(j.get(k + '_s_per_tile'))} ({_f(j.get(k + '_prepare_cpu_s'), 1)}, "
            f"{j.get(k + '_max_abs_diff', 0):.1e})" for k in names) + ".")
    if r.get("gpu"):
        g = r["gpu"]
        lines.append(f"GPU: {json.dumps(g)}")
    with open(ROOT / "bench" / "RESULTS.md", "a") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
