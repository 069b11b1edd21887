"""The report's model section: the promoted remover's training curves and the figures its run drew.

The curves are drawn from the run's per-epoch history (``model.remover.plots.training_curves``). The
figures are those ``model.remover.visuals.draw_run_visuals`` wrote at the end of the run into
``RUN_DIR/visuals/`` (listed in its ``visuals.json``); they are copied into the report's assets,
so the report folder stands alone.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pipeline import registry
from pipeline.report.html import e, fmt
from storage import Catalog
from storage import runs as training_runs


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def shipped_run_dir(shipped_dir: Path, version: str) -> Path | None:
    """The run folder shipped beside the weights (``pipeline.pretrain.ship_run_figures``) when
    ``version`` is the shipped remover those weights are, else None."""
    tag = shipped_dir / registry.SHIPPED_RUN / "weights.sha256"
    if not tag.is_file():
        return None
    return tag.parent if registry.shipped_remover_version(tag.read_text().strip()) == version else None


def _run_of(catalog: Catalog, runs_dir: Path, version: str, shipped_dir: Path | None = None) -> tuple[list[dict], Path]:
    with catalog.session() as s:
        run = training_runs.run_of(s, version)
        history = list(run.history or []) if run else []
        run_dir = Path(run.run_dir) if run and run.run_dir else runs_dir / version
    if run is None and not run_dir.exists() and shipped_dir is not None:
        run_dir = shipped_run_dir(shipped_dir, version) or run_dir
    if not history and (run_dir / "history.json").exists():
        history = json.loads((run_dir / "history.json").read_text())
    return history, run_dir


def visuals_section(run_dir: Path, version: str, assets_dir: Path) -> str:
    """The run's figures as a gallery (each linked to its full size), or a note that it has none."""
    manifest = run_dir / "visuals" / "visuals.json"
    if not manifest.is_file():
        return f'<p class="muted">no figures recorded for {e(version)} (drawn at the end of each training run)</p>'
    try:
        info = json.loads(manifest.read_text())
        figures = [f for f in info.get("figures", []) if isinstance(f, dict)]
        notes = [n for n in info.get("skipped", []) + info.get("failed", []) if isinstance(n, dict)]
    except (OSError, ValueError, AttributeError, TypeError) as exc:  # a run folder is a user's: it may be edited
        return f'<p class="muted">unreadable {e(manifest)}: {e(type(exc).__name__)}: {e(exc)}</p>'
    dest = assets_dir / f"visuals-{_safe(version)}"
    dest.mkdir(parents=True, exist_ok=True)
    cards = []
    for i, fig in enumerate(figures):
        src = run_dir / "visuals" / Path(str(fig.get("file", ""))).name
        if not src.is_file():
            continue
        out = dest / src.name
        if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
            shutil.copyfile(src, out)
        rel = f"assets/{dest.name}/{out.name}"
        cards.append(f'<figure><a href="{e(rel)}"><img src="{e(rel)}" alt="{e(fig.get("title", out.stem))}" '
                     f'loading="{"eager" if i < 2 else "lazy"}"></a><figcaption>{e(fig.get("title", out.stem))}'
                     "</figcaption></figure>")
    skipped = [f"{e(n.get('figure'))}: {e(n.get('reason'))}" for n in notes]
    return ("<h3>Figures on fixed test samples</h3>" + (f'<div class="figs">{"".join(cards)}</div>' if cards else
                                                         '<p class="muted">none of the listed figures is on disk</p>')
            + (f'<p class="muted">not drawn: {"; ".join(skipped)}</p>' if skipped else ""))


def training_section(catalog: Catalog, runs_dir: Path, version: str | None, assets_dir: Path,
                     shipped_dir: Path | None = None) -> str:
    """Curves of the promoted remover's training run and the figures its run drew (for the shipped
    remover, those shipped beside its weights in ``shipped_dir``)."""
    if not version:
        return '<p class="muted">no promoted remover</p>'
    history, run_dir = _run_of(catalog, runs_dir, version, shipped_dir)
    figures = visuals_section(run_dir, version, assets_dir)
    if not history:
        return f'<p class="muted">no training history recorded for {e(version)}</p>' + figures
    from model.remover.plots import lr_schedule, training_curves

    name = f"curves-{_safe(version)}.png"
    training_curves(history, assets_dir / name)
    lr = ""
    if all("lr" in row for row in history):  # the schedule the run followed, beside its curves
        lr_name = f"lr-{_safe(version)}.png"
        lr_schedule(history, assets_dir / lr_name)
        lr = f'<img src="assets/{e(lr_name)}" alt="learning rate of {e(version)}" style="max-width:40%">'
    last = history[-1]
    return (f'<p><img src="assets/{e(name)}" alt="training curves of {e(version)}" style="max-width:100%">{lr}</p>'
            f"<p class=muted>{len(history)} epochs; last: "
            + ", ".join(f"{e(k)} {fmt(v, 4)}" for k, v in last.items() if isinstance(v, int | float)) + "</p>"
            + figures)
