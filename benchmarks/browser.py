"""Run the app in a subprocess and drive it in headless Chromium (screenshots, end-to-end tests).

Used by ``scripts/screenshot.py`` and ``tests/test_app_browser.py``. Needs the ``playwright``
Python package and a Chromium binary (``apt-get install chromium`` gives /usr/bin/chromium;
``playwright install`` is not needed).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FAKE_CAMERA = ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")  # a test-pattern webcam
STATUS = "#status [data-testid=markdown]"  # the status line's text (without the progress overlay)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, proc: subprocess.Popen | None = None, timeout: float = 180.0) -> None:
    """Poll ``url`` until it answers 200; fail early with the server's output if it died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise RuntimeError(f"app exited with {proc.returncode} before serving:\n{out}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not come up within {timeout:.0f}s")


@contextlib.contextmanager
def running_app(index_dir: str | os.PathLike, port: int | None = None, extra: list[str] | None = None,
                timeout: float = 180.0) -> Iterator[str]:
    """``python app.py --index DIR --port P`` in a subprocess; yields its URL, stops it afterwards."""
    with app_process(index_dir, port, extra, timeout) as (url, _):
        yield url


@contextlib.contextmanager
def app_process(index_dir: str | os.PathLike, port: int | None = None, extra: list[str] | None = None,
                timeout: float = 180.0) -> Iterator[tuple[str, subprocess.Popen]]:
    """Like :func:`running_app`, yielding (URL, process) for callers that watch the process (memory)."""
    port = port or free_port()
    cmd = [sys.executable, str(ROOT / "app.py"), "--index", str(index_dir), "--port", str(port), *(extra or [])]
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a chatty server under load never blocks on it
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        try:
            wait_until_up(url, proc, timeout)
        except RuntimeError as e:
            log.seek(0)
            raise RuntimeError(f"{e}{log.read()[-5000:]}") from None
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@contextlib.contextmanager
def chromium_page(width: int = 1400, height: int = 1000, extra_args: tuple[str, ...] = ()) -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *extra_args])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            yield page
        finally:
            browser.close()


def upload_query(page, image: str | os.PathLike, timeout_ms: int = 60_000) -> None:
    """Upload ``image`` as the query and wait until the results gallery has re-rendered for it."""
    before = status_text(page)
    page.locator("#query input[type=file]").set_input_files(str(image))
    wait_for_status(page, before, timeout_ms)


def status_text(page) -> str:
    return page.locator(STATUS).inner_text()


def wait_for_status(page, before: str, timeout_ms: int = 60_000) -> str:
    """Wait until the status line shows the outcome of a new search (results or a warning)."""
    page.wait_for_function(
        "([sel, prev]) => { const s = document.querySelector(sel); if (!s) return false; const t = s.innerText; "
        "return t !== prev && /results for|Could not search|No images match|No results/.test(t); }",
        arg=[STATUS, before], timeout=timeout_ms)
    return status_text(page)


def wait_for_images(page, selector: str = "#results img", timeout_ms: int = 30_000, first: int | None = None) -> None:
    """Wait until every image matching ``selector`` (or its ``first`` ones: a long gallery loads the images
    below the fold only when scrolled to) has loaded."""
    page.wait_for_function(
        "([sel, n]) => { let im = [...document.querySelectorAll(sel)]; if (n !== null) im = im.slice(0, n); "
        "return im.length > 0 && im.every(i => i.complete && i.naturalWidth > 0); }",
        arg=[selector, first], timeout=timeout_ms)


def screenshot(url: str, query: str | os.PathLike, out: str | os.PathLike, width: int = 1400,
               height: int = 1000) -> dict:
    """Open the app, upload ``query``, wait for the results and save a full-page PNG at ``out``."""
    with chromium_page(width, height) as page:
        page.goto(url)
        page.wait_for_selector("#query input[type=file]", state="attached", timeout=60_000)
        upload_query(page, query)
        wait_for_images(page, "#results img")
        wait_for_images(page, "#query img")
        time.sleep(0.5)  # let the gallery finish its layout
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=True)
        return {"status": status_text(page),
                "captions": page.locator("#results .caption-label").all_inner_texts()}


def _open_first(page, gallery: str, shows: str, timeout_ms: int) -> None:
    """Click the first tile of ``gallery`` once its first images are in, and wait for ``shows`` to fill."""
    wait_for_images(page, f"{gallery} img", timeout_ms, first=6)
    page.locator(f"{gallery} .thumbnail-item").first.click()
    wait_for_images(page, f"{shows} img", timeout_ms, first=12)


def explore_screenshots(url: str, out_dir: str | os.PathLike, width: int = 1400, height: int = 1000,
                        timeout_ms: int = 600_000) -> dict[str, Path]:
    """Open the Duplicates, Clusters and Map tabs in turn, open the first group / cluster / a point's
    neighbours, and save one full-page PNG per tab under ``out_dir`` (docs/explore.md's figures)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shots: dict[str, Path] = {}
    with chromium_page(width, height) as page:
        page.goto(url)
        page.wait_for_selector("#query input[type=file]", state="attached", timeout=60_000)
        page.get_by_role("tab", name="Duplicates").click()
        page.wait_for_function("() => /threshold/.test(document.querySelector('#dup-summary').innerText)",
                               timeout=timeout_ms)
        if page.locator("#dup-groups .thumbnail-item").count():
            _open_first(page, "#dup-groups", "#dup-members", timeout_ms)
        shots["duplicates"] = out / "explore_duplicates.png"
        page.screenshot(path=str(shots["duplicates"]), full_page=True)
        page.get_by_role("tab", name="Clusters").click()
        _open_first(page, "#clu-grid", "#clu-members", timeout_ms)
        _open_first(page, "#clu-members", "#clu-neighbours", timeout_ms)
        shots["clusters"] = out / "explore_clusters.png"
        page.screenshot(path=str(shots["clusters"]), full_page=True)
        page.get_by_role("tab", name="Map").click()
        page.wait_for_selector("#map circle", timeout=timeout_ms)
        dot = page.locator("#map circle").last  # painted last, so no other point covers it (a dense map's middle
        # point can be under its neighbours, and the hover then never reaches it)
        dot.hover()
        page.wait_for_function("() => { const t = document.querySelector('#map .map-tip'); const i = t && "
                               "t.querySelector('img'); return t.style.display === 'block' && i.complete && "
                               "i.naturalWidth > 0; }", timeout=30_000)
        dot.click()
        wait_for_images(page, "#map-neighbours img", timeout_ms, first=12)
        dot.hover()  # the tooltip back on for the picture
        time.sleep(0.5)
        shots["map"] = out / "explore_map.png"
        page.screenshot(path=str(shots["map"]), full_page=True)
    return shots
