"""Training-step benchmark: step time and loss-term breakdown per profile, and the perceptual term
before/after its speed-up.

    python bench/train.py [--threads 1] [--steps 2] [--profiles seed,quick-cpu,tiny]

What it measures, all on the CPU, median of `--steps` interleaved rounds after one warm-up:
- per profile (`model.remover.train.PROFILES`), at the profile's crop and batch, with its network and
  loss: one full training step (forward, loss, backward, AdamW step) in channels-last float32
  and under bf16 autocast; the network alone (forward + backward of a mean); each loss term
  alone (forward + backward). A profile asking for ImageNet VGG weights is timed with seeded
  random ones (same layers, same cost) when the file is not in the torch cache.
- `step_s_128x8_full`: the seed network (base 32, depth 4) with the full five-term seed loss at
  128 px × 8, channels-last, with bf16 autocast only where the CPU runs bf16 natively
  (`model.device.native_bf16`).
- the perceptual term (forward + backward) at 256 px × 8: `PerceptualLoss.naive` (one fp32 NCHW
  pass over cat([pred, target]), a graph for both halves) against `PerceptualLoss.forward` (target
  under no_grad, channels-last, bf16 where native), and the two values side by side.

Inputs are random tensors (timing does not depend on content). Other processes on the machine
inflate times; the load average is recorded with the results.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from _common import write_results

from model.device import native_bf16
from model.remover.losses import TERMS, PerceptualLoss, RemovalLoss, vgg16_weights_path
from model.remover.network import UNet, count_parameters
from model.remover.train import PROFILES


def compare(fns: dict, steps: int) -> dict[str, float]:
    """Median seconds of each function: one warm-up each, then `steps` rounds that run every
    function once in turn, so a change in the machine's load hits all of them alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(steps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def batch(b: int, size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(b, 3, size, size, generator=g)
    mask = torch.zeros(b, 1, size, size)
    mask[:, :, size // 4 : size // 2, size // 8 : -size // 8] = 1
    x = (target * (1 - 0.5 * mask) + 0.5 * mask).contiguous(memory_format=torch.channels_last)
    return x, target, mask


def vgg_for(choice: str) -> tuple[str, str]:
    """The VGG weights to time with, and a note when they differ from the profile's."""
    if choice == "imagenet" and not vgg16_weights_path().is_file():
        return "random", "imagenet weights absent: timed with random VGG weights (same layers, same cost)"
    return choice, ""


def step_fn(model, loss_fn, opt, x, target, mask, bf16: bool):
    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        total, _ = loss_fn(out["image"].float(), target, mask, out.get("mask_logits"))
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
    return step


def bench_profile(name: str, steps: int) -> dict:
    cfg = PROFILES[name]
    vgg, note = vgg_for(cfg.perceptual)
    weights = {k: cfg.loss.get(k, 0.0) for k in TERMS}
    model = UNet(base=cfg.base, depth=cfg.depth, mask_head=cfg.mask_head, mask_guided=cfg.mask_guided)
    model = model.train().to(memory_format=torch.channels_last)
    loss_fn = RemovalLoss(**weights, vgg=vgg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=cfg.weight_decay)
    x, target, mask = batch(cfg.batch_size, cfg.size)
    res = {"size": cfg.size, "batch": cfg.batch_size, "params": count_parameters(model), "cpu_bf16": cfg.cpu_bf16,
           "loss": {k: v for k, v in weights.items() if v}, "vgg": vgg, "note": note}

    def network():
        out = model(x)
        (out["image"].float().mean() + out.get("mask_logits", torch.zeros(())).float().mean()).backward()

    pred = target.clone().requires_grad_(True)
    logits = torch.zeros_like(mask).requires_grad_(True)
    terms = {}
    for term in [t for t in TERMS if weights[t]]:
        only = RemovalLoss(**{t: float(t == term) for t in TERMS}, vgg=vgg if term == "perceptual" else "off")

        def one(only=only):
            total, _ = only(pred, target, mask, logits)
            total.backward()
        terms[term] = one
    t = compare({"step_s_fp32": step_fn(model, loss_fn, opt, x, target, mask, bf16=False),
                 "step_s_bf16": step_fn(model, loss_fn, opt, x, target, mask, bf16=True),
                 "network_s_fp32": network, **{f"term:{k}": f for k, f in terms.items()}}, steps)
    res.update({k: v for k, v in t.items() if not k.startswith("term:")})
    res["step_s"] = res["step_s_bf16"] if cfg.cpu_bf16 else res["step_s_fp32"]
    res["terms_s"] = {k[5:]: v for k, v in t.items() if k.startswith("term:")}
    res["terms_total_s"] = sum(res["terms_s"].values())
    return res


def bench_full_128x8(steps: int) -> dict:
    vgg, note = vgg_for("imagenet")
    model = UNet().train().to(memory_format=torch.channels_last)
    loss_fn = RemovalLoss(vgg=vgg, mask_bce=0, mask_dice=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-5)
    x, target, mask = batch(8, 128)
    auto = native_bf16("cpu")
    out = {"native_bf16": auto, "vgg": vgg, "note": note}
    out.update(compare({"step_s_fp32": step_fn(model, loss_fn, opt, x, target, mask, bf16=False),
                        "step_s_bf16": step_fn(model, loss_fn, opt, x, target, mask, bf16=True)}, steps))
    out["step_s"] = out["step_s_bf16"] if auto else out["step_s_fp32"]
    return out


def bench_perceptual(steps: int, size: int = 256, b: int = 8) -> dict:
    vgg, note = vgg_for("imagenet")
    pl = PerceptualLoss(vgg)  # the same seeded / ImageNet weights in both instances
    pl_nchw = PerceptualLoss(vgg, channels_last=False, bf16=False)
    unfrozen = PerceptualLoss(vgg, channels_last=False)
    unfrozen.features.requires_grad_(True)  # as if the net were not frozen: weight gradients too
    _, target, _ = batch(b, size)
    pred0 = (target + 0.05 * torch.randn_like(target)).clamp(0, 1)
    values, grads = {}, {}

    def run(name, f, bf16=None):
        def go():
            pl.bf16 = bf16
            p = pred0.clone().requires_grad_(True)
            v = f(p, target)
            v.backward()
            values[name], grads[name] = float(v.detach()), p.grad
        return go

    res = {"size": size, "batch": b, "vgg": vgg, "note": note, "native_bf16": native_bf16("cpu")}
    res.update(compare({"naive_s": run("naive", pl.naive),
                        "naive_unfrozen_s": run("unfrozen", unfrozen.naive),
                        "fast_nchw_fp32_s": run("fast_nchw_fp32", pl_nchw),
                        "fast_fp32_s": run("fast_fp32", pl, bf16=False),
                        "fast_bf16_s": run("fast_bf16", pl, bf16=True)}, steps))
    pl.bf16 = None
    res["fast_auto_s"] = res["fast_bf16_s"] if res["native_bf16"] else res["fast_fp32_s"]
    res["values"] = values
    for k in ("fast_nchw_fp32", "fast_fp32", "fast_bf16"):
        res[f"{k}_rel_diff"] = abs(values[k] - values["naive"]) / abs(values["naive"])
        res[f"{k}_grad_cos"] = float(torch.nn.functional.cosine_similarity(
            grads[k].double().flatten(), grads["naive"].double().flatten(), dim=0))
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps a shared machine's noise down)")
    ap.add_argument("--steps", type=int, default=3, help="timed rounds per measurement (after 1 warm-up)")
    ap.add_argument("--profiles", default=",".join(PROFILES))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    load0 = os.getloadavg()[0]

    perc = bench_perceptual(args.steps)
    print(f"perceptual 256x8: naive {perc['naive_s']:.2f} s, fast {perc['fast_auto_s']:.2f} s", flush=True)
    full = bench_full_128x8(args.steps)
    print(f"full step 128x8: {full['step_s']:.2f} s (fp32 {full['step_s_fp32']:.2f}, bf16 {full['step_s_bf16']:.2f})",
          flush=True)
    profiles = {}
    for name in args.profiles.split(","):
        profiles[name] = bench_profile(name, args.steps)
        p = profiles[name]
        print(f"{name} {p['size']}x{p['batch']}: step fp32 {p['step_s_fp32']:.2f} s, bf16 {p['step_s_bf16']:.2f} s, "
              f"terms {p['terms_s']}", flush=True)

    figures = {
        "step_s_128x8_full": full["step_s"],
        "perceptual_before_s": perc["naive_s"],
        "perceptual_after_s": perc["fast_auto_s"],
        "threads": args.threads, "steps": args.steps, "native_bf16": native_bf16("cpu"),
        "load_avg_start": load0, "load_avg_end": os.getloadavg()[0], "wall_s": round(time.time() - t0, 1),
        "full_128x8": full, "perceptual": perc, "profiles": profiles,
    }
    v = perc["values"]
    rows = [f"| {name} | {p['size']}×{p['batch']} | {p['params']:,} | {p['step_s_fp32']:.2f} | {p['step_s_bf16']:.2f} | "
            f"{'bf16' if p['cpu_bf16'] else 'fp32'} | {p['network_s_fp32']:.2f} | "
            + ", ".join(f"{k} {s:.3f}" for k, s in p["terms_s"].items()) + " |"
            for name, p in profiles.items()]
    notes = sorted({n for n in [full["note"], perc["note"], *(p["note"] for p in profiles.values())] if n})
    body = f"""
Threads: {args.threads}; median of {args.steps} interleaved timed rounds after one warm-up; native bf16 on this CPU:
{native_bf16('cpu')}; load average {load0:.2f} at start, {figures['load_avg_end']:.2f} at end (other engineers'
jobs share the 2 cores, so absolute times are inflated; ratios within the run are comparable). {' '.join(notes)}

| measurement | seconds |
|---|---|
| full train step, seed net (3.54 M) + seed 5-term loss, 128×8, channels-last, auto precision (`step_s_128x8_full`) | {full['step_s']:.2f} |
| same step, float32 / bf16 autocast | {full['step_s_fp32']:.2f} / {full['step_s_bf16']:.2f} |
| perceptual term fwd+bwd, 256×8, naive: one fp32 NCHW pass over cat(pred, target) (`perceptual_before_s`) | {perc['naive_s']:.2f} |
| naive with unfrozen VGG weights (weight gradients too) | {perc['naive_unfrozen_s']:.2f} |
| fast: target under no_grad (no graph, no backward through it), NCHW, fp32 | {perc['fast_nchw_fp32_s']:.2f} |
| fast: the same, channels-last | {perc['fast_fp32_s']:.2f} |
| fast, bf16 autocast | {perc['fast_bf16_s']:.2f} |
| fast as chosen on this CPU (`perceptual_after_s`) | {perc['fast_auto_s']:.2f} |

Perceptual value: naive {v['naive']:.6f}, fast fp32 {v['fast_fp32']:.6f} (rel. diff {perc['fast_fp32_rel_diff']:.1e},
gradient cosine {perc['fast_fp32_grad_cos']:.6f}), fast bf16 {v['fast_bf16']:.6f} (rel. diff
{perc['fast_bf16_rel_diff']:.1e}, gradient cosine {perc['fast_bf16_grad_cos']:.4f}).

Per profile (`model.remover.train.PROFILES`, at each profile's crop × batch; step = forward, loss, backward, AdamW):

| profile | crop×batch | params | step fp32 (s) | step bf16 (s) | profile uses | network fwd+bwd fp32 (s) | loss terms fwd+bwd (s) |
|---|---|---|---|---|---|---|---|
""" + "\n".join(rows)
    write_results("train", figures, body)
    print(f"wrote bench/results/train.json in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
