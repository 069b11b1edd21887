"""The CUDA checks, in one short script for a lent GPU: the CUDA test, training-step times,
batched inference throughput, and two remover runs whose checkpoints come back for scoring.

    python bench/gpu.py --out DIR [--corpus PATH] [--minutes M] [--workers N]
    python bench/gpu.py --out /tmp/g --dry          # the same sections, tiny, on the CPU

Sections (each in its own ``try``, its figures written to ``DIR/gpu.json`` as soon as it ends, so a
run stopped by a time limit still returns what it measured):

- ``env``: torch, CUDA, cuDNN, the device.
- ``test``: ``tests/model/test_network.py::test_amp_on_cuda`` under pytest.
- ``steps``: one full training step (forward, loss, backward, AdamW) of the seed network (base 32,
  depth 4) at 256 px × 8 and × 32 with the seed's five-term loss (VGG16 layers with seeded random
  weights when the ImageNet file is absent: the same cost), in fp32, fp16 autocast + grad scaler
  (what ``model.remover.train`` does on CUDA) and bf16 autocast; channels-last. Median of 20 after 5
  warm-ups, synchronised.
- ``infer``: ``model.remover.infer.Cleaner`` on the seed network: images/s at 2048×2048 and 4000×3000 per
  precision (fp32, fp16, bf16) and batch (1, 8, 16, 32 tiles of 512 px, overlap 64), peak GPU memory;
  timed on a second pass over the same images (the first sees every batch shape), with cuDNN's
  benchmark mode off (as the clean step runs) and then on (``infer_cudnn_benchmark``). ``steps``
  runs with it on.
- ``train``: two runs of ``model.remover.train.train`` side by side on the GPU, on the voc150 split that
  ``bench/quality.py`` uses: ``seed`` (the notebook's recipe: 25 epochs, batch 8, 256 px;
  ``perceptual=random``, the ImageNet weights being absent there) and ``gpu`` (the ``quick-cpu``
  design at the seed's width: mask head, hardened mask, marks on a 2× canvas, 256 px crops,
  batch 16, wall-time schedule of ``--minutes``). Each run's ``best.pt`` comes back as
  ``DIR/<run>-best.pt``; score it on the SWCNN protocol on the CPU here (``bench/quality.py``'s
  ``--score`` does that).

Nothing here is a test: CI has no GPU. The figures go to ``bench/RESULTS.md`` by hand, with the
device named.

On this workplace's lent machines (Python 3.12, torch, torchvision, OpenCV, scikit-image, no
network) the model package also needs kornia, kornia_rs, albumentations, albucore, pydantic,
pydantic_core, annotated_types, typing_inspection, simsimd, stringzilla and typing_extensions:
carried as cp312 manylinux wheels (~14 MB) and installed with ``pip install --no-index --no-deps
--target``; the watermark fonts were copied into ``/usr/share/fonts`` there and voc150 travelled
through a link named in ``carry``. One call with every section took 6.7 minutes on an H100.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402
from _common import corpus_split  # noqa: E402

RESULTS: dict = {}


def save(out: Path) -> None:
    (out / "gpu.json").write_text(json.dumps(RESULTS, indent=2, default=str))


def section(name: str, out: Path, fn, *args) -> None:
    t0 = time.perf_counter()
    print(f"== {name}", flush=True)
    try:
        RESULTS[name] = fn(*args)
    except Exception as exc:  # noqa: BLE001 - one broken section must not cost the others
        RESULTS[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
    RESULTS[name + "_seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(RESULTS[name], default=str)[:1500], flush=True)
    save(out)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def env(dev: torch.device) -> dict:
    d = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": str(dev),
         "cudnn": torch.backends.cudnn.version() if dev.type == "cuda" else None}
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        d.update(name=p.name, memory_gib=round(p.total_memory / 2**30, 1), sms=p.multi_processor_count)
    return d


def cuda_test() -> dict:
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--noconftest",
                        "--import-mode=importlib", "tests/model/test_network.py::test_amp_on_cuda"],
                       cwd=ROOT, capture_output=True, text=True, timeout=180)
    return {"returncode": r.returncode, "tail": (r.stdout + r.stderr)[-600:]}


def time_step(model, loss_fn, opt, data, prec: str, dev: torch.device, warm: int, n: int) -> float:
    """Median seconds of one training step in ``prec`` (fp16: autocast + grad scaler, as
    ``model.remover.train`` on CUDA; bf16: autocast; fp32: neither)."""
    x, target, mask = data
    scaler = torch.amp.GradScaler(dev.type, enabled=prec == "fp16")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(prec)

    def step():
        with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(x)
        total, _ = loss_fn(out["image"].float(), target, mask)
        opt.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(warm):
        step()
    sync(dev)
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        step()
        sync(dev)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def steps(dev: torch.device, dry: bool) -> dict:
    from model.remover.losses import RemovalLoss, vgg16_weights_path
    from model.remover.network import UNet, count_parameters

    vgg = "imagenet" if vgg16_weights_path().is_file() else "random"
    size, batches, n, warm = (64, (2,), 2, 1) if dry else (256, (8, 32), 20, 5)
    model = UNet().to(dev).train().to(memory_format=torch.channels_last)
    loss_fn = RemovalLoss(vgg=vgg, mask_bce=0, mask_dice=0).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-5)
    res: dict = {"params": count_parameters(model), "vgg": vgg, "size": size}
    for b in batches:
        g = torch.Generator().manual_seed(0)
        target = torch.rand(b, 3, size, size, generator=g).to(dev)
        mask = torch.zeros(b, 1, size, size, device=dev)
        mask[:, :, size // 4: size // 2, size // 8: -size // 8] = 1
        x = (target * (1 - 0.5 * mask) + 0.5 * mask).contiguous(memory_format=torch.channels_last)
        for prec in ("fp32", "fp16", "bf16"):
            if dev.type != "cuda" and prec == "fp16":
                continue
            t = time_step(model, loss_fn, opt, (x, target, mask), prec, dev, warm, n)
            res[f"step_s_{size}x{b}_{prec}"] = t
            res[f"img_per_s_{size}x{b}_{prec}"] = b / t
        if dev.type == "cuda":
            res[f"peak_gpu_mib_{size}x{b}"] = round(torch.cuda.max_memory_allocated() / 2**20)
            torch.cuda.reset_peak_memory_stats()
    return res


def infer(dev: torch.device, dry: bool, benchmark: bool = False) -> dict:
    import numpy as np

    from model.remover.infer import Cleaner
    from model.remover.network import UNet

    torch.manual_seed(0)
    net = UNet().eval()
    sizes = [(256, 192)] if dry else [(2048, 2048), (4000, 3000)]
    batch_sizes = (1, 4) if dry else (1, 8, 16, 32)
    precisions = ("fp32", "bf16") if dry else ("fp32", "fp16", "bf16")
    rng = np.random.default_rng(0)
    torch.backends.cudnn.benchmark = benchmark  # the clean step leaves it off
    res: dict = {"tile": 512, "overlap": 64, "cudnn_benchmark": benchmark}
    for w, h in sizes:
        n = 2 if dry else (8 if w * h <= 2048 * 2048 else 4)
        imgs = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]
        for prec in precisions:
            for b in batch_sizes:
                cleaner = Cleaner(net, device=dev, tile=512, overlap=64, batch_size=b, precision=prec,
                                  backend="eager")
                cleaner.clean(imgs)  # warm-up on the same tiles: every batch shape seen (autotune, allocator)
                sync(dev)
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                t = time.perf_counter()
                cleaner.clean(imgs)
                sync(dev)
                wall = time.perf_counter() - t
                key = f"{w}x{h}_{prec}_b{b}"
                res[f"img_per_s_{key}"] = round(n / wall, 3)
                if dev.type == "cuda":
                    res[f"peak_gpu_mib_{key}"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return res


RUNS = {
    # the notebook's recipe as it stands (the ImageNet VGG file is absent on the lent machine)
    "seed": dict(perceptual="random", perceptual_reason="ImageNet VGG weights absent on the GPU machine: "
                 "seeded random VGG16 features, recorded"),
    # quick-cpu's design at the seed's width, 256 px crops, a wall-time schedule
    "gpu": dict(base=32, size=256, batch_size=16, steps_per_epoch=200, val_limit=64),
}


def one_run(name: str, corpus: str, out: str, minutes: float, workers: int, dry: bool) -> None:
    """Child process: train run ``name`` and copy its best checkpoint and history to ``out``."""
    from model.remover.train import profile_config, train

    try:  # a small /dev/shm (containers, VMs) breaks the loader's workers: pass batches through files
        if shutil.disk_usage("/dev/shm").free < 2**30:
            torch.multiprocessing.set_sharing_strategy("file_system")
    except OSError:
        torch.multiprocessing.set_sharing_strategy("file_system")
    tr, va, te = corpus_split(Path(corpus))
    if name == "seed":
        cfg = profile_config("tiny" if dry else "seed", num_workers=workers, **({} if dry else RUNS["seed"]))
    else:
        over = dict(RUNS["gpu"], max_minutes=minutes, num_workers=workers)
        if dry:
            over.update(base=8, size=64, batch_size=2, steps_per_epoch=2, val_limit=2, eval_size=64)
        cfg = profile_config("quick-cpu", **over)
    run = Path(out) / "runs" / name
    summary = train(tr, va, te, cfg, run, resume=False, log=lambda m: print(f"[{name}] {m}", flush=True))
    shutil.copy(run / "best.pt", Path(out) / f"{name}-best.pt")
    hist = json.loads((run / "history.json").read_text())
    (Path(out) / f"{name}-run.json").write_text(json.dumps(
        {"summary": summary, "config": json.loads((run / "config.json").read_text()), "history": hist}, indent=1))


def train_runs(corpus: Path, out: Path, minutes: float, workers: int, dry: bool) -> dict:
    procs = {}
    for name in RUNS:
        cmd = [sys.executable, __file__, "--child", name, "--corpus", str(corpus), "--out", str(out),
               "--minutes", str(minutes), "--workers", str(workers)] + (["--dry"] if dry else [])
        procs[name] = (subprocess.Popen(cmd, cwd=ROOT), time.perf_counter())
    res = {}
    for name, (p, t0) in procs.items():
        rc = p.wait()
        res[name] = {"returncode": rc, "wall_s": round(time.perf_counter() - t0, 1)}
        run = out / f"{name}-run.json"
        if run.is_file():
            s = json.loads(run.read_text())["summary"]
            res[name].update({k: s.get(k) for k in ("epochs", "steps", "train_minutes", "parameters", "perceptual",
                                                    "test", "best_epoch", "stopped_by")})
    shutil.rmtree(out / "runs", ignore_errors=True)  # only eight files come back
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--corpus", default=str(ROOT.parent / "shared" / "corpus" / "voc150"))
    ap.add_argument("--minutes", type=float, default=4.0, help="wall-time budget of the gpu run")
    ap.add_argument("--workers", type=int, default=6, help="data-loader workers per run")
    ap.add_argument("--sections", default="env,test,steps,infer,infer_cudnn_benchmark,train")
    ap.add_argument("--dry", action="store_true", help="tiny sizes, on the CPU when there is no GPU")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.child:
        one_run(a.child, a.corpus, a.out, a.minutes, a.workers, a.dry)
        return
    from model.device import resolve_device

    dev = resolve_device("auto")
    if dev.type == "cpu" and not a.dry:
        sys.exit("no CUDA device: run with --dry to check the script on the CPU")
    todo = a.sections.split(",")
    if "env" in todo:
        section("env", out, env, dev)
    if "test" in todo:
        section("test", out, cuda_test)
    if "steps" in todo:
        torch.backends.cudnn.benchmark = True
        section("steps", out, steps, dev, a.dry)
    if "infer" in todo:  # as the clean step runs (cuDNN benchmark off)
        section("infer", out, infer, dev, a.dry, False)
    if "infer_cudnn_benchmark" in todo:  # with cuDNN's benchmark mode on
        section("infer_cudnn_benchmark", out, infer, dev, a.dry, True)
    if "train" in todo:
        section("train", out, train_runs, Path(a.corpus), out, a.minutes, a.workers, a.dry)


if __name__ == "__main__":
    main()
