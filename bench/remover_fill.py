"""Where the mark is opaque, should the restorer start from the input or from OpenCV's Telea fill?
The shipped locate-then-restore weights scored both ways, on the pretraining's own synthetic test
split (held-out photos, held-out icon identities) and on a subset of the SWCNN protocol.

    python bench/remover_fill.py [--weights model/weights/remover.pt] [--swcnn-logos 1,4,7,10] [--set BEST]

``--set telea|none`` then writes that choice into the weights' network config (the file is
rewritten in place, fp16 as it was), so ``unmark init`` registers the remover that won.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch
from _common import write_results

from model.remover.evaluate import swcnn_protocol
from model.remover.locate import FILLS
from model.remover.network import load_checkpoint, save_checkpoint
from model.remover.train import fixed_test_set, profile_config, score_on_test
from model.synth.renderer import WatermarkRenderer

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"
SWCNN = ROOT.parent / "shared" / "benchmarks" / "swcnn"


def _find(folder: str, file: str) -> Path:
    hits = list((CORPUS / folder).rglob(file))
    return hits[0] if hits else CORPUS / folder / file


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", type=Path, default=ROOT / "model" / "weights" / "remover.pt")
    ap.add_argument("--swcnn-logos", default="1,4,7,10")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, help="score only the first N test samples (a quick look)")
    ap.add_argument("--set", choices=FILLS, help="write this fill into the weights' config afterwards")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, extra = load_checkpoint(args.weights)
    model.float()
    cfg_json = json.loads(extra["train_config"])
    config = profile_config(cfg_json["profile"])
    with open(args.weights.parent / "remover-manifest.tsv") as fh:
        paths = [_find(r["folder"], r["file"]) for r in csv.DictReader(fh, delimiter="\t") if r["split"] == "test"]
    held_out = WatermarkRenderer(seed=config.seed + 1, icon_logos=512, icon_split="val")
    data = fixed_test_set(paths, config, held_out)
    if args.limit:
        data = [data[i] for i in range(min(args.limit, len(data)))]
    logos = tempfile.mkdtemp(prefix="swcnn-logos-")
    for k in args.swcnn_logos.split(","):
        os.symlink(SWCNN / "logos" / f"{k}.png", Path(logos) / f"{k}.png")
    rows = {}
    for fill in FILLS:
        model.config.pop("fill", None)
        if fill != "none":
            model.config["fill"] = fill
        test = score_on_test(model, data, config)
        sw = swcnn_protocol(model, SWCNN / "images", logos, harden_mask=True, score_ssim=False) if SWCNN.exists() else None
        rows[fill] = {"test": test, "swcnn": sw}
        print(fill, {k: round(v["psnr"], 2) for k, v in test.items() if isinstance(v, dict) and "psnr" in v},
              test.get("mask"), sw and {a: round(r["psnr"], 2) for a, r in sw["alpha"].items()})
    lines = []
    for fill, r in rows.items():
        t, sw = r["test"], r["swcnn"]
        alphas = " / ".join(f"{v['psnr']:.2f}" for v in sw["alpha"].values()) if sw else "–"
        lines.append(f"| {fill} | {t['model']['psnr']:.2f} | {t['model']['masked_psnr']:.2f} | "
                     f"{t['oracle_restore']['psnr']:.2f} | {t['mask_telea']['psnr']:.2f} | {alphas} |")
    t0, sw0 = rows["none"]["test"], rows["none"]["swcnn"]
    inputs = " / ".join(f"{v['input_psnr']:.2f}" for v in sw0["alpha"].values()) if sw0 else "–"
    body = (f"`{args.weights.name}` ({cfg_json['profile']}), synthetic test split of its manifest ({t0['n']} "
            f"samples, held-out icon identities) and SWCNN logos {args.swcnn_logos} (27 images each, α 0.3 / 0.5 / "
            f"0.7 / 1.0).\n\n| fill | test PSNR | inside mask | oracle: true mask + our restore | "
            "our mask + Telea | SWCNN PSNR by α |\n|---|---|---|---|---|---|\n" + "\n".join(lines)
            + f"\n| (input) | {t0['input']['psnr']:.2f} | {t0['input']['masked_psnr']:.2f} | | | {inputs} |\n"
            f"| (Telea, true mask) | {t0['inpaint']['psnr']:.2f} | {t0['inpaint']['masked_psnr']:.2f} | | | |\n\n"
            f"Mask on the test split: IoU {t0['mask']['iou']:.3f}, F1 {t0['mask']['f1']:.3f}.\n")
    write_results("remover_fill", {k: {"test": v["test"], "swcnn": v["swcnn"] and v["swcnn"]["alpha"]}
                                   for k, v in rows.items()}, body)
    if args.set:
        saved, extra = load_checkpoint(args.weights)
        saved.config.pop("fill", None)
        if args.set != "none":
            saved.config["fill"] = args.set
        save_checkpoint(saved, args.weights, **extra)
        card = args.weights.with_suffix(".md")
        if card.exists():
            with open(card, "a") as fh:
                fh.write(f"\n## Inference choice\nOpaque marks start from `fill={args.set}` (set by "
                         f"`python bench/remover_fill.py --set {args.set}`, measured in `bench/RESULTS.md` "
                         "\"remover_fill\").\n")
        print(f"{args.weights}: fill={args.set}")


if __name__ == "__main__":
    main()
