"""``unmark pretrain remover``: train the remover that ships in ``model/weights/`` on a folder of
clean photos (no catalog), resumable across sessions, and write the fp16 weights and their model
card.

Stages:
1. ``corpus_paths``: the photos under the given folders, minus any listed as carrying a real
   overlay (``KNOWN_OVERLAYS``), sorted.
2. ``model.synth.pairs.split_paths``: train / val / test by each file's SHA-256, so the held-out photos
   never move between runs or sessions.
3. ``model.train.train`` in ``run_dir`` (``UNMARK_HOME/pretrain/remover``): it checkpoints after
   every epoch (100 steps, well under 10 minutes) and, with ``resume``, continues from
   ``last.pt``. A fresh run starts from the shipped weights unless ``from_scratch``.
4. ``export_weights``: the best checkpoint as fp16 (``remover.pt``), the card (``remover.md``) and
   the data manifest (``remover-manifest.tsv``: sha256, folder, file, split).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from model.api import WEIGHTS_DIR
from model.remover import train as trainer
from model.remover.network import load_checkpoint, save_checkpoint
from model.synth.icons import BANK_VERSION
from model.synth.pairs import split_paths
from model.synth.renderer import FAMILIES, WatermarkRenderer
from pipeline import registry

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
# Photos of ../shared/corpus/voc150 that carry a real overlay (its README): never clean targets.
KNOWN_OVERLAYS = frozenset({"000011", "000018", "000076", "000086", "000227", "000248", "000265", "000267",
                            "000319", "000392", "000393"})
MARK_BANK = "model.watermarks v1 (families: " + ", ".join(FAMILIES) + ")"
SPLIT = (0.9, 0.05, 0.05)


def corpus_paths(folders: list[str | Path]) -> list[Path]:
    """Every image file below ``folders`` (sorted, recursive), minus the known real overlays."""
    out: list[Path] = []
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            raise FileNotFoundError(f"no such image folder: {root}")
        out += [p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                and p.stem not in KNOWN_OVERLAYS]
    if not out:
        raise FileNotFoundError(f"no images under {', '.join(map(str, folders))}")
    return sorted(set(out))


def pretrain_remover(folders: list[str | Path], run_dir: str | Path, minutes: float, resume: bool = True,
                     from_scratch: bool = False, out_dir: str | Path = WEIGHTS_DIR, threads: int | None = None,
                     profile: str = "locate-cpu", command: str = "", log=print,
                     icon_logos: int = 512, synth: str = "cpu", batch_size: int | None = None,
                     lr: float | None = None) -> dict:
    """Train (or continue) the shipped remover for ``minutes`` of wall time, then export it.

    ``icon_logos``: logos composed from pictograms (``model.synth.icons``) in each renderer, from the
    train identities for training and from the held-out ones for validation and test (0: none).
    ``synth="device"`` composites the training marks on the training device from a pre-rendered
    bank (``model.synth``: for a lent GPU); ``batch_size`` overrides the profile's, and ``lr`` its peak
    learning rate (a fine-tune from the shipped weights wants a gentler peak than a run from scratch).
    """
    if minutes <= 0:
        raise ValueError(f"minutes must be positive, got {minutes}")
    if lr is not None and not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    log = log or (lambda _m: None)
    if threads:
        torch.set_num_threads(threads)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = corpus_paths(folders)
    train_p, val_p, test_p = ([Path(p) for p in s] for s in split_paths(paths, SPLIT))
    shipped = Path(out_dir) / "remover.pt"
    resuming = resume and (run_dir / "last.pt").exists()
    init = None if (from_scratch or resuming or not shipped.exists()) else shipped
    overrides = {"synth": synth, **({"batch_size": batch_size} if batch_size else {}), **({"lr": lr} if lr else {})}
    config = trainer.profile_config(profile, max_minutes=minutes, **overrides)
    if init is not None:
        shipped_net = load_checkpoint(shipped)[0]
        fresh = trainer.build_network(config)
        warm = hasattr(fresh, "warm_start_from_unet") and not hasattr(shipped_net, "localiser")
        if warm:
            try:
                fresh.warm_start_from_unet(dict(shipped_net.config), shipped_net.float().state_dict())
                log(f"the shipped weights are a U-Net ({dict(shipped_net.config)}); this {profile} run warm-starts "
                    "both of its trunks from it")
            except ValueError:
                warm = False
        if not warm and dict(shipped_net.config) != dict(fresh.config):
            log(f"the shipped weights are another network ({dict(shipped_net.config)}); this {profile} run starts "
                "from scratch")
            init = None
    log(f"pretrain remover: {len(train_p)} train / {len(val_p)} val / {len(test_p)} test photos, "
        f"{minutes} min, " + ("resuming" if resuming else f"from {init}" if init else "from scratch"))
    t0 = time.perf_counter()
    renderer = WatermarkRenderer(seed=config.seed, icon_logos=icon_logos, icon_split="train") if icon_logos else None
    held_out = WatermarkRenderer(seed=config.seed + 1, icon_logos=icon_logos, icon_split="val") if icon_logos else None
    summary = trainer.train(train_p, val_p, test_p, config, run_dir, resume=resume, log=log, init_weights=init,
                            renderer=renderer, eval_renderer=held_out)
    hours = (time.perf_counter() - t0) / 3600
    bank = MARK_BANK + (f" + {icon_logos} {BANK_VERSION} logos a renderer (train identities; val/test: "
                        f"held-out identities)" if icon_logos else "")
    card = export_weights(run_dir, out_dir, summary, {"train": train_p, "val": val_p, "test": test_p},
                          command=command, mark_bank=bank, hours_this_run=hours, started_from=_shown(init) if init else
                          ("resumed run" if resuming else "scratch"))
    return {**{k: summary[k] for k in ("steps", "epochs", "train_minutes", "best_val_psnr")},
            "test": summary["test"], "weights": card["weights"], "card": card["card"]}


def _shown(path: Path) -> str:
    """``path`` as the card shows it: relative to the repository when inside it (no machine paths)."""
    try:
        return str(Path(path).resolve().relative_to(WEIGHTS_DIR.resolve().parents[1]))
    except ValueError:
        return Path(path).name


def card_command(prefix: str, args: list[str]) -> str:
    """The command line as a model card records it: ``prefix`` and ``args``, with every absolute
    path shown relative to the repository when it lies beside it (``../shared/corpus/kodak24``),
    else by its name, so a card never carries a machine's paths."""
    root = WEIGHTS_DIR.resolve().parents[1]
    shown = []
    for a in args:
        key, eq, value = a.partition("=") if a.startswith("--") else ("", "", a)
        if value.startswith("/"):
            p = Path(value).resolve()
            value = os.path.relpath(p, root) if p.is_relative_to(root.parent) else f"…/{p.name}"
        shown.append(key + eq + value)
    return " ".join([prefix, *shown])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_weights(run_dir: Path, out_dir: str | Path, summary: dict, splits: dict[str, list[Path]],
                   command: str, hours_this_run: float, started_from: str, mark_bank: str = MARK_BANK) -> dict:
    """Write ``remover.pt`` (fp16 weights of ``run_dir/best.pt``), ``remover-manifest.tsv`` and
    ``remover.md``. The training history of earlier sessions is kept in the card's run log."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, extra = load_checkpoint(run_dir / "best.pt")
    model.half()
    config = json.loads(extra.get("train_config") or (run_dir / "config.json").read_text())
    test = summary["test"]
    metrics = {"psnr": test["model"]["psnr"], "ssim": test["model"]["ssim"],
               "masked_psnr": test["model"].get("masked_psnr"), "input_psnr": test["input"]["psnr"],
               "inpaint_psnr": test["inpaint"]["psnr"], "samples": test.get("n"),
               "inpaint_masked_psnr": test["inpaint"].get("masked_psnr"),
               "input_masked_psnr": test["input"].get("masked_psnr"),
               **({"oracle_restore_psnr": test["oracle_restore"]["psnr"],
                   "oracle_restore_masked_psnr": test["oracle_restore"]["masked_psnr"]}
                  if "oracle_restore" in test else {}),
               **({"mask_telea_psnr": test["mask_telea"]["psnr"]} if "mask_telea" in test else {}),
               **({"mask_iou": test["mask"]["iou"], "mask_f1": test["mask"]["f1"]} if "mask" in test else {})}
    weights = save_checkpoint(model, out / "remover.pt", train_config=json.dumps(config),
                              metrics_json=json.dumps(metrics), steps=summary["steps"])
    with open(out / "remover-manifest.tsv", "w") as fh:
        fh.write("sha256\tfolder\tfile\tsplit\n")
        for split, paths in splits.items():
            for p in paths:
                fh.write(f"{_sha256(p)}\t{p.parent.name}\t{p.name}\t{split}\n")
    log_path = out / "remover-runs.jsonl"
    run = {"finished_at": datetime.now(UTC).isoformat(timespec="seconds"), "command": command,
           "started_from": started_from, "steps_total": summary["steps"], "epochs_total": summary["epochs"],
           "train_minutes_total": summary["train_minutes"], "hours_this_run": round(hours_this_run, 3),
           "device": summary["device"], "cpu": platform.processor() or platform.machine(),
           "threads": torch.get_num_threads(), "mark_bank": mark_bank, "test": metrics}
    with open(log_path, "a") as fh:
        fh.write(json.dumps(run) + "\n")
    runs = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    card = out / "remover.md"
    card.write_text(_card(config, summary, metrics, splits, runs, weights))
    ship_run_figures(run_dir, out, weights)
    return {"weights": str(weights), "card": str(card)}




SHIPPED_FIGURE_SIDE = 1200  # px: the longest side of a shipped figure


def ship_run_figures(run_dir: Path, out: Path, weights: Path) -> Path:
    """Copy the run's ``history.json`` and its figures on its first fixed test sample (plus the
    network-wide ones, the kernels) into ``out/remover-run/``, with ``weights.sha256`` naming the
    weights they belong to, so that a catalog whose remover is the shipped one shows its curves and
    figures (``pipeline.report``). The figures are shrunk to ``SHIPPED_FIGURE_SIDE`` and stored as
    256-colour PNGs: about 1.5 MB a release instead of the run's 11 MB."""
    from PIL import Image

    dest = out / registry.SHIPPED_RUN
    shutil.rmtree(dest, ignore_errors=True)
    (dest / "visuals").mkdir(parents=True)
    if (run_dir / "history.json").is_file():
        shutil.copyfile(run_dir / "history.json", dest / "history.json")
    listing = run_dir / "visuals" / "visuals.json"
    if listing.is_file():
        info = json.loads(listing.read_text())
        first = min((f["sample"] for f in info.get("figures", []) if f.get("sample") is not None), default=None)
        kept = [f for f in info.get("figures", []) if f.get("sample") in (None, first)
                and (run_dir / "visuals" / f["file"]).is_file()]
        for f in kept:
            with Image.open(run_dir / "visuals" / f["file"]) as im:
                im = im.convert("RGB")
                im.thumbnail((SHIPPED_FIGURE_SIDE, SHIPPED_FIGURE_SIDE), Image.LANCZOS)
                im.quantize(256, method=Image.Quantize.FASTOCTREE).save(dest / "visuals" / f["file"], optimize=True)
        (dest / "visuals" / "visuals.json").write_text(json.dumps({**info, "figures": kept}, indent=1))
    (dest / "weights.sha256").write_text(_sha256(weights) + "\n")
    return dest


def _metrics_table(m: dict) -> str:
    def f(v: float | None) -> str:
        return "–" if v is None else f"{v:.2f}"

    rows = [("this model", m["psnr"], m.get("masked_psnr")), ("the input", m["input_psnr"], m.get("input_masked_psnr")),
            ("OpenCV Telea given the true mask", m["inpaint_psnr"], m.get("inpaint_masked_psnr"))]
    if "oracle_restore_psnr" in m:
        rows.append(("oracle: the true mask, α and W, then this restorer", m["oracle_restore_psnr"],
                     m.get("oracle_restore_masked_psnr")))
    if "mask_telea_psnr" in m:
        rows.append(("oracle: this model's mask, then Telea", m["mask_telea_psnr"], None))
    table = "| | PSNR (dB) | inside the mark |\n| --- | --- | --- |\n" + "\n".join(
        f"| {name} | {f(a)} | {f(b)} |" for name, a, b in rows)
    if "mask_iou" in m:
        table += f"\n\nPredicted mask against the true one: IoU {m['mask_iou']:.3f}, F1 {m['mask_f1']:.3f}."
    return table


def _describe(config: dict) -> str:
    if config.get("arch") == "locate-restore":
        return (f"the `{config['profile']}` locate-then-restore remover (`model.remover.locate`, {config['parameters']:,} "
                f"parameters): a localiser U-Net (base {config['loc_base']}, depth {config['depth']}) that sees the "
                f"whole image at a {config['view']} px view and predicts the mark's mask, opacity α and colour W; "
                f"the inversion J = (I − αW)/(1 − α) where α < 0.9; a full-resolution restorer U-Net (base "
                f"{config['base']}) that refines J, fills opaque marks and refines the mask; pixels outside the "
                f"hardened, dilated mask are the input's")
    return (f"the `{config['profile']}` U-Net ({config['parameters']:,} parameters, base {config['base']}, depth "
            f"{config['depth']}, mask head, mask-guided output, hardened mask at inference)")


def _card(config: dict, summary: dict, metrics: dict, splits: dict[str, list[Path]], runs: list[dict],
          weights: Path) -> str:
    folders = sorted({p.parent.name for ps in splits.values() for p in ps})
    hours = sum(r["hours_this_run"] for r in runs)
    rows = "\n".join(f"| {r['finished_at']} | {r['started_from']} | {r['steps_total']} | {r['hours_this_run']:.2f} | "
                     f"{r['device']} ({r['threads']} threads) | {r['test']['psnr']:.2f} | {r['test']['input_psnr']:.2f} | "
                     f"{r['test']['inpaint_psnr']:.2f} |" for r in runs)
    return f"""# Model card: the shipped remover (`model/weights/remover.pt`)

What it is: {_describe(config)}, fp16 weights ({weights.stat().st_size / 1e6:.1f} MB). `unmark init` registers it as the promoted remover when the
catalog has none; `unmark train` then trains a challenger that is promoted only if better on the same
test samples.

## Data
- Clean photos: {sum(len(v) for v in splits.values())} from `../shared/corpus/` folders {', '.join(folders)}
  (never the benchmark folders; voc150's real overlays excluded). Split by SHA-256 of each file
  (90/5/5): {len(splits['train'])} train, {len(splits['val'])} val, {len(splits['test'])} test.
  Every file with its sha256 and split: `remover-manifest.tsv`.
- Terms: the corpus photos carry research terms (ImageNet, VOC, BSDS: non-commercial research use;
  see `../shared/corpus/README.md`); these weights inherit them.
- Marks: synthetic, drawn on the fly by the mark bank `{runs[-1].get('mark_bank', MARK_BANK)}`.

## Training
- Command (latest run): `{runs[-1]['command']}`
- Steps in total: {summary['steps']} ({summary['epochs']} epochs of {config['steps_per_epoch']} steps,
  batch {config['batch_size']}, {config['size']} px crops), {summary['train_minutes']:.1f} training
  minutes in this run's schedule, {hours:.2f} hours over all runs below.
- Loss: {json.dumps(config['loss'])}; perceptual: {config['perceptual']} ({config['perceptual_reason']}).

## Metrics (synthetic test split: {metrics.get('samples')} fixed samples of the held-out photos with held-out marks, whole image)
{_metrics_table(metrics)}

SSIM {metrics['ssim']:.4f}. SWCNN protocol figures: `bench/results/shipped_remover.json`.

## Runs
| finished (UTC) | started from | steps (total) | hours | device | test PSNR | input | Telea |
| --- | --- | --- | --- | --- | --- | --- | --- |
{rows}
"""
