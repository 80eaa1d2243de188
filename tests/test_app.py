"""Search app handlers (instdisc.web.handlers), without a browser: search, captions, filters, paging
state, "more like this", the JSON API, the info panel, and every kind of awkward query file."""

from __future__ import annotations

import io
import json
import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instdisc.web.handlers import ANY, QueryError, SearchHandlers
from instdisc.web.render import make_thumbnail
from instdisc.web.render import status as status_line

CAPTION = re.compile(r"^\d\.\d{3} · (circle|cross|square|triangle) · \d{4}\.png$")


@pytest.fixture(scope="module")
def h(shapes_index: Path) -> SearchHandlers:
    from index.search import SearchIndex

    return SearchHandlers(SearchIndex.open(shapes_index, device="cpu"))


@pytest.fixture(autouse=True)
def _quiet_gradio_warnings():
    # gr.Warning outside a request falls back to warnings.warn; the status line carries the text
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def payload(path: Path, name: str | None = None) -> dict:
    """What Gradio hands an event with preprocess=False for an uploaded file."""
    return {"path": str(path), "orig_name": name or path.name, "meta": {"_type": "gradio.FileData"}}


# ---------------------------------------------------------------- searching


def test_search_finds_the_image_itself_first(h: SearchHandlers, shapes_root: Path):
    q = shapes_root / "test" / "circle" / "0003.png"
    res = h.search(payload(q), k=7)
    assert len(res.hits) == 7
    assert res.hits[0].path == "test/circle/0003.png"
    assert res.hits[0].score == pytest.approx(1.0, abs=1e-4)
    scores = [x.score for x in res.hits]
    assert scores == sorted(scores, reverse=True)
    assert res.total_ms >= res.embed_ms + res.search_ms - 1e-6 and res.total_ms > 0


def test_gallery_items_are_captioned_crisp_thumbnails(h: SearchHandlers, shapes_root: Path):
    res = h.search(payload(shapes_root / "train" / "square" / "0010.png"), k=12)
    items = h.tiles.gallery(res.hits)
    assert len(items) == 12
    for (img, caption), hit in zip(items, res.hits, strict=True):
        assert CAPTION.match(caption), caption
        assert caption.startswith(f"{hit.score:.3f}") and hit.label in caption and Path(hit.path).name in caption
        assert img.size == (128, 128)  # 32x32 upscaled 4x ...
        px = np.asarray(img)
        assert (px[0::4, 0::4] == px[3::4, 3::4]).all()  # ... with NEAREST: 4x4 blocks of one colour
    line = status_line(res)
    assert "**12** results" in line and "ms" in line and "0010.png" in line


def test_thumbnail_of_a_large_image_is_shrunk_not_enlarged():
    big = Image.new("RGB", (1000, 500), (10, 20, 30))
    assert max(make_thumbnail(big).size) == 256
    small = Image.new("RGB", (30, 20))
    assert make_thumbnail(small).size == (120, 80)  # whole factor 4


@pytest.mark.parametrize("k,expected", [(0, 1), (1, 1), (5, 5), ("12", 12), (100, 100), (1000, 100), (7.6, 7)])
def test_k_is_clamped_to_the_slider_range(h: SearchHandlers, shapes_root: Path, k, expected):
    res = h.search(payload(shapes_root / "test" / "cross" / "0001.png"), k=k)
    assert res.k == expected and len(res.hits) == expected


def test_bad_k_is_a_clear_error(h: SearchHandlers, shapes_root: Path):
    with pytest.raises(QueryError, match="k must be a whole number"):
        h.search(payload(shapes_root / "test" / "cross" / "0001.png"), k="lots")


def test_label_and_folder_filters(h: SearchHandlers, shapes_root: Path):
    q = payload(shapes_root / "test" / "circle" / "0004.png")
    res = h.search(q, k=30, label="triangle")
    assert len(res.hits) == 30 and {x.label for x in res.hits} == {"triangle"}
    res = h.search(q, k=30, folder="train")
    assert res.hits and all(x.path.startswith("train/") for x in res.hits)
    res = h.search(q, k=10, label="square", folder="test/square")
    assert len(res.hits) == 10 and all(x.path.startswith("test/square/") for x in res.hits)
    assert "filter: label = square, folder = test/square/" in status_line(res)
    assert len(h.search(q, k=5, label=ANY, folder=ANY).hits) == 5  # "(any)" = no filter
    empty = h.search(q, k=5, label="circle", folder="test/square")
    assert empty.hits == [] and "No images match this filter" in status_line(empty)
    with pytest.raises(QueryError, match=r"\.\."):
        h.search(q, k=5, folder="../etc")


def test_choices_examples_and_small_image_detection(h: SearchHandlers):
    assert h.facts.label_choices() == [ANY, "circle", "cross", "square", "triangle"]
    folders = h.facts.folders()
    assert {"train", "test", "train/circle", "test/triangle"} <= set(folders)
    ids = h.facts.example_ids()
    assert len(ids) == 4
    assert sorted(x.label for x in h.index.get(ids)) == ["circle", "cross", "square", "triangle"]
    items = h.tiles.examples(h.facts.example_ids())
    assert [c for _, c in items] == ["circle", "cross", "square", "triangle"]
    assert h.facts.small_images()


def test_info_panel_describes_model_and_index(h: SearchHandlers):
    text = h.facts.info_markdown()
    assert "resnet18" in text and "128-d" in text and "32px" in text
    assert "trained 2 epochs" in text
    assert re.search(r"recorded kNN top-1 \d+\.\d%|kNN accuracy not recorded", text)
    assert "flat" in text and "340 images" in text and "4 labels" in text and "CPU" in text


# ---------------------------------------------------------------- UI events


def test_ui_search_then_refresh_then_more_like_this(h: SearchHandlers, shapes_root: Path):
    gallery, status, state = h.ui_search(payload(shapes_root / "test" / "square" / "0002.png"), 20, ANY, ANY)
    assert len(gallery) == 20 and "**20** results" in status
    assert state["ids"][0] == h.search(payload(shapes_root / "test" / "square" / "0002.png"), 1).hits[0].id
    assert len(state["vec"]) == 128

    # k / filter change: the remembered vector is searched again (no upload needed)
    gallery2, status2, state2 = h.ui_refresh(state, 40, "cross", ANY)
    assert len(gallery2) == 40 and all(" · cross · " in c for _, c in gallery2)
    assert state2["vec"] == state["vec"]

    # clicking result 5 makes it the query: it comes back first, with itself as the top hit
    picked = state2["ids"][5]
    query_img, gallery3, status3, state3 = h.ui_select_result(5, state2, 10, ANY, ANY)
    assert isinstance(query_img, Image.Image) and query_img.size == (224, 224)
    assert state3["ids"][0] == picked and len(gallery3) == 10
    assert h.index.get([picked])[0].path in status3

    # an example click searches that example
    _, g4, _, s4 = h.ui_select_example(0, 5, ANY, ANY)
    assert s4["ids"][0] == h.facts.example_ids()[0] and len(g4) == 5


def test_ui_refresh_without_a_query_changes_nothing(h: SearchHandlers, monkeypatch):
    """With no query (or a click outside the results) every output is Gradio's "leave it as it is"
    update -- not None or an empty list, which would clear the gallery and the status line -- and no
    search runs."""
    import gradio as gr

    keep = gr.skip()
    assert keep == {"__type__": "update"}  # an update that sets nothing
    assert len(h.facts.example_ids()) == 4  # found (and kept) before the searches are counted
    searched = []
    monkeypatch.setattr(h.index, "search_vectors", lambda *a, **kw: searched.append(a) or [[]])
    monkeypatch.setattr(h.batcher, "search", lambda *a, **kw: searched.append(a) or [])
    latencies = list(h.latencies_ms)
    assert h.ui_refresh(None, 30, ANY, ANY) == (keep, keep, keep)
    assert h.ui_refresh({"vec": None, "ids": [], "query": ""}, 30, ANY, ANY) == (keep, keep, keep)
    assert h.ui_select_result(3, None, 30, ANY, ANY) == (keep, keep, keep, keep)
    state = {"vec": [0.0] * 128, "ids": [1, 2, 3], "query": "q.png"}
    assert h.ui_select_result(3, state, 30, ANY, ANY) == (keep, keep, keep, keep)  # past the last result
    assert h.ui_select_result(None, state, 30, ANY, ANY) == (keep, keep, keep, keep)
    assert h.ui_select_example(4, 30, ANY, ANY) == (keep, keep, keep, keep)  # four examples: 0..3
    assert searched == [] and h.latencies_ms == latencies


def test_ui_clear(h: SearchHandlers):
    gallery, status, state = h.ui_clear()
    assert gallery == [] and state is None and "Upload" in status


# ---------------------------------------------------------------- JSON API


def test_api_search_json(h: SearchHandlers, shapes_root: Path):
    out = h.api_search(payload(shapes_root / "test" / "triangle" / "0006.png"), 5)
    json.dumps(out)  # plain JSON
    assert out["k"] == 5 and len(out["ids"]) == len(out["scores"]) == len(out["paths"]) == len(out["labels"]) == 5
    assert out["paths"][0] == "test/triangle/0006.png" and out["labels"][0] == "triangle"
    assert out["scores"][0] == pytest.approx(1.0, abs=1e-4)
    assert out["took_ms"] > 0
    # gradio_client downloads any dict with a "path" key in an answer: there must be none
    assert not any(isinstance(v, dict) and "path" in v for v in out.values())


def test_api_batch_searches_good_images_and_reports_bad_ones(h: SearchHandlers, shapes_root: Path,
                                                             tmp_path: Path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    imgs = [payload(shapes_root / "test" / "circle" / "0001.png"), payload(bad),
            payload(shapes_root / "train" / "cross" / "0002.png")]
    out = h.api_search_batch(imgs, 3, ANY, "test")
    json.dumps(out)
    r = out["results"]
    assert len(r) == 3
    assert r[0]["paths"][0] == "test/circle/0001.png" and len(r[0]["ids"]) == 3
    assert "error" in r[1] and "notes.jpg" in r[1]["error"] and "not a recognised image" in r[1]["error"]
    assert all(p.startswith("test/") for p in r[2]["paths"])  # folder filter applies to the batch
    with pytest.raises(QueryError, match="No images"):
        h.api_search_batch([], 3)
    with pytest.raises(QueryError, match="limit is 64"):
        h.api_search_batch([payload(bad)] * 65, 3)


# ---------------------------------------------------------------- awkward query files


def _png_with_header(width: int, height: int) -> bytes:
    """A syntactically valid PNG header claiming width x height (a decompression bomb's first bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def _save(tmp: Path, name: str, data: bytes) -> Path:
    p = tmp / name
    p.write_bytes(data)
    return p


BAD = {
    "zero-byte": ("empty.png", lambda: b"", "empty file"),
    "truncated jpeg": ("cut.jpg", lambda: _jpeg(Image.effect_noise((64, 64), 60).convert("RGB"))[:400],
                       "corrupt or truncated"),
    "text as jpg": ("readme.jpg", lambda: b"this is a text file, not a picture\n" * 10, "not a recognised image"),
    "png bomb 50000x50000": ("huge.png", lambda: _png_with_header(50000, 50000), "pixel limit|decompression bomb"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_files_get_a_clear_message_and_no_crash(h: SearchHandlers, tmp_path: Path, case: str):
    name, make, reason = BAD[case]
    p = _save(tmp_path, name, make())
    with pytest.raises(QueryError) as e:
        h.search(payload(p), 5)
    msg = str(e.value)
    assert name in msg and re.search(reason, msg), msg
    assert str(tmp_path) not in msg  # the user's file name, not the server's temp path
    # the UI event turns it into a warning and an explanatory status line, not an exception
    gallery, status, state = h.ui_search(payload(p), 5, ANY, ANY)
    assert gallery == [] and state is None and "Could not search" in status and name in status
    with pytest.raises(QueryError):
        h.api_search(payload(p), 5)


def test_missing_upload_and_oversize_file(h: SearchHandlers, tmp_path: Path):
    for empty in (None, {}, ""):
        with pytest.raises(QueryError, match="No image"):
            h.search(empty, 5)
    big = _save(tmp_path, "big.png", b"\0" * (h.max_query_bytes + 1))
    with pytest.raises(QueryError, match="upload limit"):
        h.search(payload(big), 5)


def _sixteen_bit() -> bytes:
    arr = (np.linspace(0, 65535, 48 * 48).reshape(48, 48)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr, mode="I;16").save(buf, format="PNG")
    return buf.getvalue()


def _cmyk() -> bytes:
    return _jpeg(Image.new("CMYK", (40, 40), (0, 255, 255, 0)))  # red in CMYK


def _palette_alpha() -> bytes:
    img = Image.new("P", (40, 40), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (10, 10, 30, 30))
    buf = io.BytesIO()
    img.save(buf, format="PNG", transparency=0)
    return buf.getvalue()


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def _exif_rotated() -> bytes:
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 255, 0), (0, 0, 10, 20))  # yellow band on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    return _jpeg(img, exif=exif.tobytes(), quality=95)


ODD_BUT_FINE = {
    "16-bit png": ("depth16.png", _sixteen_bit),
    "cmyk jpeg": ("cmyk.jpg", _cmyk),
    "palette + transparency png": ("palette.png", _palette_alpha),
    "animated gif": ("anim.gif", _animated_gif),
    "exif-rotated jpeg": ("rotated.jpg", _exif_rotated),
}


@pytest.mark.parametrize("case", list(ODD_BUT_FINE))
def test_unusual_but_valid_images_are_searched(h: SearchHandlers, tmp_path: Path, case: str):
    name, make = ODD_BUT_FINE[case]
    p = _save(tmp_path, name, make())
    img, shown = h.decode_query(payload(p))
    assert img.mode == "RGB" and shown == name
    gallery, status, state = h.ui_search(payload(p), 6, ANY, ANY)
    assert len(gallery) == 6 and "**6** results" in status and state is not None


def test_decoded_colours_and_orientation(h: SearchHandlers, tmp_path: Path):
    cmyk, _ = h.decode_query(payload(_save(tmp_path, "c.jpg", _cmyk())))
    r, g, b = cmyk.getpixel((20, 20))
    assert r > 200 and g < 60 and b < 60  # CMYK red stays red
    pal, _ = h.decode_query(payload(_save(tmp_path, "p.png", _palette_alpha())))
    assert pal.getpixel((0, 0)) == (255, 255, 255)  # transparent -> white background
    assert pal.getpixel((20, 20)) == (255, 0, 0)
    gif, _ = h.decode_query(payload(_save(tmp_path, "a.gif", _animated_gif())))
    assert gif.getpixel((20, 20))[0] > 200  # first frame (red)
    deep, _ = h.decode_query(payload(_save(tmp_path, "d.png", _sixteen_bit())))
    assert deep.getpixel((0, 0))[0] < 5 and deep.getpixel((47, 47))[0] > 250  # full range, not clipped
    rot, _ = h.decode_query(payload(_save(tmp_path, "r.jpg", _exif_rotated())))
    assert rot.size == (20, 40)  # rotated upright
    top = rot.getpixel((10, 3))
    assert top[0] > 200 and top[1] > 200 and top[2] < 80  # the left band is now on top


def test_exif_rotation_changes_the_search_like_rotating_the_pixels(h: SearchHandlers, shapes_root: Path,
                                                                   tmp_path: Path):
    """A camera file stores an indexed image turned a quarter anticlockwise and says so in EXIF
    (orientation 6: turn clockwise to display). The query is what rotating the stored pixels by hand
    gives, pixel for pixel, so it searches like that upright array; the stored pixels as they are
    (what a loader ignoring the orientation would search) give other results."""
    original = Image.open(shapes_root / "test" / "triangle" / "0006.png").convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = _save(tmp_path, "r.jpg", _jpeg(original.transpose(Image.Transpose.ROTATE_90), exif=exif.tobytes(),
                                             quality=95))
    stored = np.asarray(Image.open(rotated).convert("RGB"))  # the decoded pixels, orientation not applied
    by_hand = np.ascontiguousarray(np.rot90(stored, k=-1))  # a quarter turn clockwise
    decoded, _ = h.decode_query(payload(rotated))
    np.testing.assert_array_equal(np.asarray(decoded), by_hand)
    a = h.search(payload(rotated), 10)
    b = h.search(by_hand, 10)  # an array: no EXIF to apply
    assert [x.id for x in a.hits] == [x.id for x in b.hits]
    np.testing.assert_allclose([x.score for x in a.hits], [x.score for x in b.hits], atol=1e-5)
    sideways = h.search(stored, 10)
    assert sideways.hits[0].score < a.hits[0].score - 0.01 and [x.id for x in sideways.hits] != [x.id for x in a.hits]


def test_other_query_forms(h: SearchHandlers, shapes_root: Path):
    p = shapes_root / "test" / "square" / "0003.png"
    ids = [x.id for x in h.search(payload(p), 3).hits]
    assert [x.id for x in h.search(str(p), 3).hits] == ids
    assert [x.id for x in h.search(p.read_bytes(), 3).hits] == ids
    assert [x.id for x in h.search(np.asarray(Image.open(p).convert("RGB")), 3).hits] == ids
    import base64

    data_url = "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode()
    assert [x.id for x in h.search({"path": None, "url": data_url}, 3).hits] == ids


def test_build_demo_wires_the_named_api_endpoints(h: SearchHandlers):
    from instdisc.web.ui import build_demo

    demo = build_demo(h)
    names = {fn.api_name for fn in demo.fns.values() if getattr(fn, "api_name", None)}
    assert {"search", "search_batch"} <= names
    assert "image-rendering: pixelated" in demo.app_css


# ---------------------------------------------------------------- app.py and launch settings


def test_app_main_defaults_and_missing_index(shapes_index: Path, tmp_path: Path, monkeypatch, capsys):
    import instdisc.web.server
    from instdisc.commands import serve as app

    seen = {}
    monkeypatch.setattr(instdisc.web.server, "launch", lambda h, **kw: seen.update(kw, root=h.root))
    assert app.main(["--index", str(shapes_index)]) == 0
    assert seen["host"] == "127.0.0.1" and seen["port"] == 7860 and seen["share"] is False
    assert app.main(["--index", str(shapes_index), "--host", "0.0.0.0", "--port", "8123", "--share"]) == 0
    assert seen["host"] == "0.0.0.0" and seen["port"] == 8123 and seen["share"] is True

    assert app.main(["--index", str(tmp_path / "nope")]) == 2
    assert "no index at" in capsys.readouterr().err
    (tmp_path / "broken").mkdir()
    assert app.main(["--index", str(tmp_path / "broken")]) == 2
    assert "cannot open index" in capsys.readouterr().err
    assert app.DEFAULT_INDEX == "indexes/cifar10"


def test_both_serving_paths_serve_only_the_image_root_and_cap_uploads(h: SearchHandlers, monkeypatch):
    import gradio as gr

    from instdisc.web import server
    from instdisc.web.limits import MAX_QUERY_BYTES

    assert server.gradio_settings(h)["allowed_paths"] == [str(h.root)]
    assert server.gradio_settings(h)["max_file_size"] == "10mb" and MAX_QUERY_BYTES == 10 * 2**20
    seen = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: seen.update(kw))
    server.launch(h, share=True)  # the share-link path: Gradio's own server, same settings
    assert seen["allowed_paths"] == [str(h.root)] and seen["max_file_size"] == "10mb"
    assert seen["server_name"] == "127.0.0.1" and seen["share"] is True
    assert "pixelated" in seen["css"]
    mounted = {}
    monkeypatch.setattr(gr, "mount_gradio_app", lambda app, demo, **kw: mounted.update(kw) or app)
    app = server.make_app(h)  # the default path: FastAPI + the mounted page
    assert mounted["allowed_paths"] == [str(h.root)] and mounted["max_file_size"] == "10mb" and mounted["path"] == "/"
    assert {"/api/search", "/api/health", "/api/images/{id}"} <= set(app.openapi()["paths"])


def test_fallbacks_log_and_show_what_went_wrong(shapes_index: Path, caplog):
    """A broken index must not look like an empty one: the fallback is logged and shown."""
    from index.search import SearchIndex

    idx = SearchIndex.open(shapes_index, device="cpu")
    h = SearchHandlers(idx)

    def broken_labels():
        raise RuntimeError("database disk image is malformed")

    def missing_file(id):
        raise FileNotFoundError(f"no such file: train/circle/{id:04d}.png")

    idx.labels = broken_labels
    idx.image_path = missing_file
    with caplog.at_level("WARNING", logger="instdisc.web"):
        assert h.facts.labels() == []
        items = h.tiles.gallery(idx.get([0, 1]))
    assert "the label list could not be read" in caplog.text and "cannot be shown" in caplog.text
    assert "⚠️ **Problem:** the label list could not be read" in h.facts.info_markdown()
    assert "database disk image is malformed" in h.facts.info_markdown()
    assert all("⚠️ cannot show: no such file" in caption for _, caption in items)
    idx.close()
