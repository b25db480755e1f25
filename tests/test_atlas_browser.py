"""The atlas in a real browser: Debian's headless Chromium driven by Playwright.

Opens the tiny run's atlas (conftest.atlas_site) from file:// and from a local HTTP
server, follows a layer link, a map link and comes back, and checks that nothing
failed: no console errors, no failed requests, no HTTP errors, and a screenshot
that is not blank. Skips only when chromium or playwright is absent (.ci/run
installs both).
"""

import functools
import http.server
import io
import threading
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]  # shared/FACTS.md

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed "
                                                             "(pip install -e '.[test]')")
if not Path(CHROMIUM).is_file():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; .ci/run does)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:  # a fresh temporary profile per launch
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def server(atlas_site):
    """The site served by Python's http.server on a free local port: its base URL."""
    _, site, _ = atlas_site
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class Watched:
    """A page with every console error, page error, failed request and HTTP error kept."""

    def __init__(self, browser):
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.problems = []
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(
            f"console: {m.text}"))
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("requestfailed", lambda r: self.problems.append(
            f"failed: {r.url} {r.failure}"))
        self.page.on("response", lambda r: r.status >= 400 and self.problems.append(
            f"HTTP {r.status}: {r.url}"))

    def settle(self):
        self.page.wait_for_load_state("networkidle")


def not_blank(png: bytes) -> float:
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), np.float32)
    return float(pixels.var())


@pytest.mark.slow  # end to end; -m 'not slow' skips it, CI runs it
@pytest.mark.parametrize("how", ["file", "http"])
def test_browse_index_layer_map_and_back(browser, atlas_site, how, request, tmp_path):
    _, site, _ = atlas_site
    base = site.as_uri() + "/" if how == "file" else request.getfixturevalue("server")
    watched = Watched(browser)
    page = watched.page
    page.goto(base + "index.html")
    watched.settle()
    assert "zfjax atlas" in page.title()

    page.click("table.layers a[href='conv2.html']")  # a layer link
    page.wait_for_url(base + "conv2.html")
    watched.settle()
    assert page.locator("section.map").count() == 64
    assert not page.locator("#map-5 .full").is_visible()

    page.click("#map-5 a.card")  # a map link: its full view opens in place
    page.wait_for_url(base + "conv2.html#map-5")
    full = page.locator("#map-5 .full")
    full.wait_for(state="visible")
    page.wait_for_function("() => [...document.querySelectorAll('#map-5 .full img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    views = full.locator(".views img")  # the top 1 under deconvnet, guided backprop, gradient
    assert views.count() == 3 and views.evaluate_all(
        "imgs => imgs.every(i => i.complete && i.naturalWidth > 0)")
    assert full.locator(".src span").count() == 8  # a box on each source image ...
    outside = page.evaluate("""() => [...document.querySelectorAll('#map-5 .src')].filter(f => {
        const box = f.querySelector('span').getBoundingClientRect();
        const img = f.querySelector('img').getBoundingClientRect();
        return box.width < 2 || box.left < img.left - 1 || box.top < img.top - 1
            || box.right > img.right + 1 || box.bottom > img.bottom + 1; }).length""")
    assert outside == 0  # ... drawn on the image, not over its caption
    shot = page.screenshot()
    assert not_blank(shot) > 200, "the map view looks blank"
    (tmp_path / "map.png").write_bytes(shot)

    page.go_back()  # the layer page again, map view closed
    page.wait_for_url(base + "conv2.html")
    assert not page.locator("#map-5 .full").is_visible()
    page.go_back()
    page.wait_for_url(base + "index.html")
    watched.settle()
    page.wait_for_function("() => [...document.images].filter(i => i.getClientRects().length)"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    assert not_blank(page.screenshot(full_page=True)) > 200

    # Every lazy image of a layer page loads once scrolled to.
    page.goto(base + "conv1.html")
    height = page.evaluate("document.body.scrollHeight")
    for y in range(0, height + 900, 600):
        page.evaluate(f"window.scrollTo(0, {y})")
        page.wait_for_timeout(50)
    watched.settle()
    page.wait_for_function("() => [...document.images].filter(i => i.getClientRects().length)"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    assert watched.problems == []
    page.close()
