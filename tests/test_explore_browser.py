"""The exploration tabs in headless Chromium: ``python app.py`` on an index with planted copies;
Duplicates (slider, groups, members, CSV), Clusters (grid -> members -> neighbours) and Map
(hover thumbnail, click -> neighbours)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from explore_data import build_planted_index

from benchmarks.browser import CHROMIUM, chromium_page, running_app, wait_for_images

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None,
                       reason=f"browser test: no Chromium at {CHROMIUM} (apt-get install chromium)"),
]
playwright = pytest.importorskip("playwright.sync_api", reason="browser test: playwright is not installed")


@pytest.fixture(scope="module")
def app_url(tiny_run: Path, shapes_root: Path, tmp_path_factory):
    idx = build_planted_index(tiny_run / "checkpoint.pt", shapes_root, tmp_path_factory.mktemp("data"),
                              tmp_path_factory.mktemp("idx"))
    with running_app(idx, extra=["--threads", "1"]) as url:
        yield url


def _text(page, sel: str) -> str:
    return page.locator(sel).inner_text()


def test_duplicates_clusters_and_map_tabs(app_url: str):
    with chromium_page() as page:
        page.goto(app_url)
        page.wait_for_selector("#query input[type=file]", state="attached", timeout=60_000)

        # Duplicates: auto threshold on open, then a lower one typed into the slider's box
        page.get_by_role("tab", name="Duplicates").click()
        page.wait_for_function("() => /auto threshold/.test(document.querySelector('#dup-summary').innerText)",
                               timeout=90_000)
        box = page.locator("#dup-threshold input[type=number]")
        box.fill("0.99")
        box.press("Enter")
        page.wait_for_function("() => /at threshold 0.9900/.test(document.querySelector('#dup-summary').innerText)",
                               timeout=30_000)
        wait_for_images(page, "#dup-groups img")
        caps = page.locator("#dup-groups .caption-label").all_inner_texts()
        assert caps and caps[0].startswith("group 0 · ")
        page.locator("#dup-groups .thumbnail-item").first.click()
        wait_for_images(page, "#dup-members img")
        member_caps = page.locator("#dup-members .caption-label").all_inner_texts()
        assert member_caps[0].startswith("keep · ") and all(c.startswith("remove · ") for c in member_caps[1:])
        with page.expect_download(timeout=30_000) as dl:
            page.locator("#dup-csv").click()
        text = Path(dl.value.path()).read_text()
        assert text.startswith("group,tier,action,reason,id,path") and text.count("\n") >= 3

        # Clusters: grid -> members -> neighbours of a member
        page.get_by_role("tab", name="Clusters").click()
        wait_for_images(page, "#clu-grid img", timeout_ms=90_000)
        assert re.search(r"\d+ clusters \(k chosen by silhouette\).*purity", _text(page, "#clu-summary"))
        page.locator("#clu-grid .thumbnail-item").first.click()
        wait_for_images(page, "#clu-members img")
        page.locator("#clu-members .thumbnail-item").first.click()
        wait_for_images(page, "#clu-neighbours img")
        assert _text(page, "#clu-status").startswith("Nearest neighbours of ")
        assert page.locator("#clu-neighbours .caption-label").first.inner_text().startswith("1.000 · ")

        # Map: every point drawn; hover shows its thumbnail; click searches
        page.get_by_role("tab", name="Map").click()
        page.wait_for_function("() => document.querySelectorAll('#map circle').length === 26", timeout=90_000)
        dot = page.locator("#map circle").nth(5)
        dot.hover()
        page.wait_for_function("() => { const t = document.querySelector('#map .map-tip'); const i = t && "
                               "t.querySelector('img'); return t.style.display === 'block' && i.complete && "
                               "i.naturalWidth > 0; }", timeout=15_000)
        dot.click()
        wait_for_images(page, "#map-neighbours img")
        assert _text(page, "#map-status").startswith("Nearest neighbours of ")


def test_explore_screenshots_save_one_picture_per_tab(app_url: str, tmp_path: Path):
    from PIL import Image

    from benchmarks.browser import explore_screenshots

    shots = explore_screenshots(app_url, tmp_path, 1200, 900)
    assert set(shots) == {"duplicates", "clusters", "map"}
    for path in shots.values():
        with Image.open(path) as im:
            assert im.format == "PNG" and im.width == 1200 and im.height >= 900
