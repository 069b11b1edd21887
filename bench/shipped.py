"""The shipped remover measured as a user gets it: an empty home, ``unmark init`` (which registers
``model/weights/remover.pt``), then ``unmark evaluate --protocol swcnn`` on the SWCNN test set
(never trained on), next to the synthetic test-split figures its model card records.

    python bench/shipped.py [--alphas 0.3,0.5,0.7,1.0] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import BENCH, write_results

ROOT = BENCH.parent
SWCNN = ROOT.parent / "shared" / "benchmarks" / "swcnn"
TARGETS = {"0.3": 34.0, "0.5": 31.0, "0.7": 28.0, "1.0": 24.0}


def _unmark(args: list[str], env: dict) -> str:
    exe = Path(sys.executable).with_name("unmark")
    out = subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, check=True)
    return out.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--alphas", default="0.3,0.5,0.7,1.0")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    home = tempfile.mkdtemp(prefix="unmark-shipped-")
    env = {**os.environ, "UNMARK_HOME": home, "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": str(args.threads)}  # torch's thread count
    _unmark(["init"], env)
    t0 = time.perf_counter()
    result = json.loads(_unmark(["evaluate", "--protocol", "swcnn", "--images", str(SWCNN / "images"), "--logos",
                                 str(SWCNN / "logos"), "--alpha", args.alphas, "--json"], env))
    seconds = time.perf_counter() - t0
    payload = torch.load(ROOT / "model" / "weights" / "remover.pt", weights_only=True)
    card = json.loads(payload["extra"].get("metrics_json", "{}"))
    config = payload["config"]
    rows = result["alpha"]
    table = "\n".join(
        f"| {a} | {r['input_psnr']:.2f} | **{r['psnr']:.2f}** | {r['psnr'] - r['input_psnr']:+.2f} | "
        f"{TARGETS.get(a, float('nan')):.0f} | {r.get('paper_psnr') or float('nan'):.2f} |" for a, r in rows.items())
    synth = (f"Synthetic test split (its model card; held-out photos and marks): {card.get('psnr', float('nan')):.2f} dB "
             f"against the input's {card.get('input_psnr', float('nan')):.2f} and Telea-with-the-true-mask's "
             f"{card.get('inpaint_psnr', float('nan')):.2f}"
             + (f"; the true mask with this restorer {card['oracle_restore_psnr']:.2f}, this mask with Telea "
                f"{card['mask_telea_psnr']:.2f}; mask IoU {card['mask_iou']:.3f}" if "mask_iou" in card else "") + ".")
    body = (f"`model/weights/remover.pt` ({config.get('arch', 'unet')}, {payload['extra'].get('steps', '?')} steps) as "
            f"a user gets it: `UNMARK_HOME=$(mktemp -d) unmark init`, then `unmark evaluate --protocol swcnn` "
            f"({result['images']} images × {result['logos']} logos, {seconds:.0f} s on {args.threads} threads).\n\n"
            "| α | input | shipped model | gain | target | paper (trained on these logos) |\n|---|---|---|---|---|---|\n"
            + table + "\n\n" + synth + "\n")
    print(body)
    write_results("shipped_remover", {"swcnn": rows, "card_metrics": card, "network": config,
                                      "steps": payload["extra"].get("steps"), "seconds": round(seconds, 1)}, body)


if __name__ == "__main__":
    main()
