"""``unmark report``: one static HTML page about the catalog and its cleanings.

``UNMARK_HOME/reports/index.html`` plus ``reports/assets/`` (thumbnails and plots), linked
relatively, so the folder opens from disk or any static host with no server. It shows the counts
per status, dedup role and failure stage; the promoted remover with its test metrics and training
curves (``model.plots.training_curves`` over the run's per-epoch history); before/after pairs of
the latest cleanings with their metrics; the best and worst cleanings; real pairs (model output
against the clean copy); recent failures.

Every value that came from the web (URLs, error messages) is HTML-escaped. A small script
writes, once the page has loaded, how many of its images loaded (``#images-status``) and each
image's ``naturalWidth`` (``data-natural-width``), which the tests read in a headless browser.
"""

from __future__ import annotations

import html
import io
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from PIL import Image as PILImage
from sqlalchemy import select

from pipeline.config import Settings
from pipeline.images import open_image
from storage import BlobStore, Catalog
from storage import queries as q
from storage.models import Cleaning, Image, TrainingRun

THUMB = 320  # longest side of a thumbnail, px

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0 } h2 { border-bottom: 1px solid #ccc; margin-top: 2em }
table { border-collapse: collapse; } td, th { padding: 4px 8px; border-bottom: 1px solid #eee; vertical-align: top; text-align: left }
.num { text-align: right; font-variant-numeric: tabular-nums }
.pair img { max-width: 320px; max-height: 320px; display: block; background: #ddd }
.muted { color: #777 } .metrics td { padding: 1px 6px; border: 0 }
.cards { display: flex; flex-wrap: wrap; gap: 12px } .card { border: 1px solid #ddd; padding: 6px }
"""

SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.querySelectorAll('img'), ok = 0;
  imgs.forEach(function (im) {
    im.setAttribute('data-natural-width', im.naturalWidth);
    if (im.complete && im.naturalWidth > 0) { ok++; }
  });
  document.getElementById('images-status').textContent = ok + ' of ' + imgs.length + ' images loaded';
});
"""


def e(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _fmt(v: Any, digits: int = 2, pct: bool = False) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{100 * v:.{digits}f} %" if pct else f"{v:.{digits}f}"
    return e(v)


class _Assets:
    """Thumbnails of blobs in ``assets/``, named by blob key, written once."""

    def __init__(self, folder: Path, blobs: BlobStore, settings: Settings):
        self.folder, self.blobs, self.settings = folder, blobs, settings
        folder.mkdir(parents=True, exist_ok=True)

    def thumb(self, key: str | None) -> str | None:
        if not key:
            return None
        name = key.replace("/", "_")[-64:] + ".jpg"
        path = self.folder / name
        if not path.exists():
            try:
                im = open_image(self.blobs.get(key), self.settings.max_image_pixels)
            except Exception:  # noqa: BLE001 - an unreadable blob shows as a missing picture
                return None
            if im.mode == "RGBA":  # flatten onto white for a JPEG thumbnail
                bg = PILImage.new("RGB", im.size, (255, 255, 255))
                bg.paste(im, mask=im.getchannel("A"))
                im = bg
            im.thumbnail((THUMB, THUMB))
            buf = io.BytesIO()
            im.convert("RGB").save(buf, "JPEG", quality=88)
            _write_atomic(path, buf.getvalue())
        return f"assets/{name}"


    def overlay(self, image_key: str | None, mask_key: str | None) -> str | None:
        """A thumbnail of the image with the predicted mask (probability > 0.5) tinted red."""
        if not image_key or not mask_key:
            return None
        name = "mask_" + mask_key.replace("/", "_")[-58:] + ".jpg"
        path = self.folder / name
        if not path.exists():
            try:
                im = open_image(self.blobs.get(image_key), self.settings.max_image_pixels).convert("RGB")
                mask = open_image(self.blobs.get(mask_key), self.settings.max_image_pixels).convert("L")
            except Exception:  # noqa: BLE001 - an unreadable blob shows as a missing picture
                return None
            if mask.size != im.size:
                mask = mask.resize(im.size)
            hot = mask.point(lambda v: 150 if v > 127 else 0)
            im.paste(PILImage.new("RGB", im.size, (230, 20, 20)), mask=hot)
            im.thumbnail((THUMB, THUMB))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=88)
            _write_atomic(path, buf.getvalue())
        return f"assets/{name}"


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _img(src: str | None, alt: str) -> str:
    return f'<img src="{e(src)}" alt="{e(alt)}" loading="eager">' if src else '<span class="muted">(unreadable)</span>'


def _kv_table(d: dict, cls: str = "") -> str:
    rows = "".join(f"<tr><th>{e(k)}</th><td class=num>{_fmt(v) if not isinstance(v, dict) else e(json.dumps(v))}</td></tr>"
                   for k, v in d.items())
    return f'<table class="{cls}">{rows or "<tr><td class=muted>none</td></tr>"}</table>'


def _cleaning_rows(catalog: Catalog, version: str | None) -> list[dict]:
    stmt = select(Cleaning, Image).join(Image, Image.id == Cleaning.image_id).order_by(Cleaning.id.desc())
    if version:
        stmt = stmt.where(Cleaning.model_version == version)
    out = []
    with catalog.session() as s:
        for c, im in s.execute(stmt).all():
            out.append({
                "id": c.id, "sha256": im.sha256, "input_key": im.blob_key, "output_key": c.output_key,
                "source": c.source, "model_version": c.model_version, "width": im.width, "height": im.height,
                "psnr_vs_input": c.psnr_vs_input, "ssim_vs_input": c.ssim_vs_input,
                "changed_fraction": c.changed_fraction, "score_before": c.score_before, "score_after": c.score_after,
                "runtime_s": c.runtime_s, "metrics": dict(c.metrics or {}),
            })
    return out


def _metrics_cell(r: dict) -> str:
    m = r["metrics"]
    items = [
        ("source", e(r["source"])),
        ("PSNR vs input (unchanged region)", _fmt(r["psnr_vs_input"]) + " dB"),
        ("SSIM vs input (unchanged region)", _fmt(r["ssim_vs_input"], 4)),
        ("changed", _fmt(r["changed_fraction"], 2, pct=True)),
        ("mean residual", _fmt(m.get("mean_residual"), 4)),
        ("predicted mask area", _fmt(m.get("mask_area"), 2, pct=True)),
        ("detector score", f"{_fmt(r['score_before'], 3)} → {_fmt(r['score_after'], 3)}"),
        ("runtime", _fmt(r["runtime_s"], 3) + " s"),
    ]
    vs = m.get("vs_clean")
    if vs:
        items.append(("vs clean copy (PSNR / SSIM)", f"{_fmt(vs.get('input_psnr'))} → {_fmt(vs.get('psnr'))} dB; "
                                                      f"{_fmt(vs.get('input_ssim'), 4)} → {_fmt(vs.get('ssim'), 4)}"))
    return '<table class="metrics">' + "".join(f"<tr><td class=muted>{k}</td><td>{v}</td></tr>" for k, v in items) + "</table>"


def _pair_table(rows: list[dict], assets: _Assets) -> str:
    if not rows:
        return '<p class="muted">no cleanings yet</p>'
    body = []
    for r in rows:
        after_key = r["metrics"].get("model_output") or r["output_key"]
        cells = [f'<td class="pair">{_img(assets.thumb(r["input_key"]), "before " + r["sha256"][:12])}'
                 f'<div class=muted>{e(r["sha256"][:12])} · {r["width"]}×{r["height"]}</div></td>',
                 f'<td class="pair">{_img(assets.thumb(after_key), "after " + r["sha256"][:12])}'
                 f'<div class=muted>{"model output" if after_key != r["output_key"] else "output"}</div></td>']
        mask_key = r["metrics"].get("mask_key")
        cells.append(f'<td class="pair">{_img(assets.overlay(r["input_key"], mask_key), "mask " + r["sha256"][:12])}'
                     f'<div class=muted>predicted mask (red)</div></td>' if mask_key else
                     '<td class="pair muted">no mask head</td>')
        if r["source"] == "duplicate" and after_key != r["output_key"]:
            cells.append(f'<td class="pair">{_img(assets.thumb(r["output_key"]), "clean copy " + r["sha256"][:12])}'
                         f'<div class=muted>clean copy (the asset)</div></td>')
        else:
            cells.append("<td></td>")
        cells.append(f"<td>{_metrics_cell(r)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return ("<table><tr><th>before</th><th>after</th><th>predicted mask</th><th>reference</th><th>metrics</th></tr>"
            + "".join(body) + "</table>")


def _rank(rows: list[dict]) -> tuple[str, list[dict]]:
    """Model cleanings ordered best first, and the criterion used: detector score after
    cleaning when a detector scored them, else PSNR vs input outside the changed region."""
    scored = [r for r in rows if r["score_after"] is not None]
    if scored:
        return "detector score after cleaning (lower is better)", sorted(scored, key=lambda r: r["score_after"])
    fid = [r for r in rows if r["psnr_vs_input"] is not None]
    return ("PSNR vs input outside the changed region (higher is better)",
            sorted(fid, key=lambda r: -r["psnr_vs_input"]))


def _training(catalog: Catalog, settings: Settings, version: str | None, assets_dir: Path) -> str:
    if not version:
        return '<p class="muted">no promoted remover</p>'
    with catalog.session() as s:
        run = s.scalar(select(TrainingRun).where(TrainingRun.model_version == version).order_by(TrainingRun.id.desc()))
        history = list(run.history or []) if run else []
        run_dir = Path(run.run_dir) if run and run.run_dir else settings.runs_dir / version
    if not history and (run_dir / "history.json").exists():
        history = json.loads((run_dir / "history.json").read_text())
    if not history:
        return f'<p class="muted">no training history recorded for {e(version)}</p>'
    from model.plots import training_curves

    name = f"curves-{''.join(c if c.isalnum() or c in '-_.' else '_' for c in version)}.png"
    training_curves(history, assets_dir / name)
    last = history[-1]
    return (f'<p><img src="assets/{e(name)}" alt="training curves of {e(version)}" style="max-width:100%"></p>'
            f"<p class=muted>{len(history)} epochs; last: "
            + ", ".join(f"{e(k)} {_fmt(v, 4)}" for k, v in last.items() if isinstance(v, int | float)) + "</p>")


def report(catalog: Catalog, blobs: BlobStore, settings: Settings, pairs: int = 24, extremes: int = 5) -> Path:
    """Write ``reports/index.html`` (and its assets) and return its path."""
    out_dir = Path(settings.reports_dir)
    assets_dir = out_dir / "assets"
    assets = _Assets(assets_dir, blobs, settings)
    with catalog.session() as s:
        stats = q.catalog_stats(s)
        remover = q.promoted_model(s, "remover")
        detector = q.promoted_model(s, "detector")
        rv = (remover.version, dict(remover.metrics or {}), remover.created_at) if remover else None
        dv = (detector.version, dict(detector.metrics or {})) if detector else None
        fails = [(f.stage, f.subject, f.error_class, f.message, f.attempts, f.last_at) for f in q.failures(s)[:20]]
    version = rv[0] if rv else None
    rows = _cleaning_rows(catalog, version)
    if not rows:  # nothing by the promoted remover yet: show whatever was cleaned
        rows = _cleaning_rows(catalog, None)
    model_rows = [r for r in rows if r["source"] == "model"]
    real = [r for r in rows if r["metrics"].get("vs_clean")]
    criterion, ranked = _rank(model_rows)
    n_show = min(extremes, len(ranked) // 2) if len(ranked) > 1 else len(ranked)

    remover_metrics = {k: v for k, v in (rv[1] if rv else {}).items() if not isinstance(v, dict | list)}
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        "<title>Unmark report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>Unmark report</h1>",
        f'<p class="muted">generated {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC · '
        f'<span id="images-status">images not checked (scripts off)</span></p>',
        "<h2>Catalog</h2><div class=cards>",
        f'<div class=card><b>images per status</b>{_kv_table(stats["images"])}</div>',
        f'<div class=card><b>dedup roles</b>{_kv_table(stats.get("dedup", {}))}</div>',
        f'<div class=card><b>failures per stage</b>{_kv_table(stats["failures"])}</div>',
        f'<div class=card><b>totals</b>{_kv_table({"pages": stats["pages"], "cleanings": stats.get("cleanings"), **{f"models ({k})": v for k, v in stats.get("models", {}).items()}})}</div>',
        "</div>",
        "<h2>Models</h2>",
        f"<p>remover: <b>{e(version) if version else 'none promoted'}</b>"
        + (f" · detector: <b>{e(dv[0])}</b>" if dv else "") + "</p>",
        _kv_table(remover_metrics) if remover_metrics else "",
        "<h3>Training curves</h3>",
        _training(catalog, settings, version, assets_dir),
        f"<h2>Before / after ({min(pairs, len(rows))} latest of {len(rows)} cleanings"
        + (f" by {e(version)}" if version and rows and rows[0]["model_version"] == version else "") + ")</h2>",
        _pair_table(rows[:pairs], assets),
        f"<h2>Best cleanings</h2><p class=muted>by {e(criterion)}</p>",
        _pair_table(ranked[:n_show], assets),
        f"<h2>Worst cleanings</h2><p class=muted>by {e(criterion)}</p>",
        _pair_table(list(reversed(ranked[len(ranked) - n_show:])) if n_show else [], assets),
        f"<h2>Real pairs ({len(real)})</h2><p class=muted>watermarked images with a clean copy in their dedup group: "
        "the model's output and the input, each against the clean copy (resized to match)</p>",
        _pair_table(real[:pairs], assets),
        "<h2>Recent failures</h2>",
        ("<table><tr><th>stage</th><th>subject</th><th>error</th><th>attempts</th><th>last</th></tr>"
         + "".join(f"<tr><td>{e(a)}</td><td>{e(b)}</td><td>{e(c)}: {e(d)}</td><td class=num>{x}</td><td>{e(t)}</td></tr>"
                   for a, b, c, d, x, t in fails) + "</table>") if fails else '<p class="muted">none</p>',
        f"<script>{SCRIPT}</script>",
        "</body></html>",
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    index = out_dir / "index.html"
    _write_atomic(index, "\n".join(parts).encode())
    return index

