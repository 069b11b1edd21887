"""The ``unmark`` command line. Every command reads ``UNMARK_HOME`` and prints a human summary,
or JSON with ``--json``.

It lives in ``flows/``, the top layer, because some commands (``demo``, ``dedup``/``triage`` on the
Dask runner) start flows: from here it may import ``flows`` and ``pipeline`` alike, and the import
contract (flows → pipeline → model, storage) holds without exceptions. Prefect is imported only
inside those commands, after the telemetry variables are set, so the other commands start fast."""

from __future__ import annotations

import gc
import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from flows.cli_base import (
    JsonOpt,
    app,
    catalog_app,
    console,
    emit,
    err,
    fault_exit,
    stage_progress,
    stopped_exit,
)
from flows.cli_base import open_all as _open
from flows.cli_base import settings_now as _settings
from pipeline import stopping
from pipeline.config import Settings


@app.command()
def init(as_json: JsonOpt = False) -> None:
    """Create or migrate the catalog; register the shipped remover and detector when none is promoted."""
    settings, cat, blobs = _open()
    from pipeline.registry import register_shipped, register_shipped_detector
    from storage.db import current_revision

    try:
        shipped = {k: v for k, v in (("remover", register_shipped(cat, blobs, settings.models.shipped_weights)),
                                     ("detector", register_shipped_detector(cat, blobs, settings.models.shipped_weights)))
                   if v}
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    emit({"catalog": cat.engine.url.render_as_string(), "revision": current_revision(cat.engine),
          "blobs": settings.storage.blob_root, "registered": shipped or {}}, as_json, "catalog ready")


pretrain_app = typer.Typer(no_args_is_help=True, help="Train the models that ship in model/weights/.")
app.add_typer(pretrain_app, name="pretrain")


@pretrain_app.command("remover")
def pretrain_remover_cmd(
    images: Annotated[list[str], typer.Option("--images", help="folders of clean photos (repeat the option)")],
    minutes: Annotated[float, typer.Option(help="wall-time budget of this run, final evaluation included")] = 60.0,
    resume: Annotated[bool, typer.Option(help="continue the run in UNMARK_HOME/pretrain/remover-PROFILE")] = True,
    from_scratch: Annotated[bool, typer.Option(help="a fresh run starts from random weights, not the shipped ones")] = False,
    out: Annotated[str | None, typer.Option(help="where the weights and card go (default model/weights)")] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's)")] = None,
    icon_logos: Annotated[int, typer.Option(help="pictogram logos per renderer (0: the procedural bank only)")] = 512,
    profile: Annotated[str, typer.Option(help="training profile (locate-cpu: locate, then restore; localise-cpu: the localiser alone)")] = "locate-cpu",
    synth: Annotated[str, typer.Option(help="cpu: loader draws the marks; device: composited on the GPU")] = "cpu",
    batch_size: Annotated[int | None, typer.Option(help="override the profile's batch size")] = None,
    lr: Annotated[float | None, typer.Option(help="override the profile's peak learning rate")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train (or continue) the shipped remover on clean photos; write fp16 weights and the model card."""
    from pipeline.pretrain import WEIGHTS_DIR, card_command, pretrain_remover

    settings = _settings()
    command = card_command("unmark pretrain remover", sys.argv[3:])
    try:
        result = pretrain_remover(images, settings.home / "pretrain" / f"remover-{profile}", minutes, resume=resume,
                                  from_scratch=from_scratch, out_dir=out or WEIGHTS_DIR, threads=threads,
                                  command=command, log=lambda m: err.print(m), icon_logos=icon_logos,
                                  profile=profile, synth=synth, batch_size=batch_size, lr=lr)
    except (FileNotFoundError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    emit(result, as_json, "pretrain remover")


@pretrain_app.command("detector")
def pretrain_detector_cmd(
    images: Annotated[list[str], typer.Option("--images", help="folders of clean photos (repeat the option)")],
    minutes: Annotated[float, typer.Option(help="fine-tuning time for detection (0: calibrate only)")] = 0.0,
    resume: Annotated[bool, typer.Option(help="continue from the shipped detector.pt (else the remover's localiser)")] = True,
    out: Annotated[str | None, typer.Option(help="where the remover is read and the detector goes (default model/weights)")] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Build the shipped detector from the shipped remover's localiser: fine-tune, calibrate, measure; write the card."""
    from pipeline.pretrain import WEIGHTS_DIR, card_command
    from pipeline.pretrain_detector import pretrain_detector

    settings = _settings()
    command = card_command("unmark pretrain detector", sys.argv[3:])
    try:
        result = pretrain_detector(images, minutes, out_dir=out or WEIGHTS_DIR, resume=resume, threads=threads,
                                   target_precision=settings.triage.triage_target_precision,
                                   prevalence=settings.triage.triage_prevalence, command=command,
                                   log=lambda m: err.print(m))
    except (FileNotFoundError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    emit(result, as_json, "pretrain detector")


@app.command("import")
def import_(
    paths: Annotated[list[str], typer.Argument(help="image files or folders")],
    source: Annotated[str, typer.Option(help="source name recorded on each image")] = "import",
    as_json: JsonOpt = False,
) -> None:
    """Add local image files/folders to the catalog as if fetched."""
    from pipeline.importer import import_paths

    settings, cat, blobs = _open()
    try:
        with stopping.on_signals(stopping.StopFlag()) as stop:
            stats = import_paths(paths, cat, blobs, settings, source=source, stop=stop)
    except FileNotFoundError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    except stopping.Stopped as exc:
        stopped_exit(exc, as_json, "import")
    emit(stats.as_dict(), as_json, "import")


@app.command()
def scrape(
    urls: Annotated[list[str], typer.Argument(help="page URLs, sitemap.xml URLs, or files with one URL per line")],
    max_pages: Annotated[int | None, typer.Option(help="pages to fetch in this run (default: settings)")] = None,
    max_depth: Annotated[int | None, typer.Option(help="link hops from a seed (default: settings)")] = None,
    allow_private_hosts: Annotated[bool, typer.Option(help="also reach loopback (tests, the demo); nothing else private")] = False,
    render: Annotated[str | None, typer.Option(
        help="load pages in headless Chromium too: never | auto (pages with scripts and no image) | always "
             "(default: settings); a seed 'URL render=MODE' sets its own site")] = None,
    icons: Annotated[bool | None, typer.Option("--icons/--no-icons", help="also take <link rel=icon> images")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Crawl pages from the seeds and store every image found (robots.txt and opt-outs obeyed)."""
    gc.disable()  # start-up (imports, catalog) makes long-lived objects only: no collections
    try:
        from pipeline.scrape.crawl import scrape as run_scrape
        from pipeline.scrape.render import RenderUnavailable
        from pipeline.scrape.render_step import RenderModeError
        from pipeline.scrape.seeds import SeedError

        settings, cat, blobs = _open()
    finally:
        gc.freeze()  # the imported modules stay: the crawl's collections (and the one at exit) skip them
        gc.enable()
    try:
        if icons is not None:
            settings = settings.updated(scrape_icons=icons)
        with stopping.on_signals(stopping.StopFlag()) as stop:
            summary = run_scrape(urls, cat, blobs, settings, max_pages=max_pages, max_depth=max_depth,
                                 allow_private_hosts=allow_private_hosts, render=render, stop=stop)
    except (SeedError, RenderModeError, RenderUnavailable) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    except stopping.Stopped as exc:
        stopped_exit(exc, as_json, "scrape")
    emit(summary, as_json, "scrape")
    if summary["seeds"] and summary["seeds_failed"] == summary["seeds"]:
        err.print(f"[red]error:[/red] every seed failed ({summary['seeds']}); see the failures above")
        raise typer.Exit(1)


TaskRunnerOpt = Annotated[str | None, typer.Option(
    "--task-runner", help="thread: in this process (default, or UNMARK_TASK_RUNNER) | dask: hashing / scoring "
                          "on Dask (prefect-dask; a local cluster on 127.0.0.1, or UNMARK_DASK_ADDRESS)")]


def _runner(settings: Settings, task_runner: str | None) -> str:
    kind = task_runner or settings.scale.task_runner
    if kind not in ("thread", "dask"):
        err.print(f"[red]error:[/red] --task-runner must be thread or dask, not {kind!r}")
        raise typer.Exit(2)
    return kind


def _run_mapped(step: str, settings: Settings, *args: Any) -> dict:
    """``flows.mapped``'s flow for ``step`` on the Dask task runner. Like ``demo``, this starts a
    flow from the CLI."""
    import os

    os.environ.setdefault("DO_NOT_TRACK", "1")  # before Prefect is imported
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows import mapped

    which = {"dedup": mapped.dedup_mapped, "triage": mapped.triage_mapped}[step]
    return mapped.run_mapped(which, settings, *args, kind="dask")


@app.command()
def dedup(
    regroup: Annotated[bool, typer.Option(help="forget stored groups and compare every pair again")] = False,
    task_runner: TaskRunnerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Hash new images and fold near duplicates into groups (one canonical image each)."""
    from pipeline.dedup import dedup as run_dedup

    settings, cat, blobs = _open()
    if _runner(settings, task_runner) == "dask":
        emit(_run_mapped("dedup", settings, regroup), as_json, "dedup")
        return
    try:
        with stopping.on_signals(stopping.StopFlag()) as stop:
            result = run_dedup(cat, blobs, settings, regroup=regroup, stop=stop)
    except stopping.Stopped as exc:
        stopped_exit(exc, as_json, "dedup")
    emit(result, as_json, "dedup")


@catalog_app.command("stats")
def catalog_stats(as_json: JsonOpt = False) -> None:
    """Counts of pages, images per status, failures per stage."""
    from storage import queries as q

    _, cat, _ = _open()
    with cat.session() as s:
        emit(q.catalog_stats(s), as_json, "catalog")


@catalog_app.command("images")
def catalog_images(
    status: Annotated[str | None, typer.Option(help="fetched|clean|watermarked|uncertain|cleaned|failed|duplicate")] = None,
    min_psnr: Annotated[float | None, typer.Option(help="only cleanings with PSNR vs input ≥ this")] = None,
    limit: Annotated[int | None, typer.Option(help="at most this many rows")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table|json|csv")] = "table",
) -> None:
    """List images with their first URL and, when cleaned, the output and its metrics."""
    from pipeline.catalog_cli import format_images
    from storage import queries as q

    if fmt not in ("table", "json", "csv"):
        err.print(f"[red]error:[/red] unknown format {fmt!r}: use table, json or csv")
        raise typer.Exit(2)
    _, cat, _ = _open()
    with cat.session() as s:
        rows = q.list_images(s, status=status, min_psnr=min_psnr, limit=limit)
    if fmt != "table":
        sys.stdout.write(format_images(rows, fmt) + ("" if fmt == "csv" else "\n"))
        return
    table = Table(title=f"{len(rows)} images")
    for c in ("sha256", "status", "label", "dedup", "size", "psnr", "url"):
        table.add_column(c, no_wrap=c in ("sha256", "size"), overflow="ellipsis")
    for r in rows:
        psnr = r.get("psnr_vs_input")
        table.add_row(r["sha256"][:12], r["status"], r.get("label") or "", r.get("dedup_role") or "",
                      f"{r['width']}×{r['height']}", f"{psnr:.2f}" if psnr is not None else "",
                      (r.get("url") or "")[-60:])
    console.print(table)


@catalog_app.command("export")
def catalog_export(
    dest: Annotated[str, typer.Argument(help="folder to copy cleaned outputs into")],
    model: Annotated[str | None, typer.Option(help="only this model version's cleanings")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Copy the cleaned outputs out, with manifest.json and manifest.csv."""
    from pipeline.catalog_cli import export_cleaned

    _, cat, blobs = _open()
    emit(export_cleaned(cat, blobs, dest, model_version=model), as_json, "export")


@app.command()
def triage(
    retrain_detector: Annotated[bool, typer.Option("--retrain-detector",
                                                   help="train a new detector (pool minus images judged watermarked)")] = False,
    task_runner: TaskRunnerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Label every image clean / watermarked / uncertain with the promoted detector (trained on first use)."""

    from pipeline import triage as triage_step

    settings, cat, blobs = _open()
    if _runner(settings, task_runner) == "dask":
        try:
            result = _run_mapped("triage", settings, retrain_detector)
        except triage_step.NoTrainingImages as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from exc
        emit(result, as_json, "triage")
        return
    with stage_progress(disabled=as_json) as progress:
        try:
            with stopping.on_signals(stopping.StopFlag()) as stop:
                result = triage_step.triage(cat, blobs, settings, retrain_detector=retrain_detector,
                                            progress=progress, stop=stop)
        except triage_step.NoTrainingImages as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from exc
        except stopping.Stopped as exc:
            stopped_exit(exc, as_json, "triage")
    emit(result, as_json, "triage")


@app.command()
def train(
    profile: Annotated[str, typer.Option(help="locate-cpu|localise-cpu|quick-cpu|seed|tiny|tiny-locate")] = "locate-cpu",
    pairing: Annotated[str, typer.Option(help="supervised|self-supervised")] = "supervised",
    max_minutes: Annotated[float | None, typer.Option(help="cap the run's wall time (schedule scaled to fit)")] = None,
    from_scratch: Annotated[bool, typer.Option(help="random start instead of fine-tuning the promoted remover")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Train a remover on the clean pool, evaluate it on the test split, register it; promote it if better."""
    from model.remover.losses import VGGWeightsMissing
    from model.remover.train import PROFILES
    from model.synth.pairs import PAIRINGS
    from pipeline import train as train_step

    if profile not in PROFILES:
        err.print(f"[red]error:[/red] unknown profile {profile!r}: {', '.join(PROFILES)}")
        raise typer.Exit(2)
    if pairing not in PAIRINGS:
        err.print(f"[red]error:[/red] unknown pairing {pairing!r}: {' or '.join(PAIRINGS)}")
        raise typer.Exit(2)
    if max_minutes is not None and max_minutes <= 0:
        err.print("[red]error:[/red] --max-minutes must be positive")
        raise typer.Exit(2)
    settings, cat, blobs = _open()
    try:
        result = train_step.train_remover(cat, blobs, settings, profile=profile, pairing=pairing,
                                          max_minutes=max_minutes, log=None if as_json else err.print,
                                          from_scratch=from_scratch)
    except (train_step.NotEnoughImages, VGGWeightsMissing) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    if as_json:
        emit(result, True)
        return
    emit({k: result[k] for k in ("version", "promoted", "started_from", "profile", "pairing", "perceptual",
                                 "epochs", "steps",
                                 "stopped_by", "train_minutes", "images", "metrics", "run_dir")}, False, "train")


@app.command()
def evaluate(
    protocol: Annotated[str, typer.Option(help="swcnn")] = "swcnn",
    images: Annotated[str | None, typer.Option(help="folder of the protocol's clean photos")] = None,
    logos: Annotated[str | None, typer.Option(help="folder of the protocol's RGBA logos")] = None,
    alpha: Annotated[str, typer.Option(help="opacities, comma-separated")] = "0.3,0.5,0.7,1.0",
    model: Annotated[str | None, typer.Option(help="remover version (default: the promoted one)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Score a remover on a benchmark protocol, next to the paper's numbers."""
    from pathlib import Path

    from pipeline import evaluate as evaluate_step
    from pipeline import registry

    if protocol not in evaluate_step.PROTOCOLS:
        err.print(f"[red]error:[/red] unknown protocol {protocol!r}: {', '.join(evaluate_step.PROTOCOLS)}")
        raise typer.Exit(2)
    for name, folder in (("--images", images), ("--logos", logos)):
        if not folder or not Path(folder).is_dir():
            err.print(f"[red]error:[/red] {name} must name a folder (got {folder!r})")
            raise typer.Exit(2)
    try:
        alphas = evaluate_step.parse_alphas(alpha)
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    settings, cat, blobs = _open()
    try:
        result = evaluate_step.evaluate(cat, blobs, settings, images, logos, protocol=protocol, alphas=alphas,
                                        model_version=model, progress=None if as_json else err.print)
    except (registry.NoModel, FileNotFoundError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    if as_json:
        emit(result, True)
        return
    table = Table(title=f"{protocol}: {result['model']} on {result['images']} images × {result['logos']} logos")
    for col in ("α", "input PSNR", "PSNR", "paper SWCNN PSNR", "input SSIM", "SSIM"):
        table.add_column(col, justify="right")
    for a, row in result["alpha"].items():
        table.add_row(a, f"{row['input_psnr']:.2f}", f"{row['psnr']:.2f}",
                      f"{row['paper_psnr']:.2f}" if row.get("paper_psnr") else "—",
                      f"{row['input_ssim']:.4f}", f"{row['ssim']:.4f}")
    console.print(table)


@app.command()
def report(as_json: JsonOpt = False) -> None:
    """Write a static HTML report (before/after pairs, metrics, training curves, counts)."""
    from pipeline.report import report as write_report

    settings, cat, blobs = _open()
    path = write_report(cat, blobs, settings)
    emit({"report": str(path)}, as_json, "report")


@app.command()
def demo(
    minutes: Annotated[float, typer.Option(min=3.0, help="whole-run budget; training's cap shrinks to fit")] = 12.0,
    perceptual: Annotated[str, typer.Option(help="perceptual loss: off | random (no ImageNet weights offline)")] = "off",
    as_json: JsonOpt = False,
) -> None:
    """The whole pipeline on a local sample site: build and serve it on 127.0.0.1, then ingest,
    quick-cpu training and cleaning in Prefect's embedded mode, with a progress display."""
    from pipeline.demo import demo_environment

    if perceptual not in ("off", "random", "imagenet"):
        err.print(f"[red]error:[/red] --perceptual must be off, random or imagenet, not {perceptual!r}")
        raise typer.Exit(2)
    settings = _settings()
    demo_environment(settings.home, minutes)  # before Prefect is imported
    settings = _settings()  # the demo's defaults (detector budget) apply
    from flows.demo import run_demo

    result = run_demo(settings, minutes=minutes, perceptual=perceptual,
                      console=Console(stderr=True) if as_json else console)
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")


from flows import cli_check, cli_clean, cli_models  # noqa: E402,F401 - register check, clean, clean-files, catalog models


def main() -> None:
    """The ``unmark`` entry point: the commands, with the faults of ``fault_exit`` as one clear
    line and their own exit status instead of a traceback."""
    try:
        app()
    except Exception as exc:
        known = fault_exit(exc)
        if known is None:
            raise
        err.print(f"[red]error:[/red] {escape(known[1])}", soft_wrap=True, highlight=False)
        sys.exit(known[0])


if __name__ == "__main__":  # pragma: no cover
    main()
