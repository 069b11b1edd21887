"""The work of the crawl's pool threads: a page fetched and read (links, images, stylesheets,
opt-outs, a render when asked for), an image fetched and judged, and the robots.txt and
stylesheet fetches they need. Everything here runs on worker threads and hands back a
``PageResult`` / ``ImageResult``; the crawl thread (``pipeline.scrape.crawl``) turns those into
catalog rows."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.config import Settings
from pipeline.images import BadImage, inspect_image, sniff_format
from pipeline.scrape.extract import ExtractError, ImageRef, extract
from pipeline.scrape.fetch import Fetcher, FetchError, host_key
from pipeline.scrape.render_step import RenderStep
from pipeline.scrape.robots import ROBOTS_MAX_BYTES, RobotsPolicy, agent_token, opt_out_of, parse_directives
from pipeline.scrape.seeds import site_of, sitemap_locs
from pipeline.scrape.sheets import SHEET_STAGE, Stylesheets
from storage import BlobStore


def content_charset(content_type: str | None) -> str | None:
    for part in (content_type or "").split(";")[1:]:
        k, _, v = part.partition("=")
        if k.strip().lower() == "charset" and v.strip():
            return v.strip().strip("\"'")
    return None


# --- what the workers hand back ---------------------------------------------------------


@dataclass
class PageResult:
    url: str
    depth: int
    final_url: str = ""
    status: int | None = None
    etag: str | None = None
    last_modified: str | None = None
    not_modified: bool = False
    opted_out: str | None = None
    images: list[ImageRef] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    sitemap: tuple[str, list[str]] | None = None
    error: Exception | None = None
    failures: list[tuple[str, str, Exception]] = field(default_factory=list)  # (stage, subject, error) beside the page's own
    cleared: list[tuple[str, str]] = field(default_factory=list)  # (stage, subject) that succeeded this time


@dataclass
class ImageResult:
    url: str
    sha256: str = ""
    row: dict | None = None
    error: Exception | None = None


class Workers:
    """What a pool thread runs for the crawl: ``page`` and ``image``. Thread-safe; robots.txt
    failures are queued in ``robots_failures`` for the crawl thread to record."""

    def __init__(self, settings: Settings, fetcher: Fetcher, blobs: BlobStore, render: str,
                 site_render: dict[str, str]):
        self.settings, self.fetcher, self.blobs = settings, fetcher, blobs
        self.token = agent_token(settings.scrape.user_agent)
        self.robots = RobotsPolicy(settings.scrape.user_agent, self._fetch_robots, self._robots_failed)
        self.robots_failures: list[tuple[str, BaseException]] = []
        self.render = RenderStep(settings.scrape, render, site_render,
                                 lambda url, cap: self.fetcher.get(url, cap, allow=self.allowed), site_of)
        scrape = settings.scrape
        self.sheets = Stylesheets(self._fetch_sheet, scrape.max_stylesheets_per_page, scrape.max_import_depth,
                                  scrape.max_images_per_page)

    def _fetch_robots(self, robots_url: str) -> tuple[int, bytes]:
        resp = self.fetcher.get(robots_url, ROBOTS_MAX_BYTES)
        return resp.status, resp.body

    def _robots_failed(self, robots_url: str, exc: BaseException) -> None:
        self.robots_failures.append((robots_url, exc))  # list.append is atomic; drained by the writer

    def allowed(self, url: str) -> bool:
        ok, delay = self.robots.check(url)
        if delay:
            self.fetcher.gate.set_delay(host_key(url), min(delay, self.settings.scrape.max_crawl_delay_s))
        return ok

    def _fetch_sheet(self, url: str) -> tuple[str, str]:
        resp = self.fetcher.get(url, self.settings.scrape.max_page_bytes, allow=self.allowed)
        if not 200 <= resp.status < 300:
            raise FetchError(url, f"http-{resp.status}", status=resp.status)
        charset = content_charset(resp.headers.get("Content-Type")) or "utf-8"
        try:
            return resp.url, resp.body.decode(charset, "replace")
        except LookupError:
            return resp.url, resp.body.decode("utf-8", "replace")

    def _add_sheet_images(self, out: PageResult, sheets: list[str]) -> None:
        """The images of the page's stylesheets, after its own (each URL once)."""
        got = self.sheets.images(sheets)
        out.failures.extend((SHEET_STAGE, url, exc) for url, exc in got.failed)
        out.cleared.extend((SHEET_STAGE, url) for url in got.fetched)
        have = {r.url for r in out.images}
        room = self.settings.scrape.max_images_per_page - len(out.images)
        out.images.extend([r for r in got.images if r.url not in have][:max(0, room)])

    def page(self, url: str, depth: int, validators: tuple[str | None, str | None]) -> PageResult:
        try:
            return self._page(url, depth, validators)
        except Exception as exc:  # noqa: BLE001 - one hostile page must never end the crawl; it becomes a failure row
            return PageResult(url=url, depth=depth, error=exc)

    def _page(self, url: str, depth: int, validators: tuple[str | None, str | None]) -> PageResult:
        s = self.settings.scrape
        out = PageResult(url=url, depth=depth)
        headers = {}
        if validators[0]:
            headers["If-None-Match"] = validators[0]
        if validators[1]:
            headers["If-Modified-Since"] = validators[1]
        try:
            resp = self.fetcher.get(url, s.max_page_bytes, headers=headers, allow=self.allowed)
        except FetchError as exc:
            out.error = exc
            return out
        out.final_url, out.status = resp.url, resp.status
        if resp.status == 304:
            out.not_modified = True
            return out
        if resp.status >= 400 or not 200 <= resp.status < 300:
            out.error = FetchError(url, f"http-{resp.status}", status=resp.status)
            return out
        out.etag, out.last_modified = resp.headers.get("ETag"), resp.headers.get("Last-Modified")
        body = resp.body
        out.sitemap = sitemap_locs(body)
        if out.sitemap is not None:
            return out
        if sniff_format(body[:16]) is not None or b"\x00" in body[:1024]:
            out.error = FetchError(url, "not-html", "the page's bytes are binary, not HTML")
            return out
        try:
            found = extract(body, resp.url, content_charset(resp.headers.get("Content-Type")),
                            robots_names=("robots", self.token), max_links=s.max_links_per_page,
                            max_images=s.max_images_per_page, icons=s.scrape_icons)
        except ExtractError as exc:
            out.error = exc
            return out
        directives = parse_directives(resp.robots_tags, self.token) | parse_directives(found.robots, "")
        out.opted_out = opt_out_of(directives)
        follow = not ("nofollow" in directives or "none" in directives)
        out.images = [] if out.opted_out else found.images
        out.links = found.links if follow else []
        if found.stylesheets and not out.opted_out:
            self._add_sheet_images(out, found.stylesheets)
        if not out.opted_out and self.render.wanted(resp.url, len(out.images), found.scripts):
            self.render.apply(out, body, resp.headers.get("Content-Type") or "", follow)
        return out

    def image(self, url: str) -> ImageResult:
        s = self.settings.scrape
        try:
            resp = self.fetcher.get(url, s.max_image_bytes, allow=self.allowed)
            if not 200 <= resp.status < 300:
                raise FetchError(url, f"http-{resp.status}", status=resp.status)
            opted = opt_out_of(parse_directives(resp.robots_tags, self.token))
            if opted:
                raise FetchError(url, "opted-out", f"X-Robots-Tag {opted}")
            info = inspect_image(resp.body, max_pixels=self.settings.images.max_image_pixels, min_side=s.min_image_side)
            # blob first: a row never points at a missing blob (the writer syncs before it commits)
            sha, key = self.blobs.put(resp.body, durable=False)
        except (FetchError, BadImage) as exc:
            return ImageResult(url, error=exc)
        except Exception as exc:  # noqa: BLE001 - one bad URL must never end the crawl; it becomes a failure row
            return ImageResult(url, error=exc)
        row = {"sha256": sha, "blob_key": key, "mime": info.mime, "width": info.width, "height": info.height,
               "bytes": len(resp.body), "source": "scrape"}
        return ImageResult(url, sha256=sha, row=row)
