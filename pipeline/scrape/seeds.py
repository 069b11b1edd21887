"""What a crawl starts from: seed URLs (and files of them, with per-seed options), the site a URL
belongs to, and the URLs an XML sitemap lists."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from lxml import etree

from pipeline.scrape.embeds import normalize_url
from pipeline.scrape.render_step import RenderModeError, check_mode


class SeedError(ValueError):
    """A seed that is neither an http(s) URL nor a readable file of URLs."""


def read_seed_file(path: Path) -> list[str]:
    """The seed lines of a seeds file: one seed (a URL, then its options) a line; ``#`` starts a
    comment, to the end of the line; blank lines are skipped."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [line for raw in lines if (line := raw.split("#", 1)[0].strip())]


def expand_seeds(seeds: Iterable[str], render: dict[str, str] | None = None) -> list[str]:
    """Seed URLs; an argument naming a local file contributes its seeds (:func:`read_seed_file`).

    A seed may carry options after the URL: ``https://site/ render=always`` renders that seed's
    site (``never`` / ``auto`` / ``always``); ``render`` (when given) receives ``{site: mode}``."""
    out: list[str] = []
    for seed in seeds:
        seed = seed.strip()
        path = Path(seed)
        if "://" not in seed and path.is_file():
            out.extend(expand_seeds(read_seed_file(path), render))
            continue
        first, *options = seed.split()
        url = normalize_url(first) if first else None
        if url is None:
            raise SeedError(f"not an http(s) URL or a file of URLs: {seed!r}")
        for option in options:
            key, _, value = option.partition("=")
            if key != "render":
                raise SeedError(f"unknown seed option {option!r} in {seed!r} (known: render=never|auto|always)")
            try:
                mode = check_mode(value, f"seed {first}")
            except RenderModeError as exc:
                raise SeedError(str(exc)) from exc
            if render is not None:
                render[site_of(url)] = mode
        out.append(url)
    return list(dict.fromkeys(out))


def site_of(url: str) -> str:
    host = (urlsplit(url).hostname or "").lower()
    return host[4:] if host.startswith("www.") else host


def sitemap_locs(body: bytes) -> tuple[str, list[str]] | None:
    """``("urlset" | "sitemapindex", [loc, ...])`` when ``body`` is an XML sitemap, else None."""
    head = body[:2048].lstrip()
    if not (head.startswith(b"<?xml") or head.startswith(b"<urlset") or head.startswith(b"<sitemapindex")):
        return None
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, recover=True)
    try:
        root = etree.fromstring(body, parser=parser)
    except etree.XMLSyntaxError:
        return None
    if root is None:
        return None
    kind = etree.QName(root).localname
    if kind not in ("urlset", "sitemapindex"):
        return None
    locs = [el.text.strip() for el in root.iter() if isinstance(el.tag, str)
            and etree.QName(el).localname == "loc" and el.text and el.text.strip()]
    return kind, locs
