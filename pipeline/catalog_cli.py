"""Catalog views for people and scripts: stats, image listings, export of cleaned assets."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from typing import Any

from pipeline.images import sniff_format
from storage import BlobStore, Catalog
from storage import queries as q

EXT = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}
LIST_COLUMNS = ["sha256", "status", "label", "dedup_role", "width", "height", "url", "output", "psnr_vs_input"]


def format_images(rows: list[dict[str, Any]], fmt: str) -> str:
    """Render image rows as ``json`` or ``csv`` text (tables are drawn by the CLI with rich)."""
    if fmt == "json":
        return json.dumps(rows, indent=2, default=str)
    if fmt == "csv":
        buf = io.StringIO()
        cols = list(dict.fromkeys(LIST_COLUMNS + [k for r in rows for k in r]))
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)
        return buf.getvalue()
    raise ValueError(f"unknown format {fmt!r} (table, json or csv)")


def export_cleaned(catalog: Catalog, blobs: BlobStore, dest: str | Path, model_version: str | None = None) -> dict:
    """Copy every cleaned output (latest cleaning per image, or ``model_version``'s) to ``dest``
    as ``<sha256>.<ext>`` with ``manifest.json`` and ``manifest.csv`` describing each file."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with catalog.session() as s:
        rows = [r for r in q.list_images(s, model_version=model_version) if r.get("output")]
    manifest = []
    for r in rows:
        data = blobs.get(r["output"])
        ext = EXT.get(sniff_format(data[:16]) or "", ".bin")
        name = f"{r['sha256']}{ext}"
        tmp = dest / (name + ".part")
        tmp.write_bytes(data)
        shutil.move(tmp, dest / name)
        manifest.append({"file": name, **{k: r.get(k) for k in ("sha256", "url", "width", "height", "model_version",
                                                              "cleaning_source", "psnr_vs_input", "ssim_vs_input")}})
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    (dest / "manifest.csv").write_text(format_images(manifest, "csv") if manifest else "file\n")
    return {"dest": str(dest), "files": len(manifest)}
