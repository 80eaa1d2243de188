"""Retrieval evaluation: hand-checkable metric values, and scripts/evaluate.py end to end on a tiny index."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from index.build import BuildOptions, build
from index.faiss_util import recall_at_k, stored_vectors
from instdisc.evaluation import metrics as M
from instdisc.evaluation.baselines import pixel_features
from instdisc.evaluation.near_duplicates import strong_augment
from instdisc.evaluation.run import EvalOptions, evaluate, query_folder
from instdisc.evaluation.stats import latency_summary
from instdisc.knn import knn_accuracy, weighted_knn_predict, weighted_vote

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- metrics by hand


def test_average_precision_of_a_known_ranking() -> None:
    # relevant at ranks 1 and 3 of 4: AP = (1/1 + 2/3) / 2
    assert M.average_precision([True, False, True, False]) == pytest.approx((1 + 2 / 3) / 2)
    # a third relevant item the list never reaches counts as precision 0
    assert M.average_precision([True, False, True, False], n_relevant=3) == pytest.approx((1 + 2 / 3) / 3)
    assert M.average_precision([False, True]) == pytest.approx(1 / 2)
    assert math.isnan(M.average_precision([False, False]))


def test_precision_recall_at_k_hand_made() -> None:
    rel = [True, False, True, True, False]  # 4 relevant in the gallery, 3 of them in this list
    assert M.precision_recall_at_k(rel, 1, n_relevant=4) == pytest.approx((1.0, 0.25))
    assert M.precision_recall_at_k(rel, 3, n_relevant=4) == pytest.approx((2 / 3, 0.5))
    assert M.precision_recall_at_k(rel, 5, n_relevant=4) == pytest.approx((3 / 5, 0.75))
    assert M.precision_recall_at_k(rel, 10, n_relevant=4) == pytest.approx((3 / 10, 0.75))


def test_hit_rank_stats_from_ranks() -> None:
    # the two relevant items of a 4-item gallery at ranks 1 and 3
    s = M.hit_rank_stats(np.array([[1, 3]]), 2, ks=(1, 2, 4), levels=(0.0, 0.5, 1.0))
    assert s["ap"][0] == pytest.approx((1 + 2 / 3) / 2)
    assert s["ap_at_r"][0] == pytest.approx(0.5)  # R = 2: only rank 1 is within the first R, 1/1 / 2
    assert s["r_precision"][0] == pytest.approx(0.5)
    assert s["precision@1"][0] == 1.0 and s["recall@1"][0] == 0.5
    assert s["precision@2"][0] == 0.5 and s["recall@2"][0] == 0.5
    assert s["precision@4"][0] == 0.5 and s["recall@4"][0] == 1.0
    # interpolated precision: 1 up to recall 0.5, then 2/3 (the best precision with recall 1)
    assert s["pr"][0] == pytest.approx([1.0, 1.0, 2 / 3])


def test_hit_rank_stats_match_brute_force_rankings() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        rel = rng.random(60) < 0.3
        rel[rng.integers(60)] = True
        ranks = np.flatnonzero(rel)[None] + 1
        s = M.hit_rank_stats(ranks, int(rel.sum()), ks=(1, 10, 100))
        assert s["ap"][0] == pytest.approx(M.average_precision(rel))
        for k in (1, 10, 100):
            p, r = M.precision_recall_at_k(rel, k)
            assert s[f"precision@{k}"][0] == pytest.approx(p)
            assert s[f"recall@{k}"][0] == pytest.approx(r)


def test_ranks_in_counts_strictly_greater() -> None:
    row = np.sort(np.array([[0.9, 0.1, 0.5, 0.7]], dtype=np.float32), axis=1)
    assert M.ranks_in(row, np.array([[0.9, 0.5]], dtype=np.float32)).tolist() == [[1, 3]]


def test_weighted_vote_of_a_known_neighbourhood() -> None:
    scores = torch.tensor([[0.9, 0.8, 0.7]])
    labels = torch.tensor([[0, 1, 1]])
    # tau = 0.1: class 0 gets e^9 = 8103, class 1 e^8 + e^7 = 4078 -> 0
    assert weighted_knn_predict(scores, labels, 2, [1, 3], 0.1) == {1: torch.tensor([0]), 3: torch.tensor([0])}
    # tau = 1: e^0.9 = 2.46 < e^0.8 + e^0.7 = 4.24 -> the two weaker neighbours win at k = 3
    p = weighted_knn_predict(scores, labels, 2, [1, 2, 3], 1.0)
    assert [int(p[k]) for k in (1, 2, 3)] == [0, 0, 1]  # k=2: e^0.9 > e^0.8
    # agrees with the library's vote, and an unlabelled neighbour (-1) never votes
    v = weighted_vote(scores, labels, 2, 3, 1.0)
    assert v[0].tolist() == pytest.approx([math.exp(0.9), math.exp(0.8) + math.exp(0.7)])
    p = weighted_knn_predict(scores, torch.tensor([[-1, 1, 0]]), 2, [1, 3], 0.1)
    assert int(p[3]) == 1  # e^8 (class 1) beats e^7 (class 0); the -1 neighbour is ignored


def _unit(rows) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


def test_rank_and_score_on_a_hand_made_gallery() -> None:
    # 2-d gallery on the unit circle; the query at angle 0 ranks them by angle
    angles = np.deg2rad([0, 10, 20, 30, 100, 170])
    gallery = _unit(np.stack([np.cos(angles), np.sin(angles)], 1))
    g_labels = torch.tensor([0, 1, 0, -1, 1, 0])  # the 30-degree entry is unlabelled
    query = _unit([[1.0, 0.0]])
    r = M.rank_and_score(query, torch.tensor([0]), gallery, g_labels, 2, 0.1, knn_ks=(1, 3), pr_ks=(1, 2),
                         levels=(0.0, 1.0), top_k=4)
    # relevant (class 0) at ranks 1, 3, 6: AP = (1/1 + 2/3 + 3/6) / 3
    assert r.map == pytest.approx((1 + 2 / 3 + 3 / 6) / 3, abs=1e-6)
    assert r.precision[2] == pytest.approx(0.5) and r.recall[2] == pytest.approx(1 / 3)
    assert r.top_ids[0].tolist() == [0, 1, 2, 3]
    assert r.knn[1] == 1.0 and r.knn[3] == 1.0  # k=3 among labelled: classes 0, 1, 0
    assert r.queries == 1 and r.queries_with_relevant == 1
    # a query whose class is absent from the gallery is scored for kNN (wrong) but left out of mAP
    r2 = M.rank_and_score(torch.cat([query, query]), torch.tensor([0, 2]), gallery, g_labels, 3, 0.1, knn_ks=(1,))
    assert r2.queries == 2 and r2.queries_with_relevant == 1 and r2.knn[1] == 0.5


def test_rank_and_score_matches_library_knn_and_brute_force_ap() -> None:
    g = torch.Generator().manual_seed(0)
    gallery = F.normalize(torch.randn(500, 16, generator=g), dim=1)
    g_labels = torch.randint(0, 5, (500,), generator=g)
    queries = F.normalize(torch.randn(37, 16, generator=g), dim=1)
    q_labels = torch.randint(0, 5, (37,), generator=g)
    r = M.rank_and_score(queries, q_labels, gallery, g_labels, 5, 0.1, knn_ks=(1, 20, 200), query_chunk=8)
    assert r.knn == pytest.approx(knn_accuracy(queries, q_labels, gallery, g_labels, ks=(1, 20, 200), temperature=0.1))
    s = (queries @ gallery.T).numpy()
    aps = [M.average_precision(g_labels.numpy()[np.argsort(-s[i], kind="stable")] == int(q_labels[i]))
           for i in range(37)]
    assert r.map == pytest.approx(float(np.mean(aps)), abs=1e-6)
    assert r.top_ids.shape == (37, 10)


def test_pixels_rank_of_targets_ann_recall_latency() -> None:
    imgs = torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8)
    feats, mean = pixel_features(imgs, 32)
    assert feats.shape == (6, 3 * 32 * 32) and torch.allclose(feats.norm(dim=1), torch.ones(6), atol=1e-5)
    q, _ = pixel_features(imgs[:2], 32, mean)
    assert torch.allclose(q, feats[:2], atol=1e-6)  # queries use the gallery's mean
    gallery = _unit([[1, 0], [0, 1], [-1, 0]])
    ranks = M.rank_of_targets(_unit([[1, 0.1], [1, 0.2]]), gallery, torch.tensor([0, 1]))
    assert ranks.tolist() == [0, 1]
    assert recall_at_k(np.array([[1, 2, -1], [4, 5, 6]]), np.array([[1, 2, 3], [6, 5, 4]])) == pytest.approx(5 / 6)
    assert recall_at_k(np.array([[1, 9]]), np.array([[1, -1]])) == 1.0  # a short exact list counts its real ids
    assert math.isnan(recall_at_k(np.zeros((0, 3)), np.zeros((0, 3))))
    lat = latency_summary([0.001] * 99 + [0.1])
    assert lat["p50_ms"] == pytest.approx(1.0) and lat["p99_ms"] > 1.0 and lat["n"] == 100
    assert lat["max_ms"] == pytest.approx(100.0) and lat["p90_ms"] == pytest.approx(1.0)


def test_strong_augment_is_seeded_and_changes_the_image() -> None:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    a, pa = strong_augment(img, random.Random(1))
    b, pb = strong_augment(img, random.Random(1))
    assert a.size == img.size and pa == pb and np.array_equal(np.asarray(a), np.asarray(b))
    assert 10 <= pa["jpeg_quality"] <= 30
    assert not np.array_equal(np.asarray(a), np.asarray(img))


def test_stored_vectors_lossless_only() -> None:
    x = F.normalize(torch.randn(300, 8), dim=1).numpy()
    ids = np.arange(300, dtype=np.int64) * 3 + 1
    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(8))
    flat.add_with_ids(x, ids)
    order = ids[::-1].copy()
    assert np.allclose(stored_vectors(flat, order), x[::-1], atol=1e-6)
    ivf = faiss.index_factory(8, "IVF4,Flat", faiss.METRIC_INNER_PRODUCT)
    ivf.train(x)
    ivf.add_with_ids(x, ids)
    assert np.allclose(stored_vectors(ivf, ids), x, atol=1e-6)
    pq = faiss.index_factory(8, "IVF4,PQ4x4", faiss.METRIC_INNER_PRODUCT)
    pq.train(x)
    pq.add_with_ids(x, ids)
    assert stored_vectors(pq, ids) is None  # compressed: the caller re-embeds the images


def test_query_folder_takes_the_evaluation_split(shapes_root: Path, tmp_path: Path) -> None:
    folder, why = query_folder(shapes_root)
    assert folder == shapes_root / "test" and "test/" in why
    assert query_folder(shapes_root / "test")[0] == shapes_root / "test"


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_index(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval-idx") / "idx"
    build(tiny_run / "checkpoint.pt", out, options=BuildOptions(progress=False, device="cpu"))
    return out


FAST = ["--near-dup-samples", "12", "--latency-queries", "5", "--e2e-queries", "2", "--grid-queries", "3",
        "--no-progress"]


def _fraction_of(x: float, n: int) -> bool:
    """``x`` is a count out of ``n`` (a hit rate over n queries), not just any number in [0, 1]."""
    return 0 <= round(x * n) <= n and x * n == pytest.approx(round(x * n), abs=1e-6)


def _brute_force_pixel_metrics(root: Path, tau: float, ks: tuple[int, ...]) -> tuple[dict[int, float], float]:
    """Weighted kNN and mAP of the raw-pixel baseline written out from scratch: PIL decode, flatten, the
    gallery (train/) mean subtracted, L2 norm; every test/ image queries every train/ image."""
    def load(split: str) -> tuple[np.ndarray, list[str]]:
        files = sorted((root / split).rglob("*.png"))
        x = np.stack([np.asarray(Image.open(f).convert("RGB"), dtype=np.float64).ravel() / 255 for f in files])
        return x, [f.parent.name for f in files]

    g, g_lab = load("train")
    q, q_lab = load("test")
    mean = g.mean(0)
    g, q = g - mean, q - mean
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    sims = q @ g.T
    knn = {}
    for k in ks:
        hits = 0
        for i in range(len(q)):
            votes: dict[str, float] = {}
            for j in np.argsort(-sims[i], kind="stable")[:k]:
                votes[g_lab[j]] = votes.get(g_lab[j], 0.0) + math.exp(sims[i, j] / tau)
            hits += max(votes, key=votes.get) == q_lab[i]
        knn[k] = hits / len(q)
    aps = []
    for i in range(len(q)):
        rel = [g_lab[j] == q_lab[i] for j in np.argsort(-sims[i], kind="stable")]
        found = np.cumsum(rel)
        aps.append(float(np.mean([found[r] / (r + 1) for r in range(len(rel)) if rel[r]])))
    return knn, float(np.mean(aps))


def test_pixel_baseline_metrics_match_an_independent_computation(tiny_index: Path, shapes_root: Path,
                                                                 tmp_path: Path) -> None:
    r = evaluate(tiny_index, shapes_root, tmp_path / "rep",
                 EvalOptions(baselines=("pixels",), near_dup_samples=0, latency_queries=2, e2e_queries=1,
                             e2e_batch=2, grid_queries=1, progress=False))
    knn, m_ap = _brute_force_pixel_metrics(shapes_root, r["config"]["temperature"], (1, 20, 200))
    px = r["methods"]["pixels"]
    assert r["queries"]["count"] == 100 and r["gallery"]["count"] == 240
    for k, want in knn.items():
        assert px["knn_top1"][str(k)] == pytest.approx(want, abs=1 / 100 + 1e-9), k  # a tie may flip one query
    assert px["map"] == pytest.approx(m_ap, rel=1e-4)
    assert knn[1] > 0.3  # the shapes are separable from pixels: the check compares real numbers, not zeros


def test_script_end_to_end_on_tiny_index(tiny_index: Path, shapes_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    cmd = [sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--index", str(tiny_index), "--queries",
           str(shapes_root), "--out", str(out), "--ks", "1", "20", "--limit", "40", "--baselines", "reembed",
           "pixels", "pixels-whitened", "random", "imagenet", *FAST]
    no_hub = tmp_path / "empty-torch-home"  # whatever weights this machine has cached, the run sees none
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT,
                       env={**os.environ, "TORCH_HOME": str(no_hub)})
    assert p.returncode == 0, p.stderr[-3000:]
    assert "weighted kNN top-1 (k=200)" in p.stdout
    r = json.loads((out / "report.json").read_text())
    ours = r["methods"]["ours"]
    assert r["knn_k"] == 200 and r["knn_top1"] == ours["knn_top1"]["200"] and r["map"] == ours["map"]
    assert r["class_level"] is True and r["queries"]["count"] == 40 and r["gallery"]["count"] == 240
    assert r["config"]["temperature"] == pytest.approx(0.1) and r["config"]["query_folder"].endswith("test")
    # no ImageNet weights on disk -> skipped with a note
    assert set(r["methods"]) == {"ours", "reembed", "pixels", "pixels-whitened", "random"}
    assert any("ImageNet baseline skipped" in n for n in r["notes"])
    for name, m in r["methods"].items():
        assert set(m["knn_top1"]) == {"1", "20", "200"}, name
        assert all(_fraction_of(v, 40) for v in m["knn_top1"].values())  # hits out of the 40 queries
        assert m["precision_at"]["1"] == pytest.approx(m["knn_top1"]["1"])  # P@1 is 1-NN accuracy
        assert m["r_precision"] >= m["map_at_r"] and 0 < m["map"] <= 1  # AP@R never exceeds R-precision
        assert set(m["precision_at"]) == {"1", "10", "100"}
        assert m["recall_at"]["100"] >= m["recall_at"]["10"] >= m["recall_at"]["1"]
        assert len(m["pr_curve"]["recall"]) == len(m["pr_curve"]["precision"]) == 21
        assert m["queries_with_relevant"] == 40
    # 4 balanced classes, 60 gallery images each: precision@100 of any method is near the 25 % base rate
    assert 0.1 < r["methods"]["pixels"]["precision_at"]["100"] < 0.6
    nd = r["near_duplicate"]
    assert nd["samples"] == 12 and set(nd["methods"]) == {"ours", "reembed", "pixels", "pixels-whitened", "random"}
    for m in nd["methods"].values():
        assert _fraction_of(m["top1"], 12) and _fraction_of(m["top10"], 12) and m["top10"] >= m["top1"]
    assert r["ann"]["recall"] == pytest.approx(1.0) and r["ann"]["index_type"] == "flat"  # Flat: exact
    s = r["speed"]
    assert s["batched_vectors"]["qps"] > 0 and s["single_vector"]["p99_ms"] >= s["single_vector"]["p50_ms"] > 0
    assert s["single_image"]["p50_ms"] > 0 and s["batched_images"]["qps"] > 0
    md = (out / "report.md").read_text()
    assert "| ours (index vectors) |" in md and "raw pixels" in md and "80.8" in md
    assert "| raw pixels, PCA-whitened |" in md
    for png in ("knn_vs_k.png", "pr_curve.png", "retrieval_grid.png"):
        with Image.open(out / png) as im:
            assert im.format == "PNG" and im.width > 100
    assert not list(out.glob(".*.tmp"))


def test_unlabelled_queries_get_instance_and_speed_only(tiny_index: Path, shapes_root: Path, tmp_path: Path) -> None:
    flat = tmp_path / "unlabelled"
    flat.mkdir()
    for i, f in enumerate(sorted((shapes_root / "test").rglob("*.png"))[::10]):
        shutil.copy(f, flat / f"q{i:03d}.png")
    r = evaluate(tiny_index, flat, tmp_path / "rep",
                 EvalOptions(baselines=("pixels",), near_dup_samples=8, latency_queries=3, e2e_queries=1,
                             e2e_batch=4, grid_queries=2, progress=False))
    assert r["knn_top1"] is None and r["map"] is None and r["class_level"] is False
    assert r["queries"]["labelled"] is False and r["queries"]["count"] == 10
    assert any("no class labels" in n for n in r["notes"])
    assert "knn_top1" not in r["methods"]["ours"] and "knn_top1" not in r["methods"]["pixels"]
    assert set(r["near_duplicate"]["methods"]) == {"ours", "pixels"}
    assert r["ann"]["recall"] == pytest.approx(1.0) and r["speed"]["single_vector"]["n"] == 3
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Class-level" not in md and "Instance-level" in md and "no class labels" in md
    assert (tmp_path / "rep" / "retrieval_grid.png").is_file()
    assert not (tmp_path / "rep" / "knn_vs_k.png").exists()


def test_imagenet_baseline_uses_weights_already_on_disk(tiny_index: Path, shapes_root: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    torchvision = pytest.importorskip("torchvision")
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), hub / "checkpoints" / "resnet18-test.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    r = evaluate(tiny_index, shapes_root, tmp_path / "rep",
                 EvalOptions(baselines=("imagenet",), limit=8, near_dup_samples=4, latency_queries=2, e2e_queries=1,
                             e2e_batch=2, grid_queries=1, imagenet_size=32, progress=False))
    assert set(r["methods"]) == {"ours", "imagenet"}
    assert _fraction_of(r["methods"]["imagenet"]["knn_top1"]["200"], 8)
    assert "resnet18-test.pth" in r["methods"]["imagenet"]["note"]
    assert "imagenet" in r["near_duplicate"]["methods"]


def test_embedded_index_containing_the_queries(shapes_index: Path, shapes_root: Path, tmp_path: Path) -> None:
    # an index of train + test (embedded, not the memory bank): the overlap is flagged, 'reembed' is pointless
    r = evaluate(shapes_index, shapes_root, tmp_path / "rep",
                 EvalOptions(baselines=("reembed",), limit=10, near_dup_samples=0, latency_queries=2, e2e_queries=1,
                             e2e_batch=2, grid_queries=1, progress=False))
    assert set(r["methods"]) == {"ours"} and r["index"]["source"] == "embedded"
    assert any("10 of the 10 query images are themselves in the index" in n for n in r["notes"])
    assert any("'reembed' skipped" in n for n in r["notes"])
    assert r["near_duplicate"]["note"].startswith("skipped")
    assert r["methods"]["ours"]["knn_top1"]["1"] >= 0.9  # each query's nearest neighbour is itself
