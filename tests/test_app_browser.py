"""The app in headless Debian Chromium: every tab is there, a tiny distillation runs with clicks, its gallery fills.

Needs /usr/bin/chromium (`apt-get install -y chromium`; .ci/run installs it) and the `playwright` Python package;
Playwright's own browser download is not used. `VLDD_UPDATE_SCREENSHOT=1` also writes docs/app.png, the screenshot
the README shows.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image
from test_app import ROOT, launch_app

CHROMIUM = Path("/usr/bin/chromium")
# docs/testing.md, "The browser": headless Chromium on a machine without a GPU, a sandbox or the network.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
TABS = ["Dataset", "Captions", "Prototypes", "Generate", "Evaluate", "Publish"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="Debian Chromium is not installed at /usr/bin/chromium "
                                                      "(apt-get install -y chromium; .ci/run installs it)"),
]


@pytest.fixture(scope="module")
def page(tiny_cache, tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    demo, _ = launch_app(tiny_cache, tmp_path_factory.mktemp("browser-sessions"))
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=str(CHROMIUM), headless=True,
            args=FLAGS, viewport={"width": 1200, "height": 860})
        page = context.new_page()
        page.goto(demo.local_url)
        yield page
        context.close()
    demo.close()


def test_tiny_distillation_with_clicks(page, tmp_path):
    # Every tab is there.
    page.get_by_role("tab", name="Dataset").wait_for(timeout=60_000)
    assert [tab.inner_text().strip() for tab in page.get_by_role("tab").all()] == TABS

    # Dataset: load the sample; its first two classes are selected and previewed.
    page.get_by_role("button", name="Load dataset").click()
    page.get_by_text("Selected 2: circle, square").wait_for(timeout=120_000)

    # Generate: one click runs every stage; the gallery holds IPC x classes images.
    page.get_by_role("tab", name="Generate").click()
    page.get_by_role("button", name="Generate (runs every stage still missing)").click()
    page.get_by_text("Distilled 4 images (2 classes × IPC 2).").wait_for(timeout=240_000)
    gallery = page.locator("#distilled-gallery img")
    gallery.nth(3).wait_for(timeout=60_000)
    assert gallery.count() == 2 * 2
    captions = page.locator("#distilled-gallery").inner_text()
    assert captions.count("circle #") == 2 and captions.count("square #") == 2

    shot = tmp_path / "app.png"
    page.wait_for_timeout(500)  # let the gallery finish drawing
    page.screenshot(path=str(shot))
    # The images really arrived (a broken <img> has naturalWidth 0) and the page is drawn, not blank.
    widths = gallery.evaluate_all("images => images.map(image => image.naturalWidth)")
    assert len(widths) == 4 and all(w > 0 for w in widths), widths
    assert len(Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 20)) > 200
    if os.environ.get("VLDD_UPDATE_SCREENSHOT") == "1":
        save_for_readme(shot, ROOT / "docs" / "app.png")


def save_for_readme(shot: Path, target: Path) -> None:
    """A palette PNG: the README's screenshot stays small (< 300 KB)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.open(shot).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)
    assert target.stat().st_size < 300_000, f"{target} is {target.stat().st_size} bytes"
