"""The demo's sample website: photos that ship with the installed libraries, published in every
way a page embeds an image, some watermarked in styles the training generator never draws.

``build_site`` writes a static site to a folder and returns what it put there (``SiteManifest``);
``serve_site`` serves a folder on 127.0.0.1 at a free port. The demo run itself (Prefect, the
progress display) lives in ``flows/demo.py``; the tests use the same site at a smaller size.

What the site holds, so that every step has something real to do:
- clean photos and crops of them (the clean pool the remover trains on);
- watermarked copies: a logo drawn here (a ring, a star and initials, pasted whole at a corner)
  and tiled diagonal text in a font the generator does not use (matplotlib's STIX / Computer
  Modern); some of them also published clean (real pairs: the clean copy is a free asset),
  the others only watermarked (the remover has to clean them);
- near duplicates (a smaller recompressed JPEG, a PNG of a JPEG, a WebP in ``<picture>``) and
  an exact duplicate linked from two pages;
- broken files: a truncated JPEG, HTML named ``.jpg``, an empty file, an image below the
  minimum size, and a link to a file that does not exist.
"""

from __future__ import annotations

import contextlib
import functools
import html
import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Embedding styles, one page each (plus the index and a nested archive page).
STYLES = ("img", "srcset", "lazy", "picture", "meta", "css", "link")


@dataclass
class SiteManifest:
    """What ``build_site`` published: file names by role, and the pages."""

    root: Path
    pages: list[str] = field(default_factory=list)
    clean: list[str] = field(default_factory=list)
    watermarked: list[str] = field(default_factory=list)
    paired: list[str] = field(default_factory=list)  # watermarked files whose clean copy is also on the site
    near_duplicates: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # linked, never written (404)

    @property
    def image_files(self) -> list[str]:
        """Every valid image file linked from the site (clean, watermarked, near duplicates)."""
        return self.clean + self.watermarked + self.near_duplicates

    def as_dict(self) -> dict:
        return {
            "pages": len(self.pages),
            "clean": len(self.clean),
            "watermarked": len(self.watermarked),
            "paired": len(self.paired),
            "near_duplicates": len(self.near_duplicates),
            "broken": len(self.broken) + len(self.missing),
        }


# --- the photos ---------------------------------------------------------------------------


def sample_photos() -> dict[str, np.ndarray]:
    """Colour photos (HxWx3 uint8) that load without the network: scikit-image, scikit-learn
    and matplotlib samples."""
    from matplotlib import cbook
    from skimage import data
    from sklearn.datasets import load_sample_images

    photos = {
        "astronaut": data.astronaut(),
        "chelsea": data.chelsea(),
        "coffee": data.coffee(),
        "rocket": data.rocket(),
    }
    left, right, _ = data.stereo_motorcycle()
    photos["motorcycle-left"], photos["motorcycle-right"] = left, right
    sk = load_sample_images()
    for name, img in zip(sk.filenames, sk.images, strict=True):
        photos[Path(name).stem] = img  # china, flower
    with cbook.get_sample_data("grace_hopper.jpg") as fh:
        photos["grace-hopper"] = np.asarray(Image.open(fh).convert("RGB"))
    return {k: np.ascontiguousarray(v[..., :3], dtype=np.uint8) for k, v in photos.items()}


def _crop(img: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    h, w = img.shape[:2]
    x0, y0, x1, y1 = box
    return img[int(y0 * h) : int(y1 * h), int(x0 * w) : int(x1 * w)]


def _fit(img: Image.Image, max_side: int) -> Image.Image:
    scale = max_side / max(img.size)
    if scale >= 1:
        return img
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS)


def _encode(img: Image.Image, fmt: str, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.convert("RGB").save(buf, "JPEG", quality=quality)
    else:
        img.save(buf, fmt)
    return buf.getvalue()


# --- watermarks the training generator does not draw -----------------------------------------


def _mpl_font(name: str, size: int) -> ImageFont.FreeTypeFont:
    """A font that ships inside matplotlib (so the demo needs no system fonts)."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name
    return ImageFont.truetype(str(path), size)


def draw_logo(size: int, rng: np.random.Generator) -> Image.Image:
    """A studio logo, drawn from scratch: a thick ring, a five-point star and two initials,
    in one random colour, on a transparent background (RGBA, ``size`` px square)."""
    logo = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(logo)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3)) + (255,)
    ring = max(2, size // 12)
    d.ellipse([ring, ring, size - ring, size - ring], outline=colour, width=ring)
    c, r_out, r_in = size / 2, size * 0.30, size * 0.12
    angles = np.deg2rad(np.arange(10) * 36 - 90)
    radii = np.where(np.arange(10) % 2 == 0, r_out, r_in)
    d.polygon([(c + r * np.cos(a), c + r * np.sin(a) - size * 0.06) for r, a in zip(radii, angles, strict=True)],
              fill=colour)
    font = _mpl_font("cmb10.ttf", max(8, size // 6))
    d.text((c, size * 0.78), "UM", font=font, fill=colour, anchor="mm")
    return logo


def stamp_logo(img: Image.Image, logo: Image.Image, opacity: float, corner: str = "br") -> Image.Image:
    """Paste ``logo`` whole at a corner with the given opacity."""
    base = img.convert("RGBA")
    alpha = logo.getchannel("A").point(lambda a: int(a * opacity))
    mark = logo.copy()
    mark.putalpha(alpha)
    margin = max(4, min(base.size) // 30)
    x = margin if corner[1] == "l" else base.width - logo.width - margin
    y = margin if corner[0] == "t" else base.height - logo.height - margin
    base.alpha_composite(mark, (max(0, x), max(0, y)))
    return base.convert("RGB")


def tile_text(img: Image.Image, text: str, opacity: float, angle: float = 30.0) -> Image.Image:
    """Diagonal text repeated over the whole image, in STIX bold italic."""
    base = img.convert("RGBA")
    size = max(10, min(base.size) // 11)
    font = _mpl_font("STIXGeneralBolIta.ttf", size)
    diag = int((base.width**2 + base.height**2) ** 0.5) + 2 * size
    layer = Image.new("RGBA", (diag, diag), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    step_x = int(d.textlength(text + "   ", font=font))
    for row, y in enumerate(range(0, diag, size * 3)):
        for x in range(-(row % 2) * step_x // 2, diag, step_x):
            d.text((x, y), text, font=font, fill=(255, 255, 255, int(255 * opacity)))
    layer = layer.rotate(angle, resample=Image.BICUBIC)
    left, top = (diag - base.width) // 2, (diag - base.height) // 2
    base.alpha_composite(layer.crop((left, top, left + base.width, top + base.height)))
    return base.convert("RGB")


# --- the site --------------------------------------------------------------------------------


def build_site(dest: str | Path, max_side: int = 640, seed: int = 0, photos: list[str] | None = None) -> SiteManifest:
    """Write the sample site under ``dest`` and return what it holds. ``max_side`` bounds every
    image (the tests use a small one); ``photos`` restricts which sample photos are used."""
    dest = Path(dest)
    img_dir = dest / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    all_photos = sample_photos()
    names = photos or list(all_photos)
    man = SiteManifest(root=dest)

    def write(name: str, img: Image.Image, fmt: str = "JPEG", quality: int = 92) -> str:
        (img_dir / name).write_bytes(_encode(img, fmt, quality))
        return f"img/{name}"

    # Each photo: the whole photo and two crops published clean; a third crop only watermarked.
    crops = {"a": (0.0, 0.0, 0.62, 0.62), "b": (0.38, 0.38, 1.0, 1.0), "c": (0.2, 0.0, 0.85, 0.7)}
    per_style: dict[str, list[str]] = {s: [] for s in STYLES}
    style_cycle = iter(np.resize(np.array(STYLES), 10 * len(names)))
    for i, name in enumerate(names):
        full = _fit(Image.fromarray(all_photos[name]), max_side)
        man.clean.append(write(f"{name}.jpg", full))
        for part in ("a", "b"):
            crop = _fit(Image.fromarray(_crop(all_photos[name], crops[part])), max_side)
            man.clean.append(write(f"{name}-{part}.jpg", crop))
        crop_c = _fit(Image.fromarray(_crop(all_photos[name], crops["c"])), max_side)
        opacity = float(rng.uniform(0.45, 0.8))
        if i % 2 == 0:
            logo = draw_logo(max(24, min(crop_c.size) // 3), rng)
            marked = stamp_logo(crop_c, logo, opacity, corner=["br", "bl", "tr", "tl"][i % 4])
        else:
            marked = tile_text(crop_c, "© UNMARK DEMO", opacity * 0.6, angle=float(rng.uniform(20, 45)))
        man.watermarked.append(write(f"{name}-c-marked.jpg", marked))
        # Every third photo is also published watermarked whole, next to its clean copy (a real pair).
        if i % 3 == 0:
            logo = draw_logo(max(24, min(full.size) // 4), rng)
            pair = write(f"{name}-marked.jpg", stamp_logo(full, logo, 0.7))
            man.watermarked.append(pair)
            man.paired.append(pair)

    # Near duplicates: a smaller, harder-compressed JPEG; a PNG of a JPEG; a WebP used in <picture>.
    first = Image.open(dest / man.clean[0])
    man.near_duplicates.append(write("small-copy.jpg", first.resize((first.width // 2, first.height // 2)), quality=45))
    second = Image.open(dest / man.clean[3 if len(man.clean) > 3 else 0])
    man.near_duplicates.append(write("copy.png", second, "PNG"))
    man.near_duplicates.append(write("copy.webp", second, "WEBP"))

    # Broken files and a missing one.
    good_jpeg = (dest / man.clean[0]).read_bytes()
    (img_dir / "truncated.jpg").write_bytes(good_jpeg[: len(good_jpeg) // 3])
    (img_dir / "not-an-image.jpg").write_text("<html><body>this is not a photo</body></html>")
    (img_dir / "empty.png").write_bytes(b"")
    (img_dir / "tiny.png").write_bytes(_encode(Image.new("RGB", (16, 16), (200, 30, 30)), "PNG"))
    man.broken = ["img/truncated.jpg", "img/not-an-image.jpg", "img/empty.png", "img/tiny.png"]
    man.missing = ["img/does-not-exist.jpg"]

    # Spread the valid images over the embedding styles; the broken ones go on the links page.
    for path in man.clean + man.watermarked + man.near_duplicates[:2]:
        per_style[str(next(style_cycle))].append(path)
    _write_pages(dest, man, per_style)
    return man


def _write_pages(dest: Path, man: SiteManifest, per_style: dict[str, list[str]]) -> None:
    esc = functools.partial(html.escape, quote=True)

    def page(title: str, body: str, head: str = "", prefix: str = "") -> str:
        return (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{esc(title)}</title>{head}</head>\n"
                f"<body><h1>{esc(title)}</h1>\n{body}\n<p><a href='{prefix}index.html'>home</a></p></body></html>\n")

    def alt(path: str) -> str:
        return esc(Path(path).stem.replace("-", " "))

    bodies: dict[str, tuple[str, str]] = {}
    bodies["img"] = ("".join(f"<img src='{p}' alt='{alt(p)}'>\n" for p in per_style["img"]), "")
    bodies["srcset"] = ("".join(
        f"<img src='{p}' srcset='{p} 1x, {p} 2x' alt='{alt(p)}'>\n" for p in per_style["srcset"][:1]
    ) + "".join(
        f"<img srcset='img/tiny.png 16w, {p} 640w' sizes='50vw' alt='{alt(p)}'>\n" for p in per_style["srcset"][1:]
    ), "")
    bodies["lazy"] = ("".join(
        f"<img src='data:image/gif;base64,R0lGODlhAQABAAAAACw=' data-src='{p}' class='lazy' alt='{alt(p)}'>\n"
        for p in per_style["lazy"]
    ), "")
    bodies["picture"] = ("".join(
        f"<picture><source srcset='{p}' type='image/jpeg'><img src='{p}' alt='{alt(p)}'></picture>\n"
        for p in per_style["picture"]
    ) + ("<picture><source srcset='img/copy.webp' type='image/webp'>"
         f"<img src='{man.near_duplicates[1]}' alt='copy'></picture>\n"), "")
    meta = per_style["meta"]
    head = "".join(
        [f"<meta property='og:image' content='{meta[0]}'>" if meta else "",
         f"<meta name='twitter:image' content='{meta[1]}'>" if len(meta) > 1 else "",
         f"<link rel='image_src' href='{meta[2]}'>" if len(meta) > 2 else ""]
    )
    bodies["meta"] = ("<p>The picture of this page is in its metadata.</p>\n" + "".join(
        f"<img src='{p}' alt='{alt(p)}'>\n" for p in meta[3:]
    ), head)
    bodies["css"] = ("".join(
        f"<div style=\"width:300px;height:200px;background-image: url('{p}')\"></div>\n" for p in per_style["css"]
    ), "")
    bodies["link"] = ("<ul>\n" + "".join(
        f"<li><a href='{p}'>{alt(p)}</a></li>\n" for p in per_style["link"] + man.broken + man.missing
    ) + "</ul>\n", "")

    links = "".join(f"<li><a href='{s}.html'>{s}</a></li>\n" for s in STYLES)
    # The index shows one image that the img page shows too (an exact duplicate: two sightings).
    shared = per_style["img"][:1]
    index_body = (f"<ul>\n{links}<li><a href='archive/older.html'>archive</a></li>\n</ul>\n"
                  + "".join(f"<img src='{p}' alt='{alt(p)}'>\n" for p in shared))
    (dest / "index.html").write_text(page("Unmark demo site", index_body))
    man.pages.append("index.html")
    for style, (body, head) in bodies.items():
        (dest / f"{style}.html").write_text(page(f"{style} images", body, head))
        man.pages.append(f"{style}.html")
    # A page two links deep, with a <base href> so its relative links resolve against the site root.
    archive = dest / "archive"
    archive.mkdir(exist_ok=True)
    older = man.near_duplicates[:1]
    (archive / "older.html").write_text(page(
        "archive", "".join(f"<img src='{p}' alt='{alt(p)}'>\n" for p in older), head="<base href='../'>"))
    man.pages.append("archive/older.html")
    (dest / "robots.txt").write_text("User-agent: *\nAllow: /\n")


# --- serving ---------------------------------------------------------------------------------


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # the demo has its own display
        pass


@contextlib.contextmanager
def serve_site(root: str | Path, port: int = 0) -> Iterator[str]:
    """Serve ``root`` on 127.0.0.1 (a free port unless given) in a background thread; yields the
    base URL (ending in ``/``) and stops the server on exit."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="demo-site", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
