"""The index package: exact and tuned search, filters, add/remove, on-disk checks, the build script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch

from index.auto import build_vector_index, estimate_bytes, nlist_for, parse_bytes, plan_index
from index.backends import FaissBackend, TorchFlatBackend
from index.build import BuildOptions, add, build, labels_and_splits, remove
from index.errors import IndexDirError, UnsafePathError
from index.layout import open_dir
from index.search import SearchIndex, safe_join
from index.synthetic import clustered_unit_vectors
from tests.tampering import set_stored_path

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ["circle", "cross", "square", "triangle"]
QUIET = BuildOptions(progress=False, device="cpu")


def unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = q @ x.T
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, idx, 1), idx


@pytest.fixture(scope="module", autouse=True)
def _one_faiss_thread():
    """The test machine is shared with training jobs; one OpenMP thread avoids spin-waiting on busy cores."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def bank_index(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An index built (in-process) from the tiny run's memory bank; tests copy it before changing it."""
    out = tmp_path_factory.mktemp("idx") / "bank"
    build(tiny_run / "checkpoint.pt", out, options=QUIET)
    return out


def copy_index(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "idx"
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------- exact search


def test_exact_search_equals_numpy_brute_force() -> None:
    x, q = unit(3000, 32), unit(25, 32, seed=1)
    ids = np.arange(3000, dtype=np.int64) * 7 + 3  # ids need not be row numbers
    index, info = build_vector_index(x, ids, "flat", progress=False)
    assert info.type == "flat" and info.recall_at_10 == 1.0
    s_ref, i_ref = brute(x, q, 10)
    for backend in (FaissBackend(index, {}), TorchFlatBackend(index, "cpu")):
        s, i = backend.search(q, 10)
        np.testing.assert_array_equal(i, ids[i_ref])
        np.testing.assert_allclose(s, s_ref, rtol=1e-5, atol=1e-5)
    # restricted to a few allowed ids: exactly the best of those, k of them
    allowed = np.sort(ids[np.random.default_rng(2).choice(3000, 40, replace=False)])
    rows = (allowed - 3) // 7
    s_ref, i_ref = brute(x[rows], q, 10)
    for backend in (FaissBackend(index, {}), TorchFlatBackend(index, "cpu")):
        s, i = backend.search(q, 10, allowed)
        np.testing.assert_array_equal(i, allowed[i_ref])
        np.testing.assert_allclose(s, s_ref, rtol=1e-5, atol=1e-5)


def test_filtered_ivf_search_still_returns_k() -> None:
    x, q = unit(4000, 16), unit(8, 16, seed=3)
    index, _ = build_vector_index(x, None, "IVF32,Flat", n_queries=100, progress=False)
    allowed = np.sort(np.random.default_rng(4).choice(4000, 12, replace=False)).astype(np.int64)
    s, i = FaissBackend(index, {"nprobe": 1}).search(q, 5, allowed)
    _, i_ref = brute(x[allowed], q, 5)
    np.testing.assert_array_equal(i, allowed[i_ref])  # nprobe escalated until exact
    s, i = FaissBackend(index, {"nprobe": 1}).search(q, 20, allowed)
    assert ((i >= 0).sum(1) == 12).all() and (i[:, 12:] == -1).all()


# ---------------------------------------------------------------- auto


def test_plan_rules() -> None:
    assert plan_index(500_000, 128).kind == "flat"
    p = plan_index(2_000_000, 128)
    assert p.kind == "ivf" and p.factory == f"IVF{nlist_for(2_000_000)},Flat" and nlist_for(2_000_000) == 4096
    assert plan_index(2_000_000, 128, prefer_hnsw=True).kind == "hnsw"
    pq = plan_index(2_000_000, 128, memory_budget=parse_bytes("256M"))
    assert pq.kind == "ivfpq" and pq.estimated_bytes <= parse_bytes("256M")
    sq = plan_index(200_000, 128, memory_budget=parse_bytes("64M"))  # raw vectors too big, 8-bit codes fit
    assert sq.kind == "ivfsq" and sq.factory == f"IVF{nlist_for(200_000)},SQ8" and sq.estimated_bytes <= 64 * 2**20
    assert plan_index(200_000, 128, memory_budget=parse_bytes("16M")).kind == "ivfpq"  # even SQ8 too big
    assert plan_index(1000, 32, "ivfsq").factory == "IVF16,SQ8"
    assert plan_index(1000, 128, "IVF16,PQ8").factory == "IVF16,PQ8"
    with pytest.raises(ValueError, match="neither one of"):
        plan_index(1000, 128, "NotAnIndex")
    assert nlist_for(100) == 2 and nlist_for(1) == 1


def test_auto_reaches_recall_target_on_clustered_100k() -> None:
    data = clustered_unit_vectors(100_200, 128, centres=500, seed=0)
    x, q = data[:100_000], data[100_000:]  # the last 200 are never indexed: fresh queries
    # flat_max lowered so auto picks IVF at this size and has to tune nprobe
    index, info = build_vector_index(x, None, "auto", flat_max=50_000, n_queries=300, progress=False)
    assert info.type == "ivf" and info.factory == "IVF1024,Flat"
    assert info.target_reached and info.recall_at_10 >= 0.95
    # tuned on queries that were not index rows while measured, and recorded as such
    assert info.recall_queries == 300 and info.recall_query_kind == "held out of the index while measured"
    assert index.ntotal == 100_000  # ... and added once the knob was chosen
    nprobe = info.params["nprobe"]
    assert 1 <= nprobe < 1024 and info.tuning
    # an independent measurement on unseen queries reaches the target too
    _, truth = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)
    _, found = index.search(q, 10)
    recall = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(found, truth, strict=True)])
    assert recall >= info.target_recall, recall


def test_auto_under_a_memory_budget_keeps_recall_with_8bit_codes() -> None:
    """Raw vectors over the budget: auto picks IVF-SQ8, tunes nprobe to the target on held-out queries,
    fits the budget on disk, and fresh queries confirm the recall: the target reached at the chosen nprobe,
    missed at the one below it (IVF-PQ at the same nlist falls short)."""
    both = clustered_unit_vectors(20_300, 32, centres=200, seed=3)
    x, fresh = both[:20_000], both[20_000:]  # fresh: same clusters, never indexed
    budget = parse_bytes("1.5M")
    assert estimate_bytes("ivf", 20_000, 32, nlist_for(20_000)) > budget  # IVF-Flat would not fit
    index, info = build_vector_index(x, None, "auto", memory_budget=budget, n_queries=300, progress=False)
    assert info.type == "ivfsq" and info.factory == "IVF512,SQ8" and "8-bit" in info.reason
    assert info.target_reached and info.recall_at_10 >= 0.95 and 1 < info.params["nprobe"] < 64  # few lists
    assert len(faiss.serialize_index(index)) <= budget
    _, truth = brute(x, fresh, 10)

    def fresh_recall(nprobe: int) -> float:
        _, found = index.search(fresh, 10, params=faiss.SearchParametersIVF(nprobe=nprobe))
        return np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found.tolist(), truth.tolist(), strict=True)])

    nprobe = info.params["nprobe"]
    assert fresh_recall(nprobe) >= info.target_recall == 0.95
    assert fresh_recall(nprobe - 1) < info.target_recall  # the smallest nprobe that reaches it
    with pytest.warns(UserWarning, match="not reached"):
        _, pq_info = build_vector_index(x, None, "IVF512,PQ8x4", n_queries=300, progress=False)
    assert not pq_info.target_reached and pq_info.recall_at_10 < info.recall_at_10


def test_ivfpq_and_hnsw_tune_their_knob() -> None:
    x = clustered_unit_vectors(10_000, 32, centres=100, seed=5)
    index, info = build_vector_index(x, None, "hnsw", n_queries=200, progress=False)
    assert info.type == "hnsw" and "efSearch" in info.params and info.recall_at_10 >= 0.95
    # small codebooks (6 bits) keep PQ training quick; compressed codes cap recall, hence the low target
    index, info = build_vector_index(x, None, "IVF64,PQ8x6", n_queries=200, target_recall=0.3, progress=False)
    assert info.type == "ivf" and "nprobe" in info.params and info.recall_at_10 >= 0.3
    assert plan_index(10_000, 32, "ivfpq").factory == "IVF256,PQ16"


# ---------------------------------------------------------------- metadata / labels


def test_labels_and_splits_from_folders() -> None:
    assert labels_and_splits(["train/cat/1.png", "test/dog/2.png"]) == (["cat", "dog"], ["train", "test"])
    assert labels_and_splits(["cat/1.png", "dog/2.png"]) == (["cat", "dog"], [None, None])
    assert labels_and_splits(["cat/1.png", "cat/2.png"]) == ([None, None], [None, None])  # one class: unlabelled
    assert labels_and_splits(["1.png", "dog/2.png"]) == ([None, None], [None, None])


# ---------------------------------------------------------------- index folder from a checkpoint


def test_bank_index_search_and_metadata(bank_index: Path, tiny_run: Path, shapes_root: Path) -> None:
    m = json.loads((bank_index / "manifest.json").read_text())
    assert m["source"] == "memory_bank" and m["count"] == 240 and m["dim"] == 128
    assert m["metric"] == "inner_product" and m["normalisation"] == "l2"
    assert m["architecture"]["arch"] == "resnet18" and m["architecture"]["image_size"] == 32
    assert m["temperature"] == pytest.approx(0.1) and m["knn_top1"] is not None
    assert m["checkpoint"]["path"] == str((tiny_run / "checkpoint.pt").resolve())
    with SearchIndex.open(bank_index, device="cpu") as si:
        assert len(si) == 240 and si.device == "cpu" and si.root == (shapes_root / "train").resolve()
        assert si.labels() == SHAPES
        # a bank row queried with itself comes back first with score ~1
        ckpt_bank = torch.load(tiny_run / "checkpoint.pt", weights_only=True)["model"]["bank.features"]
        hits = si.search_vectors(ckpt_bank[:3].numpy(), k=5)
        assert [h[0].id for h in hits] == [0, 1, 2] and hits[0][0].score == pytest.approx(1.0, abs=1e-5)
        row = si.get([0])[0]
        assert row.path.startswith("circle/") and row.label == "circle" and row.split == "train"
        assert (row.width, row.height) == (32, 32) and np.isnan(row.score)
        assert si.image_path(0) == (shapes_root / "train" / row.path).resolve()
        # filters still give k results
        for label in SHAPES:
            res = si.search_vectors(ckpt_bank[100].numpy(), k=7, label=label)[0]
            assert len(res) == 7 and {h.label for h in res} == {label}
        res = si.search_vectors(ckpt_bank[:2].numpy(), k=70, folder="square/")
        assert all(len(r) == 60 and all(h.path.startswith("square/") for h in r) for r in res)
        assert si.search_vectors(ckpt_bank[0].numpy(), k=3, label="nope") == [[]]
        with pytest.raises(ValueError, match="dim|\\(B, 128\\)"):
            si.search_vectors(np.zeros((1, 5), np.float32), k=3)
        with pytest.raises(KeyError):
            si.get([10_000])


def test_mmap_open_gives_same_results(bank_index: Path) -> None:
    q = unit(4, 128, seed=9)
    with SearchIndex.open(bank_index, device="cpu") as a, SearchIndex.open(bank_index, device="cpu", mmap=True) as b:
        ra, rb = a.search_vectors(q, 10), b.search_vectors(q, 10)
    assert [[h.id for h in r] for r in ra] == [[h.id for h in r] for r in rb]


def test_add_and_remove_keep_index_and_db_consistent(bank_index: Path, shapes_root: Path, tmp_path: Path) -> None:
    d = copy_index(bank_index, tmp_path)
    removed = remove(d, ["circle", "square/0003.png"])  # a folder and a file
    assert removed.count == 240 - 60 - 1
    with pytest.raises(ValueError, match="not in the index"):
        remove(d, ["circle/0000.png"])
    with SearchIndex.open(d, device="cpu") as si:
        assert len(si) == 179 and "circle" not in si.labels()
        q = si.embed_images([shapes_root / "train" / "circle" / "0000.png"])
        hits = si.search_vectors(q, k=179)[0]
        assert len(hits) == 179 and not any(h.path.startswith("circle/") or h.path == "square/0003.png"
                                            for h in hits)
    # add the test split (a sibling of the root): the root moves up and old paths get 'train/'
    m = add(d, shapes_root / "test", options=QUIET, split="test")
    assert m.count == 179 + 100 and m.next_id == 340 and m.root == str(shapes_root.resolve())
    loaded = open_dir(d)  # the cross-checks (count, generation, ids) pass
    ids = loaded.store.ids()
    assert len(ids) == loaded.index.ntotal == 279 and ids.max() == 339
    loaded.store.close()
    with SearchIndex.open(d, device="cpu") as si:
        assert si.labels() == SHAPES
        img = shapes_root / "test" / "cross" / "0007.png"
        top = si.search_images([img], k=3)[0][0]
        assert top.path == "test/cross/0007.png" and top.label == "cross" and top.split == "test"
        assert top.score == pytest.approx(1.0, abs=1e-4) and si.image_path(top.id) == img.resolve()
        assert {h.split for h in si.search_images([img], k=279)[0]} == {"train", "test"}
        assert len(si.search_images([img], k=10, folder="train")[0]) == 10
    gen = json.loads((d / "manifest.json").read_text())["generation"]
    again = add(d, shapes_root / "test", options=QUIET)  # unchanged files: nothing to do
    assert again.generation == gen and again.count == 279
    # only the current generation's files remain
    assert sorted(p.suffix for p in d.iterdir() if not p.name.startswith(".")) == [".faiss", ".json", ".sqlite"]


def test_remove_from_hnsw_rebuilds(tiny_run: Path, tmp_path: Path) -> None:
    d = tmp_path / "hnsw"
    build(tiny_run, d, options=BuildOptions(index_type="hnsw", progress=False, recall_queries=50))
    m = remove(d, ["triangle"])
    assert m.count == 180
    with SearchIndex.open(d, device="cpu") as si:
        hits = si.search_vectors(unit(2, 128), k=180)
        assert all(len(h) == 180 and not any(x.label == "triangle" for x in h) for h in hits)


# ---------------------------------------------------------------- failures are loud


def test_missing_truncated_and_mismatched_files(bank_index: Path, tiny_run: Path, tmp_path: Path) -> None:
    with pytest.raises(IndexDirError, match="no such index folder"):
        SearchIndex.open(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexDirError, match="manifest.json is missing"):
        SearchIndex.open(tmp_path / "empty")

    d = copy_index(bank_index, tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    ipath, dpath = d / m["files"]["index"], d / m["files"]["db"]

    data = ipath.read_bytes()
    ipath.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexDirError, match="index file is truncated"):
        SearchIndex.open(d)
    ipath.write_bytes(data)

    dpath.rename(d / "moved.sqlite")
    with pytest.raises(IndexDirError, match="metadata file missing"):
        SearchIndex.open(d)
    (d / "moved.sqlite").rename(dpath)

    bad = dict(m, count=m["count"] + 1)
    (d / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(IndexDirError, match="index holds 240 vectors, the manifest records 241"):
        SearchIndex.open(d)
    (d / "manifest.json").write_text(json.dumps(dict(m, dim=64)))
    with pytest.raises(IndexDirError, match="dimension"):
        SearchIndex.open(d)
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(IndexDirError, match="corrupt manifest"):
        SearchIndex.open(d)
    (d / "manifest.json").write_text(json.dumps(m))

    # a different checkpoint (same architecture, different bytes) is refused
    other = tmp_path / "other.pt"
    ck = torch.load(tiny_run / "checkpoint.pt", weights_only=True)
    ck["epoch"] = 99
    torch.save(ck, other)
    with pytest.raises(IndexDirError, match="differs from the one this index was built from"):
        SearchIndex.open(d, checkpoint=other)
    with pytest.raises(IndexDirError, match="checkpoint is missing"):
        SearchIndex.open(d, checkpoint=tmp_path / "absent.pt")
    # a metadata file from another build (other generation) is refused
    d2 = tmp_path / "rebuilt"
    build(tiny_run, d2, options=QUIET)
    m2 = json.loads((d2 / "manifest.json").read_text())
    shutil.copy(d2 / m2["files"]["db"], dpath)
    (d / "manifest.json").write_text(json.dumps(dict(m, files=dict(m["files"], db_bytes=dpath.stat().st_size))))
    with pytest.raises(IndexDirError, match="generation"):
        SearchIndex.open(d)
    # building over an existing index needs --overwrite
    with pytest.raises(IndexDirError, match="--overwrite"):
        build(tiny_run, d2, options=QUIET)
    assert build(tiny_run, d2, options=QUIET, overwrite=True).generation != m2["generation"]


def test_image_path_refuses_traversal(bank_index: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert safe_join(root, "a/b.png") == root / "a" / "b.png"
    for bad in ("../x.png", "a/../../x.png", "/etc/passwd", ""):
        with pytest.raises(UnsafePathError, match="escape"):
            safe_join(root, bad)
    # a tampered metadata database on disk (its size recorded, so only the stored path is wrong)
    d = copy_index(bank_index, tmp_path)
    set_stored_path(d, 5, "../../../../etc/passwd")
    with SearchIndex.open(d, device="cpu") as si:
        assert si.paths()[5] == "../../../../etc/passwd"
        with pytest.raises(UnsafePathError, match="escape"):
            si.image_path(5)
        assert si.image_path(6).is_file()


# ---------------------------------------------------------------- the script end to end


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "build_index.py"), *args, "--no-progress"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)


def script_main():
    from index.cli import main  # what scripts/build_index.py runs

    return main


def test_script_builds_from_checkpoint_and_searches(tiny_run: Path, shapes_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "bank"
    r = run_script("--checkpoint", str(tiny_run / "checkpoint.pt"), "--out", str(out))  # a real subprocess
    assert r.returncode == 0, r.stderr
    assert "240 entries" in r.stdout and "flat" in r.stdout
    with SearchIndex.open(out) as si:
        hits = si.search_images([shapes_root / "test" / "square" / "0001.png"], k=5)[0]
    assert len(hits) == 5 and all(h.path.endswith(".png") and h.label in SHAPES for h in hits)
    assert hits[0].score >= hits[-1].score and -1.0 <= hits[-1].score <= 1.0


def test_script_embeds_a_folder_and_updates(tiny_run: Path, shapes_root: Path, tmp_path: Path, capsys) -> None:
    main = script_main()  # in-process: same code path as the command line, without another interpreter start
    out = tmp_path / "embedded"
    assert main(["--checkpoint", str(tiny_run), "--out", str(out), "--images", str(shapes_root),
                 "--index-type", "IVF4,Flat", "--no-progress", "--device", "cpu"]) == 0
    assert "340 entries" in capsys.readouterr().out
    with SearchIndex.open(out, device="cpu") as si:
        assert len(si) == 340 and si.manifest.source == "embedded" and si.manifest.index.type == "ivf"
        assert si.labels() == SHAPES
        img = shapes_root / "test" / "triangle" / "0002.png"
        top = si.search_images([img.read_bytes()], k=3, label="triangle")[0]
        assert top[0].path == "test/triangle/0002.png" and top[0].split == "test" and len(top) == 3
        q = si.embed_images([img])
        expect = [h.id for h in si.search_vectors(q, k=20)[0]]
    with SearchIndex.open(out, device="cpu", mmap=True) as si:  # IVF lists memory-mapped
        assert [h.id for h in si.search_vectors(q, k=20)[0]] == expect
    assert main(["--out", str(out), "--remove", "test/triangle", "--no-progress"]) == 0
    assert "removed 25 entries" in capsys.readouterr().out
    assert main(["--out", str(out), "--add", str(shapes_root / "test" / "triangle"), "--no-progress",
                 "--device", "cpu"]) == 0
    assert "added 25" in capsys.readouterr().out
    assert main(["--out", str(out), "--add", str(shapes_root / "test" / "triangle"), "--no-progress"]) == 0
    assert "nothing to add" in capsys.readouterr().out
    assert main(["--checkpoint", str(tiny_run), "--out", str(out), "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["--checkpoint", str(tiny_run), "--out", str(tmp_path / "x"), "--index-type", "Bogus"]) == 2
    assert "neither one of" in capsys.readouterr().err
