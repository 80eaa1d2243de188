"""The Milvus backend against a real Milvus Lite file: build, filtered search equal to the FAISS path's
(label, folder, date taken, camera), --add / --remove, the app's REST search, a kill -9 mid-build, clear
errors (a collection of an older schema included), no credentials recorded."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("milvus_lite")

from photo_exif import exif  # noqa: E402

from benchmarks.browser import free_port  # noqa: E402
from index import milvus_backend as mb  # noqa: E402
from index.build import BuildOptions, add, build, remove  # noqa: E402
from index.cli import main as build_index_main  # noqa: E402
from index.errors import IndexDirError  # noqa: E402
from index.manifest import Manifest  # noqa: E402
from index.search import SearchIndex  # noqa: E402
from index.store import Filters, MetadataStore, Row, write_db  # noqa: E402
from reliability import faults  # noqa: E402
from reliability.inputs import ROOT, run_script  # noqa: E402

SECRET = "root:not-a-real-password-7f3a"
QUERY = Path("test") / "circle" / "0003.png"
FILTERS = [(None, None), ("circle", None), (None, "test"), ("square", "train/square"), ("", "train/"),
           ("nothing-has-this", None), (None, "no/such/folder")]


def milvus_options(**kw) -> BuildOptions:
    return BuildOptions(progress=False, backend="milvus", **kw)


@pytest.fixture(scope="module")
def milvus_index(tiny_run: Path, shapes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shapes images in a Milvus Lite collection, built by the script with a token in the environment."""
    out = tmp_path_factory.mktemp("milvus-index")
    env_before = os.environ.get(mb.TOKEN_ENV)
    os.environ[mb.TOKEN_ENV] = SECRET
    try:
        assert build_index_main(["--checkpoint", str(tiny_run / "checkpoint.pt"), "--out", str(out), "--images",
                                 str(shapes_root), "--backend", "milvus", "--no-progress", "--overwrite"]) == 0
    finally:
        if env_before is None:
            os.environ.pop(mb.TOKEN_ENV)
        else:
            os.environ[mb.TOKEN_ENV] = env_before
    return out


def ids_of(hits) -> list[list[int]]:
    return [[h.id for h in row] for row in hits]


def test_build_records_backend_uri_and_collection_not_credentials(milvus_index: Path):
    text = (milvus_index / "manifest.json").read_text()
    m = json.loads(text)
    assert m["backend"] == "milvus" and m["count"] == 340
    rec = m["milvus"]
    assert rec["uri"] == str((milvus_index / "milvus.db").resolve()) and rec["collection"] == "instdisc"
    assert rec["serving"].startswith("instdisc_") and rec["alias"] is True and rec["index_type"] == "FLAT"
    assert "files" not in m or not m["files"]
    assert SECRET not in text and "password" not in text
    assert not list(milvus_index.glob("index-*.faiss")) and not list(milvus_index.glob("meta-*.sqlite"))
    # the collection holds the metadata as fields, and the alias names the serving collection
    with SearchIndex.open(milvus_index) as si:
        assert si.device == "milvus" and len(si) == 340
    with mb.open_index(milvus_index, Manifest.read(milvus_index)) as coll:  # the server side
        client = coll.client
        assert client.describe_alias("instdisc")["collection_name"] == rec["serving"]
        fields = {f["name"] for f in client.describe_collection(rec["serving"])["fields"]}
        assert {"id", "vector", "path", "label", "split", "width", "height", "sha256", "file_bytes", "mtime_ns",
                "taken", "taken_from", "camera_make", "camera_model", "camera"} == fields


def test_search_and_filters_equal_the_faiss_path(milvus_index: Path, shapes_index: Path):
    with SearchIndex.open(shapes_index, device="cpu") as fa, SearchIndex.open(milvus_index) as mv:
        assert fa.manifest.index.type == "flat"
        assert np.array_equal(fa.ids(), mv.ids()) and fa.labels() == mv.labels()
        assert fa.rows() == mv.rows()  # every field, the photo facts included
        assert fa.cameras() == mv.cameras() == []  # PNGs without EXIF: dated by their file time, no camera
        ids = fa.ids()[::37]
        assert np.allclose(fa.vectors(ids), mv.vectors(ids), atol=1e-6)
        rng = np.random.default_rng(0)
        queries = np.concatenate([fa.vectors(ids[:4]), rng.standard_normal((4, fa.dim)).astype(np.float32)])
        for label, folder in FILTERS:
            a, b = fa.search_vectors(queries, 15, label, folder), mv.search_vectors(queries, 15, label, folder)
            assert ids_of(a) == ids_of(b), (label, folder)
            assert all(abs(x.score - y.score) < 1e-5 and x.path == y.path and x.label == y.label
                       for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))
        assert ids_of(mv.search_vectors(queries, 15, "nothing-has-this")) == [[]] * 8
        with pytest.raises(ValueError, match=r"\.\."):
            mv.search_vectors(queries, 3, folder="../etc")


def test_filters_run_inside_milvus(milvus_index: Path, monkeypatch):
    """The label and folder reach Milvus as its filter expression (no post-filtering of a wider search)."""
    from pymilvus import MilvusClient

    seen = []
    real = MilvusClient.search

    def spy(self, *args, **kw):
        seen.append((kw.get("filter"), kw.get("limit")))
        return real(self, *args, **kw)

    monkeypatch.setattr(MilvusClient, "search", spy)
    with SearchIndex.open(milvus_index) as mv:
        hits = mv.search_vectors(np.ones((1, mv.dim), np.float32), 5, "triangle", "test")[0]
        assert len(hits) == 5 and {h.label for h in hits} == {"triangle"} and all(h.path.startswith("test/")
                                                                               for h in hits)
        assert seen == [('id < 340 and label == "triangle" and path >= "test/" and path < "test0"', 5)]


def test_filter_values_cannot_change_the_expression(milvus_index: Path):
    with SearchIndex.open(milvus_index) as mv:
        q = np.ones((1, mv.dim), np.float32)
        assert mv.search_vectors(q, 5, label='x" or label != "x')[0] == []
        assert mv.search_vectors(q, 5, folder='x" or path != "x')[0] == []
        assert mb.filter_expr(10, 'a"b\\c') == 'id < 10 and label == "a\\"b\\\\c"'
        assert mv.search_vectors(q, 5, filters=Filters(camera='x" or camera != "x'))[0] == []
        assert mv.search_vectors(q, 5, filters=Filters(taken_from='9" or taken < "9'))[0] == []
        assert mb.filter_expr(10, taken_to='2021" or id >= "0', camera="A\\") == \
            'id < 10 and taken <= "2021\\" or id >= \\"0" and camera == "A\\\\"'


def test_add_and_remove_in_place(tiny_run: Path, shapes_root: Path, tmp_path: Path):
    root = tmp_path / "images"
    for cls in ("circle", "square"):
        shutil.copytree(shapes_root / "train" / cls, root / "train" / cls)
    d = tmp_path / "idx"
    build(tiny_run / "checkpoint.pt", d, images=root, options=milvus_options())
    first = Manifest.read(d)
    assert first.count == 120 and first.next_id == 120
    shutil.copytree(shapes_root / "test" / "triangle", root / "test" / "triangle")
    m = add(d, root / "test", options=BuildOptions(progress=False), label="triangle")
    assert m.count == 145 and m.next_id == 145 and m.updates[-1].added == 25
    assert m.generation == first.generation and m.milvus.serving == first.milvus.serving  # changed in place
    probe = root / "test" / "triangle" / "0003.png"
    with SearchIndex.open(d) as si:
        assert len(si) == 145 and si.labels() == ["circle", "square", "triangle"]
        top = si.search_images([probe], 3)[0]
        assert top[0].path == "test/triangle/0003.png" and top[0].score == pytest.approx(1.0, abs=1e-3)
        assert all(h.label == "triangle" for h in si.search_images([probe], 10, folder="test")[0])
    # unchanged files: nothing to do
    assert add(d, root / "test", options=BuildOptions(progress=False), label="triangle").next_id == 145
    m = remove(d, ["test/triangle", "train/circle/0000.png"])
    assert m.count == 119 and m.updates[-1].count == 26
    with SearchIndex.open(d) as si:
        assert len(si) == 119 and "triangle" not in si.labels()
        assert si.search_vectors(np.ones((1, si.dim), np.float32), 5, folder="test")[0] == []
        assert "train/circle/0000.png" not in si.paths()
    with pytest.raises(ValueError, match="not in the index"):
        remove(d, ["train/circle/0000.png"])
    with pytest.raises(IndexDirError, match="outside the index root"):
        add(d, shapes_root / "test" / "cross", options=BuildOptions(progress=False))


def test_rows_beyond_next_id_stay_invisible_and_are_cleared(tiny_run: Path, shapes_root: Path, tmp_path: Path):
    """What an --add killed before its manifest commit leaves: rows with ids >= next_id."""
    root = tmp_path / "images"
    shutil.copytree(shapes_root / "train" / "cross", root / "train" / "cross")
    shutil.copytree(shapes_root / "train" / "circle", root / "train" / "circle")
    d = tmp_path / "idx"
    m = build(tiny_run / "checkpoint.pt", d, images=root, options=milvus_options())
    with SearchIndex.open(d) as si, mb.open_index(d, m) as coll:
        v = si.vectors([0])
        row = si.get([0])[0]
        coll.client.insert(m.milvus.serving, [mb.entity(mb.Row(m.next_id, "train/cross/ghost.png", row.label,
                                                                "train"), v[0])])
        assert coll.count("id >= 0") == 121  # the row is there (a duplicate of entry 0's vector) ...
        assert [h.id for h in si.search_vectors(v, 3)[0]][0] == 0 and m.next_id not in {
            h.id for h in si.search_vectors(v, 3)[0]}
        assert len(si.ids()) == 120 and "train/cross/ghost.png" not in si.paths()  # ... but not committed
        with pytest.raises(KeyError):
            si.get([m.next_id])
    remove(d, ["train/circle/0001.png"])  # the next writer deletes it
    with mb.open_index(d, Manifest.read(d)) as coll:
        assert coll.count("id >= 0") == 119


@pytest.fixture(scope="module")
def served(milvus_index: Path):
    from instdisc.web.handlers import SearchHandlers
    from instdisc.web.server import serving

    h = SearchHandlers(SearchIndex.open(milvus_index))
    with serving(h, port=free_port()) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client, h
    h.batcher.close()
    h.index.close()


def test_rest_search_on_a_milvus_index(served, shapes_root: Path, shapes_index: Path):
    client, h = served
    r = client.post("/api/search", files={"image": ("q.png", (shapes_root / QUERY).read_bytes(), "image/png")},
                    data={"k": "7", "label": "circle", "folder": "test"})
    assert r.status_code == 200, r.text
    res = r.json()
    assert res["paths"][0] == QUERY.as_posix() and res["scores"][0] == pytest.approx(1.0, abs=1e-3)
    assert len(res["ids"]) == 7 and set(res["labels"]) == {"circle"} and all(p.startswith("test/")
                                                                              for p in res["paths"])
    with SearchIndex.open(shapes_index, device="cpu") as fa:
        assert res["ids"] == [x.id for x in fa.search_images([shapes_root / QUERY], 7, "circle", "test")[0]]
    health = client.get("/api/health").json()
    assert health["count"] == 340 and health["device"] == "milvus"


def test_lite_file_is_refused_while_another_process_holds_it(milvus_index: Path, tmp_path: Path):
    """Milvus Lite: one process per file. The app holds its client; a second process gets a clear error."""
    d = tmp_path / "copy"
    shutil.copytree(milvus_index, d, ignore=shutil.ignore_patterns("LOCK"))
    m = json.loads((d / "manifest.json").read_text())
    m["milvus"]["uri"] = str(d / "milvus.db")
    (d / "manifest.json").write_text(json.dumps(m))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from index.search import SearchIndex; "
         f"si = SearchIndex.open({str(d)!r}); print('open', flush=True); time.sleep(60)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(mb.MilvusError, match="open in another process"):
            SearchIndex.open(d)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with SearchIndex.open(d) as si:  # free again once the holder is gone
        assert len(si) == 340


def test_kill_mid_build_leaves_the_old_collection_serving(milvus_index: Path, shapes_root: Path, tiny_run: Path,
                                                          tmp_path: Path):
    d = tmp_path / "idx"
    shutil.copytree(milvus_index, d, ignore=shutil.ignore_patterns("LOCK"))
    m = json.loads((d / "manifest.json").read_text())
    m["milvus"]["uri"] = str(d / "milvus.db")
    (d / "manifest.json").write_text(json.dumps(m))
    before = faults.snapshot(d)
    assert isinstance(before, dict) and before["count"] == 340
    # rebuild from the test images only: a different collection, so old and new cannot be confused
    args = ["scripts/build_index.py", "--checkpoint", str(tiny_run / "checkpoint.pt"), "--out", str(d),
            "--images", str(shapes_root / "test"), "--backend", "milvus", "--overwrite", "--no-progress"]
    for target in ("milvus-info-*.json:after-rename", "manifest.json:before-rename"):  # rows in / all but commit
        r = run_script(args, env={**os.environ, faults.FAULT_ENV: target})
        assert r.returncode == -signal.SIGKILL, (target, r.stderr[-2000:])
        after = faults.snapshot(d)
        assert faults.same_state(after, before) and after["generation"] == before["generation"], target
        with mb.open_index(d, Manifest.read(d)) as coll:  # the killed build's collection is there, unserved
            names = coll.client.list_collections()
            assert len(names) == 2 and m["milvus"]["serving"] in names, names
    r = run_script(args)
    assert r.returncode == 0, r.stderr[-2000:]
    done = faults.snapshot(d)
    assert done["count"] == 100 and done["generation"] != before["generation"]
    new = Manifest.read(d).milvus
    with mb.open_index(d, Manifest.read(d)) as coll:
        assert coll.client.list_collections() == [new.serving]  # the old and the killed one dropped
        assert coll.client.describe_alias("instdisc")["collection_name"] == new.serving
    assert sorted(p.name for p in d.glob("milvus-info-*.json")) == [new.info_file]


def test_bad_uris_and_unreachable_servers_give_clear_errors(tiny_run: Path, shapes_root: Path, tmp_path: Path):
    ck = tiny_run / "checkpoint.pt"
    images = shapes_root / "test" / "cross"
    cases = [("ftp://host/x", "expected a Milvus Lite file"), ("./not-a-db-folder", "expected a Milvus Lite file"),
             ("http://root:secret@localhost:19530", "credentials do not go in the URI"),
             ("http://localhost:19530?token=abc", "credentials do not go in the URI"),
             ("http://127.0.0.1:1", "cannot reach Milvus at http://127.0.0.1:1"),
             (str(tmp_path / "missing" / "x.db"), "does not exist")]
    for uri, msg in cases:
        with pytest.raises(mb.MilvusError, match=msg):
            build(ck, tmp_path / "idx", images=images, options=milvus_options(milvus_uri=uri), overwrite=True)
        assert not (tmp_path / "idx" / "manifest.json").exists()
    with pytest.raises(mb.MilvusError, match="FAISS factory strings are for the FAISS backend"):
        build(ck, tmp_path / "idx", images=images, options=milvus_options(index_type="IVF64,PQ8"), overwrite=True)
    with pytest.raises(mb.MilvusError, match="letters, digits and underscores"):
        build(ck, tmp_path / "idx", images=images, options=milvus_options(collection="bad-name"), overwrite=True)


@pytest.mark.parametrize("index_type", ["ivf", "hnsw"])
def test_approximate_types_are_tuned_and_answer_as_exact_search(tiny_run: Path, shapes_root: Path, tmp_path: Path,
                                                                index_type: str):
    m = build(tiny_run / "checkpoint.pt", tmp_path / "idx", images=shapes_root,
              options=milvus_options(index_type=index_type, recall_queries=50))
    knob = {"ivf": "nprobe", "hnsw": "ef"}[index_type]
    assert m.milvus.index_type == {"ivf": "IVF_FLAT", "hnsw": "HNSW"}[index_type] and m.index.params[knob] >= 1
    assert m.index.recall_queries == 50 and m.index.recall_at_10 >= 0.95 and m.index.tuning
    with SearchIndex.open(tmp_path / "idx") as si:
        v = si.vectors(si.ids()[::20])
        for row, hits in zip(si.ids()[::20], si.search_vectors(v, 5), strict=True):
            assert hits[0].id == row and hits[0].score == pytest.approx(1.0, abs=1e-4)
        few = si.search_vectors(v[:2], 30, label="cross", folder="test")  # 25 match: all of them, widened if short
        assert [len(h) for h in few] == [25, 25] and all(x.label == "cross" for h in few for x in h)


def test_schema_mismatch_and_foreign_collections_are_refused(tiny_run: Path, shapes_root: Path, tmp_path: Path):
    ck = tiny_run / "checkpoint.pt"
    images = shapes_root / "test" / "cross"
    shared = str(tmp_path / "shared.db")
    m = build(ck, tmp_path / "a", images=images, options=milvus_options(milvus_uri=shared))
    # another index folder may not take over the same collection name at the same server
    with pytest.raises(mb.MilvusError, match="already holds collection instdisc"):
        build(ck, tmp_path / "b", images=images, options=milvus_options(milvus_uri=shared))
    build(ck, tmp_path / "b", images=images, options=milvus_options(milvus_uri=shared, collection="other"))
    with SearchIndex.open(tmp_path / "a") as si:
        assert len(si) == 25  # untouched by the second folder
    with mb.open_index(tmp_path / "a", m) as coll:
        mb.create_collection(coll.client, "wrong_20990101_000000_abcdef", 64)
    # the manifest pointed at a collection of another shape
    raw = json.loads((tmp_path / "a" / "manifest.json").read_text())
    raw["milvus"]["collection"], raw["milvus"]["serving"] = "wrong", "wrong_20990101_000000_abcdef"
    (tmp_path / "a" / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(mb.MilvusError, match="does not have this index's schema: vector dimension 64 != 128"):
        SearchIndex.open(tmp_path / "a")
    raw["milvus"]["serving"] = "wrong_20990101_000000_abcdee"
    (tmp_path / "a" / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(mb.MilvusError, match="has no collection wrong_20990101_000000_abcdee"):
        SearchIndex.open(tmp_path / "a")
    raw["milvus"]["serving"] = m.milvus.serving  # not a generation of "wrong": an edited manifest
    (tmp_path / "a" / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(IndexDirError, match="not a generation of 'wrong'"):
        SearchIndex.open(tmp_path / "a")


def test_what_only_faiss_does_is_refused_by_name(milvus_index: Path, capsys):
    with pytest.raises(IndexDirError, match="mmap memory-maps a FAISS index file"):
        SearchIndex.open(milvus_index, mmap=True)
    with pytest.raises(IndexDirError, match="searched by the Milvus server"):
        SearchIndex.open(milvus_index, device="faiss-gpu")
    from index.layout import open_dir

    with pytest.raises(IndexDirError, match="a milvus index"):
        open_dir(milvus_index)
    with SearchIndex.open(milvus_index) as si, pytest.raises(ValueError, match="at most 16384"):
        si.search_vectors(np.ones((1, si.dim), np.float32), 20000)
    assert build_index_main(["--out", str(milvus_index), "--remove", "x", "--backend", "milvus"]) == 2
    assert "fixed when an index is built" in capsys.readouterr().err


def test_explore_reads_through_the_public_api(milvus_index: Path, shapes_index: Path):
    from instdisc.explore.explorer import Explorer

    a = Explorer.for_index(SearchIndex.open(shapes_index, device="cpu"))
    b = Explorer.for_index(SearchIndex.open(milvus_index))
    assert a.collection.paths == b.collection.paths and np.allclose(a.collection.vectors, b.collection.vectors,
                                                                    atol=1e-6)
    da, db = a.duplicates(0.9), b.duplicates(0.9)
    assert [g.rows for g in da.groups] == [g.rows for g in db.groups]
    assert np.array_equal(a.clusters(4).assignment, b.clusters(4).assignment)
    assert np.allclose(a.map("pca").xy, b.map("pca").xy, atol=1e-4)


def test_evaluation_scores_a_milvus_index_as_the_faiss_one(tiny_run: Path, shapes_root: Path, tmp_path: Path):
    from instdisc.evaluation.run import EvalOptions, evaluate

    o = EvalOptions(baselines=(), near_dup_samples=0, latency_queries=2, e2e_queries=1, e2e_batch=2,
                    grid_queries=1, progress=False, device="cpu")
    build(tiny_run / "checkpoint.pt", tmp_path / "f", options=BuildOptions(progress=False, device="cpu"))
    build(tiny_run / "checkpoint.pt", tmp_path / "m", options=milvus_options(device="cpu"))
    fa = evaluate(tmp_path / "f", shapes_root / "test", tmp_path / "rf", o)
    mv = evaluate(tmp_path / "m", shapes_root / "test", tmp_path / "rm", o)
    assert mv["gallery"]["count"] == fa["gallery"]["count"] == 240
    for method in fa["methods"]:
        assert mv["methods"][method]["knn_top1"] == fa["methods"][method]["knn_top1"], method
        assert mv["methods"][method]["map"] == pytest.approx(fa["methods"][method]["map"], abs=1e-6), method


# ---------------------------------------------------------------- date taken and camera

CAMERAS = (("Apple", "iPhone 13"), ("Canon", "Canon EOS 80D"), ("Odd\\Co", 'Cam "X"'))  # the last needs quoting
ODD_CAMERA = 'Odd\\Co Cam "X"'
# EXIF dates; the year's last and first seconds test that both bounds are inclusive
DATES = ("2019:05:01 08:00:00", "2020:01:01 00:00:00", "2020:06:15 12:30:00", "2020:12:31 23:59:59",
         "2021:01:01 00:00:00", "2021:03:03 03:03:03")
FILE_TIME = time.mktime((2019, 7, 1, 12, 0, 0, 0, 0, -1))  # the photos without EXIF: 2019-07-01T12:00:00 local
PHOTO_FILTERS = [
    Filters(camera="Canon EOS 80D"), Filters(camera=ODD_CAMERA), Filters(camera="Canon"),  # equality, not prefix
    Filters(camera="No Such Camera"), Filters(camera='x" or camera != "x'),
    Filters(taken_from="2020-01-01T00:00:00", taken_to="2020-12-31T23:59:59"),
    Filters(taken_from="2021-01-01T00:00:00"), Filters(taken_to="2019-12-31T23:59:59"),
    Filters(taken_from="2019-07-01T12:00:00", taken_to="2019-07-01T12:00:00"),  # the file-time photos exactly
    Filters(taken_from="2022-01-01T00:00:00", taken_to="2021-01-01T00:00:00"),
    Filters(label="circle", camera="Apple iPhone 13", taken_from="2020-01-01T00:00:00"),
    Filters(folder="test/square", taken_to="2020-06-30T23:59:59"), Filters(folder="test", camera="Canon EOS 80D"),
    Filters(taken_from="", taken_to="", camera=""),  # empty values do not filter
]



def make_photos(shapes_root: Path, out: Path) -> Path:
    """The shapes test images as JPEGs with EXIF (three cameras, some without one, dates 2019-2021) and as PNGs
    without EXIF dated by their file time, under out/test/<shape>/."""
    n = 0
    for shape in ("circle", "square", "triangle"):
        (out / "test" / shape).mkdir(parents=True)
        for i in range(6):
            src = Image.open(shapes_root / "test" / shape / f"{i:04d}.png").convert("RGB")
            make, model = CAMERAS[n % 3] if n % 4 else (None, None)
            dst = out / "test" / shape / f"IMG_{i}.jpg"
            src.save(dst, exif=exif(None, make, model, DATES[n % len(DATES)] if n % 5 else None), quality=95)
            if n % 5 == 0:  # no date in the header: the file's time is the date taken
                os.utime(dst, (FILE_TIME, FILE_TIME))
            n += 1
        for i in range(6, 8):
            dst = out / "test" / shape / f"scan_{i}.png"
            shutil.copyfile(shapes_root / "test" / shape / f"{i:04d}.png", dst)
            os.utime(dst, (FILE_TIME, FILE_TIME))
    return out


@pytest.fixture(scope="module")
def photo_indexes(tiny_run: Path, shapes_root: Path, tmp_path_factory: pytest.TempPathFactory
                  ) -> tuple[Path, Path, Path]:
    """(images, FAISS index, Milvus index) of the same 24 photos."""
    root = make_photos(shapes_root, tmp_path_factory.mktemp("photos"))
    base = tmp_path_factory.mktemp("photo-indexes")
    build(tiny_run / "checkpoint.pt", base / "faiss", images=root, options=BuildOptions(progress=False, device="cpu"))
    build(tiny_run / "checkpoint.pt", base / "milvus", images=root, options=milvus_options(device="cpu"))
    return root, base / "faiss", base / "milvus"


def test_photo_facts_and_their_filters_equal_the_faiss_path(photo_indexes):
    root, faiss_dir, milvus_dir = photo_indexes
    with SearchIndex.open(faiss_dir, device="cpu") as fa, SearchIndex.open(milvus_dir) as mv:
        rows = mv.rows()
        assert len(rows) == 24 and fa.rows() == rows  # every field: size, file time, date, its source, camera
        assert fa.cameras() == mv.cameras() == sorted(["Apple iPhone 13", "Canon EOS 80D", ODD_CAMERA])
        assert {r.taken_from for r in rows} == {"exif", "file"}
        assert sum(r.taken == "2019-07-01T12:00:00" for r in rows) == 10  # 6 scans + 4 JPEGs without a date
        assert [h.to_dict() for h in fa.get([3, 7])] == [h.to_dict() for h in mv.get([3, 7])]
        queries = fa.vectors(fa.ids()[::7])
        sizes = []
        for f in PHOTO_FILTERS:
            for k in (3, 40):
                a, b = fa.search_vectors(queries, k, filters=f), mv.search_vectors(queries, k, filters=f)
                assert ids_of(a) == ids_of(b), (f, k)
                assert [{**h.to_dict(), "score": 0} for h in a[0]] == [{**h.to_dict(), "score": 0} for h in b[0]]
                assert [h.score for h in a[0]] == pytest.approx([h.score for h in b[0]], abs=1e-5)
            sizes.append(len(b[0]))
        # the filters select something, and not everything
        assert sizes == [4, 5, 0, 0, 0, 8, 4, 12, 10, 0, 1, 6, 4, 24], sizes  # counted by hand from make_photos


def test_date_and_camera_filters_run_inside_milvus(photo_indexes, monkeypatch):
    from pymilvus import MilvusClient

    seen = []
    real = MilvusClient.search

    def spy(self, *args, **kw):
        seen.append(kw.get("filter"))
        return real(self, *args, **kw)

    monkeypatch.setattr(MilvusClient, "search", spy)
    with SearchIndex.open(photo_indexes[2]) as mv:
        f = Filters(label="circle", taken_from="2020-01-01T00:00:00", taken_to="2021-12-31T23:59:59",
                    camera=ODD_CAMERA)
        hits = mv.search_vectors(np.ones((1, mv.dim), np.float32), 5, filters=f)[0]
        assert [(h.path, h.camera, h.taken) for h in hits] == [("test/circle/IMG_2.jpg", ODD_CAMERA,
                                                                 "2020-06-15T12:30:00")]
    assert seen == ['id < 24 and label == "circle" and taken >= "2020-01-01T00:00:00" and '
                    'taken <= "2021-12-31T23:59:59" and camera == "Odd\\\\Co Cam \\"X\\""']


def test_entries_without_a_date_or_camera_fail_those_filters_as_in_sqlite(tmp_path: Path):
    """NULL facts (an entry whose file could not be read, or one indexed before they were recorded): both stores
    leave it out of any date or camera filter and keep it otherwise."""
    rows = [Row(0, "a/0.jpg", "x", None, 4, 3, "h0", 10, 1, "2020-05-05T10:00:00", "exif", "Canon", "Canon EOS 80D",
                "Canon EOS 80D"),
            Row(1, "a/1.jpg", "x"),
            Row(2, "b/2.jpg", "y", None, None, None, None, 12, 2, "2021-01-01T00:00:00", "file", None, None, None),
            Row(3, "b/3.jpg", "y", None, 1, 1, "h3", 13, 3, "2019-01-01T00:00:00", "exif", None, "Pixel", "Pixel")]
    vectors = np.eye(4, dtype=np.float32)
    write_db(tmp_path / "meta.sqlite", rows, {})
    uri = str(tmp_path / "null.db")
    client = mb.connect(uri)
    mb.create_collection(client, "null_facts", 4)
    mb.insert_rows(client, "null_facts", rows, vectors)
    client.create_index("null_facts", mb.index_params(client, "FLAT", {}))
    store = MetadataStore(tmp_path / "meta.sqlite")
    with mb.MilvusIndex(uri, "null_facts", 4, 4, "FLAT", {}, client=client) as coll:
        assert coll.rows() == store.rows() == rows and coll.cameras() == store.cameras() == ["Canon EOS 80D", "Pixel"]
        for f in [Filters(taken_from="2000"), Filters(taken_to="2100"), Filters(camera="Pixel"),
                  Filters(camera="Canon EOS 80D", taken_to="2020-12-31T23:59:59"), Filters(label="x"), Filters()]:
            found = sorted(r.id for _, r in coll.search(np.ones((1, 4), np.float32), 10, f)[0])
            want = store.ids_matching(filters=f)
            assert found == (list(range(4)) if want is None else want.tolist()), f
    store.close()
    long = Row(9, "c/9.jpg", camera_make="é" * 40_000, camera_model="m", camera="é" * 40_000 + " m")
    e = mb.entity(long, np.zeros(4, np.float32))  # a damaged header's camera: cut to the field, not a failed build
    assert len(e["camera"].encode()) == len(e["camera_make"].encode()) == 65_534 and e["camera"] == "é" * 32_767


def test_add_stores_the_photo_facts(tiny_run: Path, photo_indexes, tmp_path: Path):
    root, faiss_dir, _ = photo_indexes
    images = tmp_path / "images"
    shutil.copytree(root / "test" / "circle", images / "test" / "circle")  # keeps the files' times
    d = tmp_path / "idx"
    build(tiny_run / "checkpoint.pt", d, images=images, options=milvus_options(device="cpu"))
    shutil.copytree(root / "test" / "square", images / "test" / "square")
    add(d, images / "test" / "square", options=BuildOptions(progress=False, device="cpu"))

    def facts(r: Row) -> tuple:
        return r.path, r.sha256, r.file_bytes, r.mtime_ns, r.taken, r.taken_from, r.camera_make, r.camera_model, \
            r.camera

    with SearchIndex.open(faiss_dir, device="cpu") as fa, SearchIndex.open(d) as mv:
        want = sorted(facts(r) for r in fa.rows() if not r.path.startswith("test/triangle/"))
        assert sorted(facts(r) for r in mv.rows()) == want and len(want) == 16
        added = mv.search_vectors(np.ones((1, mv.dim), np.float32), 20, filters=Filters(folder="test/square",
                                                                                        camera="Canon EOS 80D"))[0]
        assert len(added) == 2 and all(h.id >= 8 for h in added)


def test_filtered_search_through_the_app_on_a_milvus_index(photo_indexes):
    """The handlers behind the page and the Gradio /search_filtered endpoint, and the REST API."""
    from instdisc.web.handlers import SearchHandlers
    from instdisc.web.server import serving

    root, faiss_dir, milvus_dir = photo_indexes
    q = root / "test" / "square" / "IMG_1.jpg"
    h = SearchHandlers(SearchIndex.open(milvus_dir))
    try:
        with SearchIndex.open(faiss_dir, device="cpu") as fa:
            def faiss_ids(**f) -> list[int]:
                return [x.id for x in fa.search_images([q], 20, filters=Filters(**f))[0]]

            assert h.facts.cameras() == fa.cameras()
            res = h.api_search(str(q), 20, date_from="2020", date_to="2020", camera="Canon EOS 80D")
            assert res["ids"] == faiss_ids(taken_from="2020-01-01T00:00:00", taken_to="2020-12-31T23:59:59",
                                           camera="Canon EOS 80D") and res["ids"]
            assert set(res["cameras"]) == {"Canon EOS 80D"} and all(t.startswith("2020-") for t in res["taken"])
            with serving(h, port=free_port()) as url, httpx.Client(base_url=url, timeout=60) as client:
                r = client.post("/api/search", files={"image": ("q.jpg", q.read_bytes(), "image/jpeg")},
                                data={"k": "20", "camera": ODD_CAMERA, "date_to": "2020-12"})
                assert r.status_code == 200, r.text
                assert r.json()["ids"] == faiss_ids(camera=ODD_CAMERA, taken_to="2020-12-31T23:59:59")
                assert len(r.json()["ids"]) == 3 and set(r.json()["cameras"]) == {ODD_CAMERA}
    finally:
        h.batcher.close()
        h.index.close()


def old_schema_collection(client, name: str, dim: int) -> None:
    """What create_collection made before the photo facts were stored in Milvus."""
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    for field, (kind, length, nullable) in mb.META_FIELDS.items():
        schema.add_field(field, getattr(DataType, kind), nullable=nullable,
                         **({"max_length": length} if kind == "VARCHAR" else {}))
    client.create_collection(name, schema=schema, consistency_level="Strong")


def test_a_collection_without_the_photo_fields_is_refused_until_rebuilt(tiny_run: Path, shapes_root: Path,
                                                                         tmp_path: Path):
    d, images = tmp_path / "idx", shapes_root / "test" / "cross"
    m = build(tiny_run / "checkpoint.pt", d, images=images, options=milvus_options(device="cpu"))
    old = "instdisc_20990101_000000_abcdef"  # a generation of the collection, written by the earlier version
    with SearchIndex.open(d) as si, mb.open_index(d, m) as coll:
        rows, vectors = si.rows(), si.vectors(si.ids())
        old_schema_collection(coll.client, old, m.dim)
        coll.client.insert(old, [{k: x for k, x in mb.entity(r, v).items() if k in ("id", "vector", *mb.META_FIELDS)}
                                 for r, v in zip(rows, vectors, strict=True)])
        coll.client.create_index(old, mb.index_params(coll.client, "FLAT", {}))
    raw = json.loads((d / "manifest.json").read_text())
    raw["milvus"]["serving"] = old
    (d / "manifest.json").write_text(json.dumps(raw))
    msg = (r"collection instdisc_20990101_000000_abcdef was built before this version stored photo facts in Milvus "
           r"\(no fields file_bytes, mtime_ns, taken, taken_from, camera_make, camera_model, camera\): its schema "
           r"does not match; rebuild it: python scripts/build_index.py .* --backend milvus --overwrite")
    with pytest.raises(mb.MilvusError, match=msg):
        SearchIndex.open(d)
    with pytest.raises(mb.MilvusError, match=msg):
        add(d, images, options=BuildOptions(progress=False, device="cpu"))
    build(tiny_run / "checkpoint.pt", d, images=images, options=milvus_options(device="cpu"), overwrite=True)
    with SearchIndex.open(d) as si:  # the rebuild replaced (and dropped) the old collection
        assert len(si) == 25 and si.cameras() == [] and si.rows()[0].taken_from == "file"
        assert si.search_vectors(np.ones((1, si.dim), np.float32), 5, filters=Filters(camera="x"))[0] == []
    with mb.open_index(d, Manifest.read(d)) as coll:
        assert coll.client.list_collections() == [coll.collection]
