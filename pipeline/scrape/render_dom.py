"""What the rendered page shows, read in the browser (``COLLECT_JS``) and turned into image
references here (``dom_refs``), by the same rules as the static walk: one URL per element, the
largest ``srcset`` candidate, the others (and the browser's own pick, ``currentSrc``) kept as
lesser candidates of the same picture.
"""

from __future__ import annotations

from urllib.parse import urljoin

from pipeline.scrape.embeds import ImageRef, normalize_url, srcset_candidates
from pipeline.scrape.styles import css_refs

# One step down the page; [at the bottom, document height]. The browser gets two frames to react.
SCROLL_JS = """async () => {
  const el = document.scrollingElement || document.documentElement;
  window.scrollBy(0, Math.max(200, window.innerHeight * 0.9));
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  return [window.innerHeight + window.scrollY >= el.scrollHeight - 2, el.scrollHeight];
}"""

# [url or srcset, alt, kind] for every element that shows a picture; computed background images
# of at most 5,000 elements; the links of the page.
COLLECT_JS = """([maxImages, maxLinks]) => {
  const out = [];
  const add = (value, alt, kind) => { if (value && out.length < maxImages) out.push([String(value), alt || "", kind]); };
  for (const img of document.querySelectorAll("img")) {
    const set = img.getAttribute("srcset");
    add(set ? set + "\\u0000" + (img.currentSrc || img.src || "") : (img.currentSrc || img.src), img.alt, set ? "srcset" : "img");
  }
  for (const s of document.querySelectorAll("picture > source[srcset]")) add(s.getAttribute("srcset"), "", "srcset");
  for (const v of document.querySelectorAll("video[poster]")) add(v.poster, v.title, "poster");
  for (const i of document.querySelectorAll("input[type=image i][src]")) add(i.src, i.alt, "input");
  for (const o of document.querySelectorAll("object[data]")) if (!o.type || o.type.startsWith("image/")) add(o.data, o.title, "object");
  for (const e of document.querySelectorAll("svg image")) add((e.href && e.href.baseVal) || e.getAttribute("xlink:href"), "", "svg");
  let n = 0;
  for (const el of document.querySelectorAll("body *")) {
    if (++n > 5000) break;
    const bg = getComputedStyle(el).backgroundImage;
    if (bg && bg !== "none" && bg.includes("url(")) add(bg, el.getAttribute("title") || el.getAttribute("aria-label"), "css");
  }
  const links = [];
  for (const a of document.querySelectorAll("a[href], area[href]")) { if (links.length >= maxLinks) break; links.push(a.href); }
  return {images: out, links: links, base: document.baseURI};
}"""


def dom_refs(dom: dict, max_images: int) -> list[ImageRef]:
    """Image references (``found_by`` ``render:dom``) from what ``COLLECT_JS`` returned."""
    base = dom.get("base") or ""
    found: dict[str, ImageRef] = {}

    def add(raw: str, alt: str, also: list[str] | tuple[str, ...] = ()) -> None:
        url = normalize_url(urljoin(base, raw.strip())) if raw and raw.strip() else None
        if not url or (url not in found and len(found) >= max_images):
            return
        others = [v for v in (normalize_url(urljoin(base, a)) for a in also) if v and v != url]
        had = found.get(url)
        if had is None:
            found[url] = ImageRef(url, alt.strip()[:2000] or None, "render:dom", tuple(dict.fromkeys(others)))
        elif others:  # a <picture>'s <source> and its <img>: one picture, candidates pooled
            found[url] = ImageRef(url, had.alt, had.found_by, tuple(dict.fromkeys([*had.also, *others])))

    for value, alt, kind in dom.get("images", []):
        if kind == "srcset":
            srcset, _, current = value.partition("\x00")
            candidates = srcset_candidates(srcset)
            if candidates:
                add(candidates[0], alt, [*candidates[1:], current])
            elif current:
                add(current, alt)
        elif kind == "css":
            for img in css_refs(value).images:
                add(img.url, alt, img.also)
        else:
            add(value, alt)
    return list(found.values())
