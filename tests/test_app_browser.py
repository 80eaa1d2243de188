"""End to end: ``python app.py`` in a subprocess on a free port, driven through its HTTP API
(gradio_client) and in headless Chromium (playwright): upload, results, "more like this",
bad uploads, the served-files policy and the upload size limit."""

from __future__ import annotations

import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from benchmarks.browser import (
    CHROMIUM,
    FAKE_CAMERA,
    chromium_page,
    running_app,
    screenshot,
    status_text,
    upload_query,
    wait_for_images,
    wait_for_status,
)

CAPTION = re.compile(r"^\d\.\d{3} · (circle|cross|square|triangle) · \d{4}\.png$")

needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None,
    reason=f"browser test: no Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM=...)")


def _playwright_missing() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return True
    return False


needs_playwright = pytest.mark.skipif(_playwright_missing(), reason="browser test: playwright is not installed")


@pytest.fixture(scope="module")
def app_url(shapes_index: Path):
    with running_app(shapes_index, extra=["--threads", "1"]) as url:
        yield url


def _status(url: str, path: str) -> int:
    try:
        with urllib.request.urlopen(url + path, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


# ---------------------------------------------------------------- HTTP / API


def test_api_search_and_batch_with_gradio_client(app_url: str, shapes_root: Path, tmp_path: Path):
    from gradio_client import Client, handle_file

    client = Client(app_url, verbose=False)
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/search", "/search_batch", "/search_filtered", "/search_batch_filtered"} <= set(endpoints)

    q = shapes_root / "test" / "cross" / "0004.png"
    res = client.predict(handle_file(str(q)), 5, api_name="/search")
    assert res["paths"][0] == "test/cross/0004.png" and res["labels"][0] == "cross"
    assert len(res["ids"]) == len(res["scores"]) == 5 and res["scores"][0] == pytest.approx(1.0, abs=1e-4)

    filtered = client.predict(handle_file(str(q)), 4, "square", "train", api_name="/search")
    # the same search with every filter: photo filters that match everything change nothing, a date
    # range before any file's time matches nothing
    assert client.predict(handle_file(str(q)), 4, "square", "train", "", "", "(any)",
                          api_name="/search_filtered")["ids"] == filtered["ids"]
    assert client.predict(handle_file(str(q)), 4, "(any)", "(any)", "1990", "1990", "(any)",
                          api_name="/search_filtered")["ids"] == []
    assert filtered["labels"] == ["square"] * 4 and all(p.startswith("train/") for p in filtered["paths"])

    bad = tmp_path / "bad.jpg"
    bad.write_text("not a picture")
    batch = client.predict([handle_file(str(q)), handle_file(str(bad))], 3, api_name="/search_batch")
    assert batch["results"][0]["paths"][0] == "test/cross/0004.png"
    assert "not a recognised image" in batch["results"][1]["error"]

    with pytest.raises(Exception, match="not a recognised image"):
        client.predict(handle_file(str(bad)), 3, api_name="/search")
    # ... and the server is still serving
    assert client.predict(handle_file(str(q)), 1, api_name="/search")["ids"] == res["ids"][:1]


def test_only_the_image_root_is_served(app_url: str, shapes_index: Path, shapes_root: Path):
    assert _status(app_url, f"gradio_api/file={shapes_root / 'train' / 'circle' / '0001.png'}") == 200
    for path in ("/etc/passwd", str(shapes_index / "manifest.json"), str(Path(__file__).resolve()),
                 f"{shapes_root}/../{shapes_index.name}/manifest.json"):
        assert _status(app_url, f"gradio_api/file={path}") in (403, 404), path


def test_uploads_over_10mb_are_refused(app_url: str):
    boundary = "----apptest"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + b"\0" * (10 * 1024 * 1024 + 100) + \
        f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(app_url + "gradio_api/upload", data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=60)
    assert e.value.code == 413


# ---------------------------------------------------------------- browser


@pytest.mark.browser
@needs_chromium
@needs_playwright
def test_browser_upload_results_more_like_this_and_bad_file(app_url: str, shapes_root: Path, tmp_path: Path):
    with chromium_page() as page:
        page.goto(app_url)
        page.wait_for_selector("#query input[type=file]", state="attached", timeout=60_000)
        assert "Model" in page.locator("#info").inner_text() and "resnet18" in page.locator("#info").inner_text()
        wait_for_images(page, "#examples img")
        assert page.locator("#examples img").count() == 4

        # upload -> 20 captioned results
        upload_query(page, shapes_root / "test" / "triangle" / "0005.png")
        status = status_text(page)
        assert re.search(r"20 results for 0005\.png in [\d.]+ ms", status), status
        wait_for_images(page, "#results img")
        assert page.locator("#results img").count() == 20
        captions = page.locator("#results .caption-label").all_inner_texts()
        assert len(captions) == 20 and all(CAPTION.match(c) for c in captions), captions
        assert captions[0].endswith("triangle · 0005.png") and captions[0].startswith("1.000")
        query_src = page.locator("#query img").get_attribute("src")

        # click the 4th result -> it becomes the query, and the results are its neighbours
        page.locator("#results .thumbnail-item").nth(3).click()
        expected = captions[3].split(" · ")[-1]
        new_status = wait_for_status(page, status)
        wait_for_images(page, "#query img")
        assert page.locator("#query img").get_attribute("src") != query_src
        assert re.search(r"20 results for (train|test)/\w+/" + re.escape(expected), new_status), new_status
        wait_for_images(page, "#results img")
        new_captions = page.locator("#results .caption-label").all_inner_texts()
        assert new_captions[0].startswith("1.000") and new_captions[0].endswith(expected)

        # a text file named .jpg: a clear warning, and the page keeps working
        bad = tmp_path / "holiday.jpg"
        bad.write_text("definitely not a jpeg")
        upload_query(page, bad)
        assert "Could not search" in status_text(page)
        assert "holiday.jpg: not a recognised image format" in status_text(page)
        page.wait_for_selector("text=not a recognised image format", timeout=10_000)  # the toast too
        upload_query(page, shapes_root / "train" / "circle" / "0007.png")
        assert "results for 0007.png" in status_text(page)

        # an example click runs a search too
        before = status_text(page)
        page.locator("#examples .thumbnail-item").nth(1).click()
        assert re.search(r"results for \w+/cross/", wait_for_status(page, before))


@pytest.mark.browser
@needs_chromium
@needs_playwright
def test_screenshot_helper(app_url: str, shapes_root: Path, tmp_path: Path):
    out = tmp_path / "shot.png"
    info = screenshot(app_url, shapes_root / "test" / "square" / "0001.png", out, 1200, 900)
    from PIL import Image

    with Image.open(out) as im:
        assert im.width == 1200 and im.height >= 900
    assert "results for 0001.png" in info["status"] and len(info["captions"]) == 20


@pytest.mark.browser
@needs_chromium
@needs_playwright
def test_browser_paste_and_drag_and_drop(app_url: str, shapes_root: Path):
    import base64

    with chromium_page() as page:
        page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=app_url.rstrip("/"))
        page.goto(app_url)
        page.wait_for_selector("#query input[type=file]", state="attached", timeout=60_000)
        b64 = base64.b64encode((shapes_root / "test" / "cross" / "0002.png").read_bytes()).decode()

        # paste: put a PNG on the clipboard, press the query's "Paste from clipboard" button
        page.evaluate("""async (b64) => { const bin = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            await navigator.clipboard.write([new ClipboardItem({'image/png': new Blob([bin], {type: 'image/png'})})]);
        }""", b64)
        before = status_text(page)
        page.locator("#query button[aria-label='Paste from clipboard']").click()
        assert re.search(r"20 results for \S+\.png", wait_for_status(page, before))
        wait_for_images(page, "#results img")
        assert page.locator("#results .caption-label").first.inner_text().startswith("1.000 · cross · 0002.png")

        # drag and drop a file onto the query box (clear it first so the drop zone is back)
        page.locator("#query button[aria-label='Remove Image']").click()
        page.wait_for_function("() => document.querySelectorAll('#results img').length === 0", timeout=30_000)
        dt = page.evaluate_handle("""(b64) => { const bin = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bin], 'dropped.png', {type: 'image/png'})); return dt; }""", b64)
        target = page.locator("#query [aria-label='Drop an image file here to upload']")
        before = status_text(page)
        for event in ("dragenter", "dragover", "drop"):
            target.dispatch_event(event, {"dataTransfer": dt})
        assert "20 results for dropped.png" in wait_for_status(page, before)

        # typing k and picking a label re-search the same query without re-uploading it
        before = status_text(page)
        box = page.locator("#k input[type=number]")
        box.fill("33")
        box.press("Enter")
        assert "33 results for dropped.png" in wait_for_status(page, before)
        before = status_text(page)
        page.locator("#label-filter input").click()
        page.locator("li[role=option]:has-text('square')").click()
        status = wait_for_status(page, before)
        assert "33 results for dropped.png" in status and "label = square" in status
        wait_for_images(page, "#results img")
        assert all(" · square · " in c for c in page.locator("#results .caption-label").all_inner_texts())


@pytest.mark.browser
@needs_chromium
@needs_playwright
def test_browser_webcam_capture(app_url: str):
    with chromium_page(extra_args=FAKE_CAMERA) as page:  # Chromium's fake camera: a test pattern
        page.context.grant_permissions(["camera"], origin=app_url.rstrip("/"))
        page.goto(app_url)
        page.wait_for_selector("#query input[type=file]", state="attached", timeout=60_000)
        page.locator("#query button[aria-label='Capture from camera']").click()
        page.locator("#query button:has-text('Click to Access Webcam')").click()
        shutter = page.locator("#query button[aria-label='capture photo']")
        shutter.wait_for(timeout=30_000)
        page.wait_for_timeout(1500)  # let the stream deliver frames
        before = status_text(page)
        shutter.click()
        assert re.search(r"20 results for \S+ in", wait_for_status(page, before))
