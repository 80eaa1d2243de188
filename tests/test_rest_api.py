"""The REST API (instdisc.web.rest) served for real (uvicorn on 127.0.0.1, Gradio page mounted beside it) and
called with a real HTTP client: search by multipart file and by base64, health, images, OpenAPI docs,
the page's validation and limits, bad input, traversal, and concurrent requests through the batcher."""

from __future__ import annotations

import base64
import shutil
import threading
from pathlib import Path

import httpx
import pytest

from benchmarks.browser import free_port
from index.search import SearchIndex
from instdisc.web.handlers import SearchHandlers
from instdisc.web.server import serving
from tests.tampering import set_stored_path

QUERY = Path("test") / "circle" / "0003.png"


def _project_version() -> str:
    """The version pyproject.toml declares (what the installed package reports)."""
    import tomllib

    return tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["version"]


@pytest.fixture(scope="module")
def served(shapes_index: Path):
    h = SearchHandlers(SearchIndex.open(shapes_index, device="cpu"))
    with serving(h, port=free_port()) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client, h
    h.batcher.close()
    h.index.close()


def post_file(client: httpx.Client, path: Path, **fields) -> httpx.Response:
    return client.post("/api/search", files={"image": (path.name, path.read_bytes(), "image/png")},
                       data={k: str(v) for k, v in fields.items()})


def test_search_by_file_and_by_base64_agree(served, shapes_root: Path):
    client, h = served
    r = post_file(client, shapes_root / QUERY, k=7)
    assert r.status_code == 200, r.text
    res = r.json()
    assert res["query"] == "0003.png" and res["k"] == 7 and len(res["ids"]) == 7
    assert res["paths"][0] == QUERY.as_posix() and res["scores"][0] == pytest.approx(1.0, abs=1e-3)
    assert res["scores"] == sorted(res["scores"], reverse=True) and res["took_ms"] > 0
    assert set(res) == {"query", "k", "label", "folder", "date_from", "date_to", "camera", "took_ms", "ids", "scores",
                        "paths", "labels", "splits", "taken", "cameras"}
    b64 = base64.b64encode((shapes_root / QUERY).read_bytes()).decode()
    as_json = client.post("/api/search", json={"image_base64": b64, "k": 7}).json()
    as_form = client.post("/api/search", data={"image_base64": "data:image/png;base64," + b64, "k": "7"}).json()
    assert as_json["ids"] == as_form["ids"] == res["ids"]
    assert h.api_search(str(shapes_root / QUERY), 7)["ids"] == res["ids"]  # what the page's API answers


def test_filters_and_k_as_on_the_page(served, shapes_root: Path):
    client, _ = served
    res = post_file(client, shapes_root / QUERY, k=30, label="triangle").json()
    assert len(res["ids"]) == 30 and set(res["labels"]) == {"triangle"} and res["label"] == "triangle"
    res = post_file(client, shapes_root / QUERY, k=5, folder="train/square").json()
    assert all(p.startswith("train/square/") for p in res["paths"])
    assert len(post_file(client, shapes_root / QUERY, k=1000).json()["ids"]) == 100  # clamped like the slider
    assert len(post_file(client, shapes_root / QUERY).json()["ids"]) == 20  # the page's default k
    assert len(post_file(client, shapes_root / QUERY, label="(any)").json()["ids"]) == 20


def test_bad_input_gets_a_clear_error(served, shapes_root: Path, tmp_path: Path):
    client, _ = served
    text = tmp_path / "holiday.jpg"
    text.write_text("not an image at all")
    cases = [
        (post_file(client, text), 400, "holiday.jpg: not a recognised image format"),
        (post_file(client, shapes_root / QUERY, k="lots"), 400, "k must be a whole number between 1 and 100"),
        (post_file(client, shapes_root / QUERY, folder="../etc"), 400, ".."),
        (client.post("/api/search", data={"k": "5"}), 400, "No image"),
        (client.post("/api/search", json={"image_base64": "%%% not base64"}), 400, "not valid base64"),
        (client.post("/api/search", json=[1, 2]), 400, "must be an object"),
        (client.post("/api/search", content=b"{oops", headers={"content-type": "application/json"}), 400,
         "not valid JSON"),
        (client.post("/api/search", content=b"raw", headers={"content-type": "image/png"}), 400, "multipart"),
        (client.post("/api/search", files={"image": ("empty.png", b"", "image/png")}), 400, "empty"),
        (client.post("/api/search", files={"image": ("big.png", b"\0" * (11 * 2**20), "image/png")}), 413,
         "over the 10 MB upload limit"),
    ]
    for r, code, words in cases:
        assert r.status_code == code, (words, r.status_code, r.text)
        assert words in r.json()["error"], (words, r.json())
    assert post_file(client, shapes_root / QUERY, k=3).status_code == 200  # the server is still fine


def test_health_images_docs_and_the_page(served, shapes_root: Path):
    client, h = served
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["count"] == len(h.index) and health["dim"] == 128
    assert health["model"]["arch"] == "resnet18" and health["model"]["image_size"] == 32
    assert health["index"]["type"] == "flat" and health["version"] == _project_version()
    r = client.get("/api/images/0")
    assert r.status_code == 200 and r.content == (h.root / h.index.get([0])[0].path).read_bytes()
    assert client.get("/api/images/999999").status_code == 404
    assert client.get("/api/images/abc").status_code == 422
    for probe in ("/api/images/..%2F..%2Fetc%2Fpasswd", "/api/images/%2Fetc%2Fpasswd", "/api/../etc/passwd"):
        r = client.get(probe)
        assert r.status_code in (404, 422) and b"root:" not in r.content, probe
    spec = client.get("/api/openapi.json").json()
    body = spec["paths"]["/api/search"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)
    assert "/api/health" in spec["paths"] and "/api/images/{id}" in spec["paths"]
    assert client.get("/api/docs").status_code == 200
    assert client.get("/").status_code == 200  # the Gradio page, same process
    assert client.get("/gradio_api/file=/etc/passwd").status_code in (403, 404)


def test_concurrent_requests_share_the_batcher(served, shapes_root: Path):
    client, h = served
    files = sorted((shapes_root / "test").rglob("*.png"))[::10][:10]
    expected = [post_file(client, f, k=5).json()["ids"] for f in files]
    before = h.batcher.stats.queries
    got: dict[int, list[int]] = {}
    start = threading.Barrier(len(files))

    def call(i: int) -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=60) as c:
            start.wait()
            got[i] = post_file(c, files[i], k=5).json()["ids"]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(files))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(len(files))] == expected
    assert h.batcher.stats.queries - before == len(files)


def test_a_stored_path_outside_the_root_is_refused(shapes_index: Path, tmp_path: Path):
    d = tmp_path / "idx"
    shutil.copytree(shapes_index, d)
    set_stored_path(d, 3, "../../../../etc/passwd")
    h = SearchHandlers(SearchIndex.open(d, device="cpu"))
    with serving(h, port=free_port()) as url:
        r = httpx.get(url + "api/images/3", timeout=60)
        assert r.status_code == 403 and "escape" in r.json()["error"] and b"root:" not in r.content
        assert httpx.get(url + "api/images/4", timeout=60).status_code == 200
    h.batcher.close()
    h.index.close()
