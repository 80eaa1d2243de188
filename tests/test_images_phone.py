"""Phone formats and photo metadata: HEIC (made with pillow-heif) and AVIF (Pillow's own plug-in) decode
upright through the one decoder, get indexed, and a HEIC photo lands within cosine 0.98 of its JPEG export;
date taken and camera are read from EXIF (else the file's time), stored per entry and usable as filters
through the handlers (Gradio API) and the REST API."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from photo_exif import exif
from PIL import Image, ImageDraw, ImageFilter

from benchmarks.browser import free_port
from index.build import BuildOptions
from index.search import SearchIndex
from index.sync import sync
from instdisc import bundled
from instdisc.imagecache import decode_all
from instdisc.images import load_image
from instdisc.photometa import camera_name, parse_date_bound, parse_exif_date, read_photo_meta
from instdisc.scan import scan_folder
from instdisc.web.handlers import SearchHandlers
from instdisc.web.queries import QueryError, Upload, decode_query
from instdisc.web.server import serving

OPTS = BuildOptions(progress=False, index_type="flat")
CAMERAS = (("Apple", "iPhone 13"), ("Canon", "Canon EOS 80D"))


def photo(seed: int, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A smooth, photo-like picture (lossy codecs keep it well): a gradient with a few soft shapes."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    base = np.stack([rng.uniform(40, 200) + 50 * np.sin(3 * x + rng.uniform(0, 6)) for _ in range(3)], -1)
    img = Image.fromarray(np.clip(base + 30 * y[..., None], 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(4):
        cx, cy, r = rng.integers(0, w), rng.integers(0, h), rng.integers(10, 40)
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return img.filter(ImageFilter.GaussianBlur(1.5))



def test_heic_and_avif_decode_upright_like_the_jpeg(tmp_path: Path):
    upright = photo(1)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a sideways camera stores; EXIF 6 turns it back
    for name in ("p.jpg", "p.heic", "p.avif"):
        stored.save(tmp_path / name, exif=exif(6, "Apple", "iPhone 13", "2021:06:05 10:11:12"), quality=95)
    assert Image.open(tmp_path / "p.heic").format == "HEIF" and Image.open(tmp_path / "p.avif").format == "AVIF"
    want = np.asarray(upright, dtype=np.float32)
    for name in ("p.jpg", "p.heic", "p.avif"):
        got = load_image(tmp_path / name)
        assert got.size == upright.size, name  # rotation applied (HEIC: by libheif, others: by EXIF)
        assert np.abs(np.asarray(got, dtype=np.float32) - want).mean() < 6, name
        meta = read_photo_meta(tmp_path / name)
        assert (meta.taken, meta.taken_from, meta.camera) == ("2021-06-05T10:11:12", "exif", "Apple iPhone 13"), name
        assert (meta.width, meta.height) == upright.size, name
    found = scan_folder(tmp_path).paths  # training's and indexing's scan, then training's decoder
    imgs, ok, bad = decode_all(tmp_path, found, 32, workers=1, progress=False)
    assert ok == ["p.avif", "p.heic", "p.jpg"] and bad == [] and imgs.shape == (3, 32, 32, 3)
    assert np.abs(imgs[1].astype(float) - imgs[2].astype(float)).mean() < 6  # HEIC square ~ the JPEG's
    data = (tmp_path / "p.heic").read_bytes()
    img, name = decode_query(Upload("phone.heic", data))  # an upload to the app or the REST API
    assert name == "phone.heic" and img.size == upright.size
    with pytest.raises(QueryError, match="not a recognised image format"):
        decode_query(Upload("fake.heic", b"not a photo at all"))


def test_heic_photo_lands_near_its_jpeg_export_in_the_index(tmp_path: Path):
    f = tmp_path / "phone"
    f.mkdir()
    for i in range(6):
        img = photo(10 + i)
        img.save(f / f"IMG_{i}.heic", quality=90)
        img.save(f / f"IMG_{i}_export.jpg", quality=90)
    (f / "IMG_9.heic").write_bytes(b"\x00\x00\x00\x18ftypheic broken")
    idx = tmp_path / "idx"
    r = sync(idx, f, str(bundled.resolve("general")), OPTS)
    assert r.count == 12 and [p for p, _ in r.unreadable] == ["IMG_9.heic"]
    with SearchIndex.open(idx, device="cpu") as s:
        rows = {row.path: row.id for row in s.rows()}
        cos = []
        for i in range(6):
            a, b = s.vectors([rows[f"IMG_{i}.heic"], rows[f"IMG_{i}_export.jpg"]])
            cos.append(float(a @ b))
        hits = s.search_images([f / "IMG_2.heic"], 2)[0]
    assert min(cos) >= 0.98, cos
    assert {h.path for h in hits} == {"IMG_2.heic", "IMG_2_export.jpg"}


@pytest.fixture(scope="module")
def photo_index(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Eight JPEGs from two cameras over two years, and two PNGs without EXIF (dated by their file time)."""
    f = tmp_path_factory.mktemp("photos")
    for i in range(8):
        make, model = CAMERAS[i % 2]
        year = 2020 + i // 4
        photo(100 + i).save(f / f"IMG_{i}.jpg", exif=exif(1, make, model, f"{year}:0{1 + i % 4}:15 12:00:00"))
    for i in range(2):
        photo(200 + i).save(f / f"scan_{i}.png")
    idx = tmp_path_factory.mktemp("photo-idx") / "idx"
    sync(idx, f, str(bundled.resolve("general")), OPTS)
    return f, idx


def test_photo_facts_are_stored_once_per_entry(photo_index):
    f, idx = photo_index
    with SearchIndex.open(idx, device="cpu") as s:
        rows = {r.path: r for r in s.rows()}
        assert s.cameras() == ["Apple iPhone 13", "Canon EOS 80D"]
    r = rows["IMG_5.jpg"]
    assert (r.taken, r.taken_from, r.camera_make, r.camera_model, r.camera) == (
        "2021-02-15T12:00:00", "exif", "Canon", "Canon EOS 80D", "Canon EOS 80D")
    assert (r.width, r.height, r.file_bytes) == (160, 120, (f / "IMG_5.jpg").stat().st_size)
    scan = rows["scan_0.png"]
    assert scan.taken_from == "file" and scan.camera is None and scan.taken.startswith(str(__import__("datetime")
                                                                                            .date.today().year))


def _paths(res: dict) -> list[str]:
    return sorted(res["paths"])


def test_date_and_camera_filters_through_the_handlers_and_the_rest_api(photo_index):
    f, idx = photo_index
    h = SearchHandlers(SearchIndex.open(idx, device="cpu"))
    q = f / "IMG_0.jpg"
    try:
        canon = h.api_search(str(q), 20, camera="Canon EOS 80D")
        assert _paths(canon) == ["IMG_1.jpg", "IMG_3.jpg", "IMG_5.jpg", "IMG_7.jpg"]
        assert canon["cameras"] == ["Canon EOS 80D"] * 4 and canon["camera"] == "Canon EOS 80D"
        y2021 = h.api_search(str(q), 20, date_from="2021", date_to="2021")
        assert _paths(y2021) == ["IMG_4.jpg", "IMG_5.jpg", "IMG_6.jpg", "IMG_7.jpg"]
        assert (y2021["date_from"], y2021["date_to"]) == ("2021-01-01T00:00:00", "2021-12-31T23:59:59")
        both = h.api_search(str(q), 20, date_to="2020-02", camera="Apple iPhone 13")  # up to the end of Feb 2020
        assert _paths(both) == ["IMG_0.jpg"]
        assert _paths(h.api_search(str(q), 20, date_from="2020-02-15")) == [
            "IMG_1.jpg", "IMG_2.jpg", "IMG_3.jpg", "IMG_4.jpg", "IMG_5.jpg", "IMG_6.jpg", "IMG_7.jpg",
            "scan_0.png", "scan_1.png"]  # the scans are dated by their file time: today
        assert len(h.api_search(str(q), 20)["paths"]) == 10  # no filter
        with pytest.raises(QueryError, match="YYYY-MM-DD"):
            h.api_search(str(q), 20, date_from="last tuesday")
        gallery, status, _ = h.ui_search({"path": str(q)}, 20, "(any)", "(any)", "", "", "Canon EOS 80D")
        assert len(gallery) == 4 and "camera = Canon EOS 80D" in status
        assert "Canon EOS 80D" in gallery[0][1] and "160x120" in gallery[0][1]  # the result's details

        with serving(h, port=free_port()) as url, httpx.Client(base_url=url, timeout=60) as client:
            def post(**fields):
                return client.post("/api/search", files={"image": ("q.jpg", q.read_bytes(), "image/jpeg")},
                                   data={k: str(v) for k, v in fields.items()})

            r = post(k=20, camera="Apple iPhone 13", date_from="2021-01-01")
            assert r.status_code == 200, r.text
            assert _paths(r.json()) == ["IMG_4.jpg", "IMG_6.jpg"]
            assert r.json()["taken"] and all(t.startswith("2021-") for t in r.json()["taken"])
            r = client.post("/api/search", json={"image_base64": __import__("base64").b64encode(q.read_bytes())
                                                 .decode(), "k": 20, "date_to": "2020-12-31"})
            assert _paths(r.json()) == ["IMG_0.jpg", "IMG_1.jpg", "IMG_2.jpg", "IMG_3.jpg"]
            r = post(k=5, date_from="2021-13")
            assert r.status_code == 400 and "YYYY-MM" in r.json()["error"]
            buf = io.BytesIO()
            load_image(q).save(buf, "HEIF")  # an upload from a phone
            r = client.post("/api/search", files={"image": ("q.heic", buf.getvalue(), "image/heic")}, data={"k": "1"})
            assert r.status_code == 200 and r.json()["paths"] == ["IMG_0.jpg"]
    finally:
        h.batcher.close()
        h.index.close()


def test_exif_parsing_rules():
    assert parse_exif_date("2021:06:05 10:11:12") == "2021-06-05T10:11:12"
    assert parse_exif_date(b"2021:06:05 10:11:12\x00") == "2021-06-05T10:11:12"
    assert parse_exif_date("0000:00:00 00:00:00") is None and parse_exif_date("  ") is None
    assert camera_name("Canon", "Canon EOS 80D") == "Canon EOS 80D"
    assert camera_name("Apple", "iPhone 13") == "Apple iPhone 13" and camera_name(None, None) is None
    assert parse_date_bound("2020-02", end=True) == "2020-02-29T23:59:59"
    assert parse_date_bound("2020-12", end=True) == "2020-12-31T23:59:59"
    assert parse_date_bound("2020-02-03") == "2020-02-03T00:00:00"
    with pytest.raises(ValueError):
        parse_date_bound("2020-02-30")
