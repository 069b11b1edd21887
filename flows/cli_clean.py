"""``unmark clean`` (the watermarked pool) and ``unmark clean-files`` (a folder, in one command),
and the mask options they share with the clean flow and ``model.Remover.clean``."""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli_base import JsonOpt, app, emit, err, stage_progress, stopped_exit
from flows.cli_base import open_all as _open

ThresholdOpt = Annotated[float | None, typer.Option(help="mask: predicted probability above which a pixel is a mark (default 0.5)")]
DilateOpt = Annotated[int | None, typer.Option(help="mask: grow it by this many pixels (default 1)")]
FeatherOpt = Annotated[int | None, typer.Option(help="mask: fade the cleaned region into the input over this many pixels (default 0)")]


def mask_rule(threshold: float | None, dilate: int | None, feather: int | None):
    """The ``MaskRule`` the options name (None when none is given: the model's own), or exit 2."""
    from model.remover.masks import MaskRule

    try:
        return MaskRule.given(threshold, dilate, feather)
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc


@app.command()
def clean(
    model: Annotated[str | None, typer.Option(help="remover version (default: the promoted one)")] = None,
    device: Annotated[str, typer.Option(help="auto|cpu|cuda")] = "auto",
    limit: Annotated[int | None, typer.Option(help="clean at most this many images")] = None,
    threshold: ThresholdOpt = None,
    dilate: DilateOpt = None,
    feather: FeatherOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Clean the watermarked pool with the promoted remover (tiled, batched inference)."""

    from pipeline import clean as clean_step
    from pipeline import registry, stopping

    rule = mask_rule(threshold, dilate, feather)
    settings, cat, blobs = _open()
    with stage_progress(disabled=as_json) as progress:
        try:
            with stopping.on_signals(stopping.StopFlag()) as stop:
                result = clean_step.clean(cat, blobs, settings, model_version=model, device=device, limit=limit,
                                          progress=progress, mask_rule=rule, stop=stop)
        except (registry.NoModel, clean_step.DeviceUnavailable) as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from exc
        except stopping.Stopped as exc:
            stopped_exit(exc, as_json, "clean")
    emit(result, as_json, "clean")


@app.command("clean-files")
def clean_files(
    inputs: Annotated[list[str], typer.Argument(help="image files or folders")],
    out: Annotated[str, typer.Option("--out", help="folder the outputs, masks and manifest go to")],
    masks: Annotated[bool, typer.Option("--masks", help="also write each mask beside its image (NAME.mask.png)")] = False,
    copy_all: Annotated[bool, typer.Option("--all", help="also copy the files left alone (clean, animated) through unchanged")] = False,
    mask_only: Annotated[bool, typer.Option("--mask-only", help="write the masks only and leave the images alone")] = False,
    model: Annotated[str | None, typer.Option(help="remover version (default: the promoted one, else the shipped one)")] = None,
    device: Annotated[str, typer.Option(help="auto|cpu|cuda")] = "auto",
    triage: Annotated[bool, typer.Option("--triage/--no-triage", help="let the detector decide which files are "
                                         "cleaned (--no-triage: clean every file)")] = True,
    dedup: Annotated[bool, typer.Option("--dedup/--no-dedup", help="group near-duplicates (a watermarked file with a "
                                        "clean copy is also measured against it)")] = True,
    threshold: ThresholdOpt = None,
    dilate: DilateOpt = None,
    feather: FeatherOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Clean a folder in one command: import, triage, clean the watermarked files and write them to
    --out in their own format, size, orientation and colour profile, with manifest.csv/json.
    Exits 1 when some file failed (the others are still written)."""
    from pathlib import Path

    from pipeline import clean as clean_step
    from pipeline import clean_files as step
    from pipeline import registry

    rule = mask_rule(threshold, dilate, feather)
    options = step.Options(Path(out), masks=masks, copy_clean=copy_all, mask_only=mask_only, mask_rule=rule,
                           model_version=model, device=device, triage=triage, dedup=dedup)
    settings, cat, blobs = _open()
    with stage_progress(disabled=as_json) as progress:
        try:
            result = step.clean_files(inputs, cat, blobs, settings, options, progress=progress)
        except (FileNotFoundError, step.CleanFilesError, registry.NoModel, clean_step.DeviceUnavailable) as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from exc
    for note in result["notes"]:
        err.print(f"[yellow]note:[/yellow] {note}")
    if as_json:
        emit(result, True)
    else:
        emit({k: v for k, v in result.items() if k not in ("failures", "notes")}, False, "clean-files")
        for f in result["failures"]:
            err.print(f"[red]failed:[/red] {f['input']}: {f['reason']}")
    if result["failed"]:
        raise typer.Exit(1)
