"""``unmark scrape``: crawl pages from seed URLs, find every image, fetch it politely and safely
into the catalog.

Stages, in the order a URL meets them:

* ``seeds``: seed URLs, files of URLs and sitemaps; per-seed options (``render=``); sites.
* ``crawl``: the run (``scrape``): frontier, page and image scheduling, resumption, the summary.
* ``workers``: what the pool threads do for the crawl: a page fetched and read, an image fetched
  and judged (``pipeline.images`` validates the bytes).
* ``robots``: robots.txt (allow, crawl-delay) and the noai / noindex opt-outs.
* ``fetch``: polite, bounded GETs: redirects by hand, retries and Retry-After, per-host gates,
  byte caps, deadlines and the failure reasons, over ``client``.
* ``client``: the HTTP client (libcurl through pycurl: HTTP/2, brotli, proxies from the
  environment): connections only to the address ``ssrf`` checked, caps on decoded bytes.
* ``ssrf``: the address guard: resolve, refuse anything but global addresses, pin the result.
* ``extract`` / ``embeds`` / ``styles``: a page's links, images and stylesheets (HTML and CSS).
* ``sheets``: linked stylesheets and their ``@import``, fetched under the page's rules.
* ``render_step`` / ``render`` / ``render_dom``: pages in headless Chromium (``--render``), every
  request fulfilled by ``fetch``.
* ``writer``: the catalog's one writer for the crawl, committing rows in batches.

Callers import the module they need (``from pipeline.scrape.crawl import scrape``); this package
imports nothing on its own.
"""
