"""The demo's review: the site's truth (the demo built the site, so it knows each image's label)
and how triage's labels compare with it. The demo never replaces triage's labels with it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.demo.site import SiteManifest

def site_labels(manifest: SiteManifest) -> dict[str, str]:
    """The true triage label of every valid image on the site, by its path on the site."""
    truth = {p: "clean" for p in manifest.clean + manifest.near_duplicates}
    truth.update({p: "watermarked" for p in manifest.watermarked})
    return truth


def site_path(url: str | None, base_url: str) -> str | None:
    """``url``'s path on the site served at ``base_url``, or None when it is not the site's. Any
    port matches: the site is served on a fresh port each run, and an image keeps the URL it was
    first seen at (a second demo on the same home finds its images under the first run's port)."""
    from urllib.parse import urlsplit

    if not url:
        return None
    if url.startswith(base_url):
        return url.removeprefix(base_url)
    u, b = urlsplit(url), urlsplit(base_url)
    if (u.scheme, u.hostname) != (b.scheme, b.hostname) or u.scheme not in ("http", "https"):
        return None
    return u.path.removeprefix(b.path) if u.path.startswith(b.path) else None


def triage_agreement(catalog, labels: dict[str, str], base_url: str) -> dict[str, int]:
    """How triage's labels compare with the site's truth, on the site's images:
    ``images``, ``right`` (same label; ``uncertain`` is never right), ``watermarked`` (true),
    ``watermarked_found`` (labelled watermarked) and ``watermarked_called_clean`` (the ones that
    would go into the remover's clean pool)."""
    from storage import queries as q

    out = dict.fromkeys(("images", "right", "watermarked", "watermarked_found", "watermarked_called_clean"), 0)
    with catalog.session() as s:
        for row in q.list_images(s):
            truth = labels.get(site_path(row["url"], base_url))
            if truth is None:
                continue
            out["images"] += 1
            out["right"] += row["label"] == truth
            if truth == "watermarked":
                out["watermarked"] += 1
                out["watermarked_found"] += row["label"] == "watermarked"
                out["watermarked_called_clean"] += row["label"] == "clean"
    return out
