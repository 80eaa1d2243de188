"""The running app (``python app.py`` in a subprocess) under a small load, fed the bad-input corpus,
and probed with crafted file requests: zero errors, still responsive, bound to loopback only,
nothing outside the image root served. The full 32 x 50 load is
``python scripts/measure_reliability.py --part load``."""

from __future__ import annotations

import http.client
import urllib.parse
from pathlib import Path

import pytest

from benchmarks.browser import app_process
from index.build import BuildOptions, build
from reliability import inputs
from reliability.corpus import KINDS, write_corpus, write_ordinary
from reliability.load import listen_addresses, run_load

SECRET = "top-secret-3f9a"


@pytest.fixture(scope="module")
def app(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory):
    """(url, pid, image root, index) for an app on a 24-image index, with a secret file beside the root
    and a symlink inside the root pointing at it."""
    work = tmp_path_factory.mktemp("app")
    root = work / "images"
    rels = write_ordinary(root, 24)
    index = work / "index"
    build(tiny_run / "checkpoint.pt", index, images=root, options=BuildOptions(progress=False, index_type="flat"))
    (work / "secret.txt").write_text(SECRET)
    (root / "link-out.png").symlink_to(work / "secret.txt")
    with app_process(index, extra=["--threads", "1"]) as (url, proc):
        yield {"url": url, "pid": proc.pid, "root": root, "rels": rels, "work": work}


def test_small_load_has_no_errors_and_the_app_stays_responsive(app: dict):
    queries = [(Path(r).name, (app["root"] / r).read_bytes(), r) for r in app["rels"]]
    r = run_load(app["url"], queries, clients=4, per_client=5, k=5, pid=app["pid"], probe_every=0.2)
    assert r["errors"] == 0, r["error_samples"]
    assert r["answered"] == r["requests"] == 20
    assert r["latency"]["p50_ms"] <= r["latency"]["p99_ms"] <= r["latency"]["max_ms"]
    assert r["responsive"]["probes"] >= 1 and r["responsive"]["ok"] == r["responsive"]["probes"]
    assert r["app_peak_rss_mb"] >= r["app_rss_before_mb"] > 50


def test_the_app_listens_on_loopback_only(app: dict):
    port = int(app["url"].rstrip("/").rsplit(":", 1)[1])
    assert listen_addresses(app["pid"], port) == ["127.0.0.1"]


def test_every_corpus_kind_through_the_http_api(app: dict, tmp_path: Path):
    corpus = write_corpus(tmp_path / "corpus", n_ordinary=2)
    outcomes, facts = inputs.through_http(app["url"], corpus)
    assert [o for o in outcomes if not o.handled] == []
    assert len(outcomes) == len(KINDS) and facts["still_serving"]


def _get(url: str, raw_path: str) -> tuple[int, bytes]:
    """GET with the path sent byte for byte (no client-side normalisation of '..' or '%2e')."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request("GET", raw_path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_crafted_file_requests_cannot_leave_the_image_root(app: dict):
    root, work = app["root"], app["work"]
    good = root / app["rels"][0]
    for prefix in ("/gradio_api/file=", "/file="):
        status, body = _get(app["url"], prefix + str(good))
        if status == 200:
            assert body == good.read_bytes()
    assert _get(app["url"], "/gradio_api/file=" + str(good))[0] == 200  # the control: the root is served
    q = urllib.parse.quote
    attacks = [
        f"{root}/../secret.txt",
        f"{root}/%2e%2e/secret.txt",
        f"{root}/%2E%2E%2Fsecret.txt",
        f"{root}/%252e%252e/secret.txt",
        f"{root}/a/..%2f..%2f..%2fsecret.txt",
        f"{root}/a/..\\..\\..\\secret.txt",
        f"{work}/secret.txt",
        q(f"{work}/secret.txt", safe=""),
        f"{root}/link-out.png",  # a symlink inside the root pointing outside it
        "/etc/passwd",
        "%2fetc%2fpasswd",
        f"{root}/a/img0000.png%00/../../../secret.txt",
        f"http://127.0.0.1:{urllib.parse.urlsplit(app['url']).port}/gradio_api/file={work}/secret.txt",
    ]
    for prefix in ("/gradio_api/file=", "/file="):
        for a in attacks:
            status, body = _get(app["url"], prefix + a)
            assert status != 200 and SECRET.encode() not in body and b"root:" not in body, (prefix + a, status)
