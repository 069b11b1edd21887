"""The demo's fixture: not a pipeline stage, but what ``unmark demo`` and the tests run the stages on.

- ``site``: a sample website built from photos that ship with the installed libraries, published
  in every way a page embeds an image, some watermarked (``build_site``), and served on
  127.0.0.1 (``serve_site``);
- ``review``: the site's truth and triage's agreement with it (``site_labels``,
  ``triage_agreement``);
- ``environment``: the demo's process environment (``demo_environment``).

The demo run itself (Prefect, the progress display) lives in ``flows/demo.py``.
"""

from pipeline.demo.environment import DEMO_ENV, demo_environment
from pipeline.demo.review import site_labels, site_path, triage_agreement
from pipeline.demo.site import (
           SiteManifest,
           build_site,
           draw_logo,
           sample_photos,
           serve_site,
           stamp_logo,
           tile_text,
)

__all__ = ["DEMO_ENV", "SiteManifest", "build_site", "demo_environment", "draw_logo", "sample_photos", "serve_site",
           "site_labels", "site_path", "stamp_logo", "tile_text", "triage_agreement"]
