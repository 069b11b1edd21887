"""The report's HTML pieces: escaping, number formats, the page shell, its style and its script.

The script (no server, works from ``file://``) does three things once a page has loaded:
- writes how many of its images loaded into ``#images-status`` and each image's
  ``naturalWidth`` into ``data-natural-width`` (the tests read both in a headless browser);
- counts script errors and images that failed to load into ``#page-errors``
  (``data-count``), caught from the start of the page;
- sorts the rows of ``table.cleanings`` by a ``data-*`` value when a sort button is pressed, and
  filters them (all | model | duplicate, i.e. real pairs | marked: a region was found) when a
  filter button is; or on load, from the address: ``#sort=KEY-asc|desc&filter=WHICH`` (so a
  sorted, filtered page can be linked).
"""

from __future__ import annotations

import html
import json
from typing import Any

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }
h1 { margin-bottom: 0 } h2 { border-bottom: 1px solid #ccc; margin-top: 2em }
table { border-collapse: collapse; } td, th { padding: 4px 8px; border-bottom: 1px solid #eee; vertical-align: top; text-align: left }
.num { text-align: right; font-variant-numeric: tabular-nums }
.pair img { max-width: 240px; max-height: 240px; display: block; background: #ddd }
.zoom { display: flex; gap: 4px } .zoom img { image-rendering: pixelated; display: block; background: #ddd }
.muted { color: #777 } .metrics td { padding: 1px 6px; border: 0 }
.cards { display: flex; flex-wrap: wrap; gap: 12px } .card { border: 1px solid #ddd; padding: 6px }
.figs { display: flex; flex-wrap: wrap; gap: 12px } .figs figure { margin: 0; max-width: 440px }
.figs img { max-width: 440px; max-height: 330px; display: block } figcaption { font-size: 12px; color: #555 }
nav a, nav b { margin-right: 6px } .sorts button { margin-right: 4px }
"""

# Installed in <head>, before any image: catches errors (capture phase sees image load errors too).
EARLY_SCRIPT = """
window.__pageErrors = [];
window.addEventListener('error', function (ev) {
  var t = ev.target;
  window.__pageErrors.push(t && t.tagName === 'IMG' ? 'image failed to load: ' + t.getAttribute('src') : String(ev.message));
}, true);
"""

SCRIPT = """
function unmarkSort(key, dir) {
  var body = document.querySelector('table.cleanings tbody');
  if (!body) { return; }
  var rows = Array.prototype.slice.call(body.rows);
  rows.sort(function (a, b) {
    var x = parseFloat(a.getAttribute('data-' + key)), y = parseFloat(b.getAttribute('data-' + key));
    if (isNaN(x) && isNaN(y)) { return 0; } if (isNaN(x)) { return 1; } if (isNaN(y)) { return -1; }
    return dir * (x - y);
  });
  rows.forEach(function (r) { body.appendChild(r); });
  var shown = document.getElementById('sorted-by');
  if (shown) { shown.textContent = 'sorted on this page by ' + key + (dir > 0 ? ' (ascending)' : ' (descending)'); }
}
document.querySelectorAll('button[data-sort]').forEach(function (b) {
  b.addEventListener('click', function () { unmarkSort(b.getAttribute('data-sort'), parseInt(b.getAttribute('data-dir'), 10)); });
});
function unmarkFilter(which) {
  var n = 0;
  document.querySelectorAll('table.cleanings tbody tr').forEach(function (r) {
    var keep = which === 'all' || r.getAttribute('data-source') === which || (which === 'marked' && r.getAttribute('data-marked') === '1');
    r.hidden = !keep;
    if (keep) { n++; }
  });
  var shown = document.getElementById('filtered-by');
  if (shown) { shown.textContent = which === 'all' ? '' : n + ' shown (' + which + ')'; }
}
document.querySelectorAll('button[data-filter]').forEach(function (b) {
  b.addEventListener('click', function () { unmarkFilter(b.getAttribute('data-filter')); });
});
window.addEventListener('load', function () {
  var m = /[#&]sort=([a-z_]+)-(asc|desc)(&|$)/.exec(location.hash);
  if (m) { unmarkSort(m[1], m[2] === 'asc' ? 1 : -1); }
  var f = /[#&]filter=(all|model|duplicate|marked)(&|$)/.exec(location.hash);
  if (f) { unmarkFilter(f[1]); }
  var imgs = document.querySelectorAll('img'), ok = 0;
  imgs.forEach(function (im) {
    im.setAttribute('data-natural-width', im.naturalWidth);
    if (im.complete && im.naturalWidth > 0) { ok++; }
  });
  document.getElementById('images-status').textContent = ok + ' of ' + imgs.length + ' images loaded';
  var errs = document.getElementById('page-errors');
  errs.setAttribute('data-count', window.__pageErrors.length);
  errs.textContent = window.__pageErrors.length + ' page errors' + (window.__pageErrors.length ? ': ' + window.__pageErrors.join('; ') : '');
});
"""


def e(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def fmt(v: Any, digits: int = 2, pct: bool = False) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{100 * v:.{digits}f} %" if pct else f"{v:.{digits}f}"
    return e(v)


def img(src: str | None, alt: str, lazy: bool = False) -> str:
    """An ``<img>`` of an asset, or a note when the asset could not be made. ``lazy`` for images
    beyond the first screen: a page of many rows then loads only what is scrolled to."""
    if not src:
        return '<span class="muted">(unreadable)</span>'
    return f'<img src="{e(src)}" alt="{e(alt)}" loading="{"lazy" if lazy else "eager"}">'


def kv_table(d: dict, cls: str = "") -> str:
    rows = "".join(f"<tr><th>{e(k)}</th><td class=num>{fmt(v) if not isinstance(v, dict) else e(json.dumps(v))}</td></tr>"
                   for k, v in d.items())
    return f'<table class="{cls}">{rows or "<tr><td class=muted>none</td></tr>"}</table>'


def page(title: str, generated: str, body: list[str]) -> bytes:
    """A whole page: the head (style, the early error catcher), the status line, ``body``, the script."""
    return "\n".join([
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{e(title)}</title>",
        f"<style>{CSS}</style><script>{EARLY_SCRIPT}</script></head><body>",
        f"<h1>{e(title)}</h1>",
        f'<p class="muted">generated {e(generated)} UTC · '
        '<span id="images-status">images not checked (scripts off)</span> · '
        '<span id="page-errors" data-count="">page errors not checked</span></p>',
        *body,
        f"<script>{SCRIPT}</script>",
        "</body></html>",
    ]).encode()
