"""CPU cleaning speed of the shipped locate-then-restore remover at 1024×768, per CPU-second.

    python bench/locate_infer.py [--images 6] [--threads 1]

The photos: the offline sample photos at 1024×768 with seeded synthetic marks
(``bench/clean_files.make_folder``). Three ways to run ``model/weights/remover.pt`` on them, in this
process, one torch thread by default (``time.process_time``, so other load on the machine does
not count):

- ``naive``: one fp32 forward of the whole padded image with the restorer run everywhere
  (``restore_everywhere``), the plain network: the reference of #22's target (the engine at
  least 3× it per CPU-second);
- ``eager``: ``model.remover.infer.Cleaner`` (hardened mask, as the clean step runs it) with the
  plain network: the restorer runs only on the box around what the localiser marked;
- ``fused``: the same with the fused backend (``LocateRestore.fused_copy``: both trunks with
  BatchNorm folded and activations inside the convolutions), what ``auto`` picks on a CPU.

Figures: CPU s per image of each, ``fused_vs_eager`` and ``fused_vs_naive`` (speed-ups), and the
largest difference between the fused and the eager outputs (uint8 levels).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import write_results
from clean_files import make_folder
from PIL import Image

from model.remover.infer import Cleaner
from model.remover.network import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def cpu_per_image(fn, images: list[np.ndarray]) -> tuple[float, list]:
    fn(images[:1])  # warm-up (and the fused copy's probe)
    t = time.process_time()
    out = [fn([im])[0] for im in images]
    return (time.process_time() - t) / len(images), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        images = [np.asarray(Image.open(p).convert("RGB")) for p in make_folder(Path(tmp), args.images, (1024, 768))]
    model, _ = load_checkpoint(ROOT / "model" / "weights" / "remover.pt")
    model = model.float().eval()

    def naive(batch):
        x = torch.from_numpy(batch[0]).permute(2, 0, 1)[None].float() / 255
        h, w = x.shape[2:]
        m = model.size_multiple
        x = torch.nn.functional.pad(x, (0, -w % m, 0, -h % m), mode="reflect")
        model.restore_everywhere = True
        try:
            with torch.inference_mode():
                return [model(x)["image"]]
        finally:
            model.restore_everywhere = False

    figures: dict = {"images": args.images, "side": "1024x768", "threads": args.threads}
    outputs = {}
    figures["naive_cpu_s_per_image"], _ = cpu_per_image(naive, images)
    for backend in ("eager", "fused"):
        cleaner = Cleaner(model, device="cpu", harden_mask=True, precision="fp32", backend=backend)
        assert cleaner.backend == backend, cleaner.backend
        figures[f"{backend}_cpu_s_per_image"], outputs[backend] = cpu_per_image(cleaner.clean, images)
    figures = {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}
    figures["fused_vs_eager"] = round(figures["eager_cpu_s_per_image"] / figures["fused_cpu_s_per_image"], 2)
    figures["fused_vs_naive"] = round(figures["naive_cpu_s_per_image"] / figures["fused_cpu_s_per_image"], 2)
    figures["max_level_difference"] = int(max(np.abs(a.image.astype(int) - b.image.astype(int)).max()
                                              for a, b in zip(outputs["eager"], outputs["fused"], strict=True)))
    body = f"""The shipped remover (`model/weights/remover.pt`) on {args.images} marked photos at 1024×768,
{args.threads} torch thread(s), CPU seconds per image (`time.process_time`):

| run | CPU s / image | speed-up |
| --- | --- | --- |
| naive: whole image, restorer everywhere, fp32 | {figures['naive_cpu_s_per_image']} | 1 |
| engine, eager network (restores the marked box) | {figures['eager_cpu_s_per_image']} | {round(figures['naive_cpu_s_per_image'] / figures['eager_cpu_s_per_image'], 2)} |
| engine, fused backend (`auto` on a CPU) | {figures['fused_cpu_s_per_image']} | {figures['fused_vs_naive']} |

Fused over eager: **{figures['fused_vs_eager']}×**; fused over naive: **{figures['fused_vs_naive']}×**
(target ≥ 3); outputs differ by at most {figures['max_level_difference']} level(s)."""
    print(body)
    write_results("locate_infer", figures, body)


if __name__ == "__main__":
    main()
