"""Exploration (explore/): duplicate grouping with its chain guard, the auto threshold, clusters,
the map, the per-generation cache and the two scripts -- on real FAISS, real images and a real
index built with the tiny checkpoint."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from explore_data import BIG_COPY, ORIGINAL, build_planted_index
from PIL import Image

from benchmarks.planted import evaluate_planted
from instdisc.explore import ExploreError, Explorer
from instdisc.explore.calibrate import expected_precision, false_pairs_per_image
from instdisc.explore.clusters import cluster, label_agreement
from instdisc.explore.featurisers import pixel_embedder
from instdisc.explore.grouping import chain_guard, group_duplicates
from instdisc.explore.neighbours import knn_graph
from instdisc.explore.projection import project
from instdisc.explore.similar import MARGIN, auto_threshold, similar_tier

ROOT = Path(__file__).resolve().parents[1]


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _background(n: int, d: int = 64, seed: int = 0) -> np.ndarray:
    return _unit(np.random.default_rng(seed).standard_normal((n, d)))


@pytest.fixture(scope="module")
def planted_index(tiny_run: Path, shapes_root: Path, tmp_path_factory) -> Path:
    return build_planted_index(tiny_run / "checkpoint.pt", shapes_root, tmp_path_factory.mktemp("planted-data"),
                               tmp_path_factory.mktemp("planted-index"))


# ---------------------------------------------------------------- grouping


def test_a_planted_group_is_found_and_nothing_else():
    v = _background(300)
    rng = np.random.default_rng(1)
    copies = _unit(v[7] + 0.05 * rng.standard_normal((3, v.shape[1])))  # three near copies of row 7
    v = np.concatenate([v, copies])
    groups = group_duplicates(knn_graph(v, k=8), v, threshold=0.9)
    assert [sorted(g.rows) for g in groups] == [[7, 300, 301, 302]]
    g = groups[0]
    assert g.rows[0] == 7  # the original is the most connected member
    assert chain_guard(0.9) <= g.min_score < 0.9 < g.max_score < 1.0  # copy-to-copy pairs score lower
    assert g.min_score <= g.mean_score <= g.max_score


def test_an_unrelated_chain_is_not_merged():
    # five points on a great circle, each 0.92 from the next: every link passes t = 0.9, the ends are unrelated
    d, t, step = 64, 0.9, np.arccos(0.92)
    e1, e2 = np.eye(d)[0], np.eye(d)[1]
    chain = np.stack([np.cos(i * step) * e1 + np.sin(i * step) * e2 for i in range(5)]).astype(np.float32)
    v = np.concatenate([chain, _background(200, d, seed=3)])
    graph = knn_graph(v, k=8)
    assert float(chain[0] @ chain[4]) < 0.1
    # plain connected components (no guard) swallow the whole chain ...
    assert sorted(group_duplicates(graph, v, t, guard=-1.0)[0].rows) == [0, 1, 2, 3, 4]
    # ... the chain guard (2 t^2 - 1 = 0.62) keeps it apart: no group holds both ends or exceeds 3 links
    groups = group_duplicates(graph, v, t)
    assert chain_guard(t) == pytest.approx(0.62)
    for g in groups:
        assert not {0, 4} <= set(g.rows) and g.size <= 3 and g.min_score >= chain_guard(t)
    assert sorted(len(g.rows) for g in groups) == [2, 3]


def test_similar_tier_groups_below_the_near_threshold_among_free_rows():
    v = _background(300)
    rng = np.random.default_rng(2)
    copy = _unit(v[7] + 0.02 * rng.standard_normal(v.shape[1]))  # a near copy of row 7 (~0.99)
    shot = _unit(v[20] + 0.07 * rng.standard_normal(v.shape[1]))  # a look-alike of row 20 (~0.87)
    v = np.concatenate([v, copy[None], shot[None]])
    graph = knn_graph(v, k=8)
    near = group_duplicates(graph, v, 0.95)
    assert [sorted(g.rows) for g in near] == [[7, 300]]
    taken = set(near[0].rows)
    tier = similar_tier(graph, v, taken, 0.95)  # auto
    assert sorted(tier.groups[0].rows) == [20, 301] and {g.tier for g in tier.groups} == {"similar"}
    # auto takes the 1 % of the 301 free rows with the closest look-alike: a pair or two, nothing taken
    assert sum(g.size for g in tier.groups) <= 4 and not taken & {r for g in tier.groups for r in g.rows}
    assert tier.threshold <= float(v[20] @ v[301]) + 1e-6 < 0.95
    # the near pair is never similar, even where the similar threshold lets it in
    low = similar_tier(graph, v, taken, 0.95, 0.5)
    assert all(not {7, 300} & set(g.rows) for g in low.groups) and [20, 301] in [sorted(g.rows) for g in low.groups]
    # auto stays below the near threshold: free rows whose look-alike scores above it get near - MARGIN
    free = np.zeros(len(v), dtype=bool)
    free[[7, 300, 20, 301]] = True  # the near pair free here: its 0.99 is the top score
    s, words = auto_threshold(graph, free, 0.95)
    assert s == pytest.approx(0.95 - MARGIN) and "kept" in words


def test_bad_thresholds_get_specific_errors(planted_index: Path):
    v = _background(20)
    g = knn_graph(v, k=4)
    with pytest.raises(ExploreError, match="must not exceed the threshold"):
        group_duplicates(g, v, 0.9, guard=0.95)
    with pytest.raises(ExploreError, match=r"must be 'auto' or a similarity"):
        Explorer.open(planted_index).duplicates("high")
    with pytest.raises(ExploreError, match=r"must be in \(0, 1\]"):
        Explorer.open(planted_index).duplicates(1.5)
    with pytest.raises(ExploreError, match="at least 2 vectors"):
        knn_graph(v[:1])


# ---------------------------------------------------------------- calibration


def test_expected_precision_formula():
    # 0.2 copy edges per image, recall 0.5 -> 0.1 true edges per image; 0.1 unrelated edges per image
    assert expected_precision(np.array([0.5]), np.array([0.1]), 0.2)[0] == pytest.approx(0.5)
    assert expected_precision(np.array([0.0]), np.array([0.0]), 0.2)[0] == 1.0


def test_false_pairs_count_every_row_of_the_graph():
    # 3 rows x 2 neighbours; -inf marks a missing neighbour and never counts
    scores = np.array([[0.875, 0.5], [0.75, -np.inf], [0.25, 0.125]], np.float32)  # exact in float32
    grid = np.array([0.0, 0.3, 0.75, 0.76, 1.0])
    brute = [(scores >= t).sum() / 3 for t in grid]
    assert false_pairs_per_image(scores, grid) == pytest.approx(brute)
    assert false_pairs_per_image(scores, grid).tolist() == pytest.approx([5 / 3, 1.0, 2 / 3, 1 / 3, 0.0])


def test_auto_threshold_predicts_the_planted_recall(shapes_root: Path):
    files = sorted(shapes_root.rglob("*.png"))
    imgs = [Image.open(f).convert("RGB") for f in files]
    rel = [f.relative_to(shapes_root).as_posix() for f in files]
    res, ex, _ = evaluate_planted(imgs, [p.split("/")[1] for p in rel], [p.split("/")[0] for p in rel], rel,
                                  pixel_embedder(imgs), "pixels", planted=40)
    cal = ex.calibration()
    assert res.planted == 40 and res.threshold == cal.threshold and 0.85 < cal.threshold < 0.97
    # colour and resize edits keep raw pixels close, an 80-95 % re-crop does not
    assert cal.recall_by_edit["colour"] > 0.9 and cal.recall_by_edit["resize"] > 0.9
    assert cal.recall_by_edit["crop"] < 0.5
    # what calibration expected is what the finder then does with copies it never saw
    assert abs(res.recall - cal.recall) < 0.1 and res.recall >= 0.7
    assert res.precision >= 0.7
    # the copy share is estimated (12 % of the 340 images here), so the expected precision is what was measured
    assert abs(ex.calibration().prevalence - 40 / 340) < 0.03
    assert abs(res.expected_precision - res.precision) <= 0.1
    assert [p["recall"] for p in cal.curve] == sorted((p["recall"] for p in cal.curve), reverse=True)


# ---------------------------------------------------------------- clusters and map


def test_clusters_recover_separated_blobs_and_score_them():
    rng = np.random.default_rng(0)
    centres = _background(4, 32, seed=5)
    lab = np.repeat(np.arange(4), 200)
    v = _unit(centres[lab] + 0.1 * rng.standard_normal((800, 32)))
    names = [f"class{i}" for i in lab]
    c = cluster(v, 4, names)
    assert c.k == 4 and sorted(c.sizes) == [200] * 4
    assert c.purity == pytest.approx(1.0) and c.nmi == pytest.approx(1.0)
    assert all(m[1] == 1.0 for m in c.majority)
    assert all(len(rows) == 12 and len({int(lab[r]) for r in rows}) == 1 for rows in c.central)
    auto = cluster(v, "auto", names)
    assert auto.chosen_by == "silhouette" and auto.k == 4 and set(auto.k_scores) == {"4", "8", "16"}


def test_purity_and_nmi_on_a_known_table():
    # clusters [a a b] [b b b]: purity (2 + 3) / 6; MI 0.3183 nats, entropies ln 2 and 0.6365: NMI 0.4787
    purity, nmi, n = label_agreement(np.array([0, 0, 0, 1, 1, 1]), ["a", "a", "b", "b", "b", "b"])
    assert (purity, n) == (pytest.approx(5 / 6), 6) and nmi == pytest.approx(0.4787, abs=1e-4)
    with pytest.raises(ExploreError, match="need labels"):
        label_agreement(np.array([0, 1]), [None, None])


def test_pca_map_spreads_the_two_main_directions():
    rng = np.random.default_rng(0)
    x = np.zeros((500, 16), np.float32)
    x[:, 0] = rng.normal(0, 3, 500)
    x[:, 1] = rng.normal(0, 1, 500)
    x[:, 2:] = rng.normal(0, 0.1, (500, 14))
    p = project(x)
    assert p.method == "pca" and p.xy.shape == (500, 2) and p.explained[0] > p.explained[1] > 0.05
    assert abs(np.corrcoef(p.xy[:, 0], x[:, 0])[0, 1]) > 0.99
    with pytest.raises(ExploreError, match="umap-learn"):
        project(x, "umap")


# ---------------------------------------------------------------- cache


def test_results_are_cached_per_generation_and_invalidated_by_add_and_remove(
        tiny_run: Path, tmp_path: Path, shapes_root: Path, monkeypatch):
    import shutil

    import instdisc.explore.explorer as explorer_mod
    from index.build import add, remove

    data, idx = tmp_path / "data", tmp_path / "idx"
    build_planted_index(tiny_run / "checkpoint.pt", shapes_root, data, idx)
    first = Explorer.open(idx)
    g1, c1 = first.graph(), first.clusters(2)
    gen1 = first.cache.generation
    assert {p.name.split("-")[0] for p in (idx / "explore" / gen1).glob("*.json")} == {"knn", "clusters"}

    def refuse(*a, **k):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(explorer_mod, "knn_graph", refuse)
    monkeypatch.setattr(explorer_mod, "cluster", refuse)
    again = Explorer.open(idx)
    assert np.array_equal(again.graph().neighbours, g1.neighbours)
    assert np.array_equal(again.clusters(2).assignment, c1.assignment)
    with pytest.raises(AssertionError, match="recomputed"):
        again.clusters(3)  # other parameters are another entry

    extra = data / "new"
    extra.mkdir()
    shutil.copy(shapes_root / "test" / "cross" / "0001.png", extra / "cross-0001.png")
    add(idx, extra)  # a new generation: the cache must not be read
    monkeypatch.undo()
    after_add = Explorer.open(idx)
    assert after_add.cache.generation != gen1 and len(after_add.collection) == len(first.collection) + 1
    assert after_add.graph().neighbours.shape[0] == len(first.collection) + 1
    assert sorted(p.name for p in (idx / "explore").iterdir()) == [after_add.cache.generation]  # old one pruned

    remove(idx, [ORIGINAL])
    after_remove = Explorer.open(idx)
    assert after_remove.graph().neighbours.shape[0] == len(first.collection)
    assert ORIGINAL not in after_remove.collection.paths
    assert Explorer.open(idx).graph().seconds == after_remove.graph().seconds  # cached again


# ---------------------------------------------------------------- scripts


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_find_duplicates_script_writes_groups_csv_and_sheet(planted_index: Path, tmp_path: Path):
    out = tmp_path / "report"
    r = _run("scripts/find_duplicates.py", "--index", str(planted_index), "--threshold", "0.99", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "threshold 0.9900" in r.stdout
    groups = json.loads((out / "groups.json").read_text())
    mine = [g for g in groups["groups"] if ORIGINAL in {m["path"] for m in g["members"]}]
    assert len(mine) == 1 and BIG_COPY in {m["path"] for m in mine[0]["members"]}
    keep = [m for m in mine[0]["members"] if m["action"] == "keep"]
    assert [m["path"] for m in keep] == [BIG_COPY] and keep[0]["width"] == 64  # the larger picture is kept
    with open(out / "duplicates.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == groups["images_in_groups"]
    assert {r["action"] for r in rows if r["tier"] != "similar"} == {"keep", "remove"}
    assert {r["action"] for r in rows if r["tier"] == "similar"} <= {"review"}  # similar shots: never removed
    assert sum(r["action"] == "remove" for r in rows) == groups["files_to_remove"]
    with Image.open(out / "contact_sheet.png") as im:
        assert im.width > 96 and im.height > 96

    bad = _run("scripts/find_duplicates.py", "--index", str(planted_index), "--threshold", "2", "--out", str(out))
    assert bad.returncode == 2 and "--threshold must be in (0, 1]" in bad.stderr


def test_explore_cli_clusters_and_map(planted_index: Path, tmp_path: Path, capsys):
    from instdisc.explore.cli import (
        explore_main,  # what scripts/explore_index.py runs (in-process: no second torch import)
    )

    idx = ["--index", str(planted_index)]
    assert explore_main(["clusters", *idx, "--clusters", "2", "--out", str(tmp_path / "c")]) == 0
    assert "2 clusters (given)" in capsys.readouterr().out
    c = json.loads((tmp_path / "c" / "clusters.json").read_text())
    assert c["k"] == 2 and sum(c["sizes"]) == 26 and c["labelled"] == 26 and 0.5 <= c["purity"] <= 1.0
    assert explore_main(["map", *idx, "--clusters", "2", "--out", str(tmp_path / "m")]) == 0
    m = json.loads((tmp_path / "m" / "map.json").read_text())
    assert m["method"] == "pca" and len(m["x"]) == len(m["ids"]) == 26 and set(m["cluster"]) == {0, 1}
    with Image.open(tmp_path / "m" / "map.png") as im:
        assert im.size == (1600, 1600)
    assert explore_main(["clusters", *idx, "--clusters", "1", "--out", str(tmp_path)]) == 2
    assert "k must be between 2 and the number of entries (26), got 1" in capsys.readouterr().err


def test_planted_sampling_looks_inside_an_archives_lone_top_folder(shapes_root: Path, tmp_path: Path):
    """The photo subset's archive holds tinyimagenet-subset/{train,test}/: the planted evaluation samples from it."""
    import shutil

    from benchmarks.explore_measure import cifar_subset

    shutil.copytree(shapes_root, tmp_path / "wrapper" / "shapes")
    imgs, labels, splits, paths = cifar_subset(str(tmp_path / "wrapper"), 6, 4, seed=0)
    assert len(imgs) == 10 and splits.count("train") == 6 and splits.count("test") == 4
    assert all(p.startswith(("train/", "test/")) for p in paths) and set(labels) <= {
        d.name for d in (shapes_root / "train").iterdir()}


def test_timing_covers_every_step_of_the_finder_and_the_map():
    """``measure_explore.py timing`` (the 1M figure in docs/explore.md): graph, near groups, similar tier,
    clusters and PCA on synthetic vectors with 1 % planted copies, every copy grouped, the total their sum."""
    from benchmarks.explore_measure import timing

    r = timing(3000)
    steps = ("knn_graph", "grouping", "similar_tier", "clusters_auto", "pca")
    assert r["total_seconds"] == sum(r[s]["seconds"] for s in steps)
    assert r["planted_copies"] == 30 and r["grouping"]["planted_copies_grouped"] == 30
    assert r["grouping"]["groups"] == 30 and r["grouping"]["images_in_groups"] == 60
    assert r["similar_tier"]["threshold"] < r["threshold"]  # look-alikes below the near threshold
