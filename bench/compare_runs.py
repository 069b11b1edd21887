"""Recipes compared by their validation curves at equal training time: the ``history.json`` of two
or more run folders (``model.remover.train`` writes one per run), side by side at the same epochs.

    python bench/compare_runs.py NAME=RUN_DIR NAME=RUN_DIR ... [--every 2] [--record NAME]

Runs of one profile share their validation samples (the same seeds and held-out marks), so their
curves compare directly. Each row is an epoch (100 steps in the CPU profiles); the last column
pair is the cumulative training minutes, so a reader can check the time was equal.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import write_results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", help="NAME=RUN_DIR")
    ap.add_argument("--every", type=int, default=1, help="show every Nth epoch")
    ap.add_argument("--record", help="record the table under bench/results/<this name>.json")
    ap.add_argument("--note", default="", help="a sentence on what the recipes differ in")
    args = ap.parse_args()
    runs = {}
    for spec in args.runs:
        name, _, folder = spec.partition("=")
        runs[name] = json.loads((Path(folder) / "history.json").read_text())
    n = min(len(h) for h in runs.values())
    names = list(runs)
    head = "| epoch | " + " | ".join(f"{k} val PSNR" for k in names) + " | input | " + \
        " | ".join(f"{k} min" for k in names) + " |"
    rows = []
    for i in range(0, n, args.every):
        r = [runs[k][i] for k in names]
        rows.append(f"| {r[0]['epoch']} | " + " | ".join(f"{x['val_psnr']:.2f}" for x in r)
                    + f" | {r[0]['val_input_psnr']:.2f} | " + " | ".join(f"{x['elapsed_s'] / 60:.1f}" for x in r) + " |")
    means = {k: sum(x["val_psnr"] for x in runs[k][:n]) / n for k in names}
    last3 = {k: sum(x["val_psnr"] for x in runs[k][max(0, n - 3):n]) / min(3, n) for k in names}
    table = head + "\n|" + "---|" * (2 + 2 * len(names)) + "\n" + "\n".join(rows)
    body = (f"{args.note}\n\n{table}\n\nOver the first {n} epochs: mean val PSNR "
            + ", ".join(f"{k} {v:.2f}" for k, v in means.items()) + "; mean of the last three shared epochs "
            + ", ".join(f"{k} {v:.2f}" for k, v in last3.items()) + ".\n")
    print(body)
    if args.record:
        write_results(args.record, {"epochs": n, "mean_val_psnr": means, "last3_val_psnr": last3,
                                    "runs": {k: [dict(epoch=x["epoch"], val_psnr=x["val_psnr"],
                                                      elapsed_s=x["elapsed_s"]) for x in h[:n]]
                                             for k, h in runs.items()}}, body)


if __name__ == "__main__":
    main()
