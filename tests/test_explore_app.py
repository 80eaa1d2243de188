"""The app's exploration tabs without a browser: ExploreViews on a real index with planted copies
(what the Duplicates, Clusters and Map tabs show, and that it comes from the per-index cache)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
from explore_data import BIG_COPY, ORIGINAL, build_planted_index

from index.search import SearchIndex
from instdisc.explore import ExploreError
from instdisc.web.explore_tabs import MAP_POINTS, ExploreViews, similar_request


@pytest.fixture(scope="module")
def views(tiny_run: Path, shapes_root: Path, tmp_path_factory) -> ExploreViews:
    idx = build_planted_index(tiny_run / "checkpoint.pt", shapes_root, tmp_path_factory.mktemp("data"),
                              tmp_path_factory.mktemp("idx"))
    return ExploreViews(SearchIndex.open(idx, device="cpu"))


def test_duplicates_view_lists_the_planted_group_and_exports_the_csv(views: ExploreViews):
    t, items, summary, csv_path = views.duplicate_view(0.99)
    assert t == 0.99 and re.match(r"\*\*\d+ groups\*\*, \d+ images, \d+ suggested for removal", summary)
    paths = [views.explorer.collection.paths[r] for g in views.duplicates(0.99).groups for r in g.rows]
    assert ORIGINAL in paths and BIG_COPY in paths
    gi = next(i for i, g in enumerate(views.duplicates(0.99).groups)
              if ORIGINAL in {views.explorer.collection.paths[r] for r in g.rows})
    assert items[gi][1].startswith(f"group {gi} · ")
    members, ids = views.group_view(0.99, gi)
    assert members[0][1].startswith("keep · 64x64 · 1.000 · circle-0003-big.png")
    assert all(cap.startswith("remove · ") for _, cap in members[1:]) and len(ids) == len(members)
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert {r["path"] for r in rows if r["tier"] != "similar"} == set(paths)
    with pytest.raises(ExploreError, match="no group 999"):
        views.group_view(0.99, 999)


def test_duplicates_view_shows_three_tiers_and_the_similar_box(views: ExploreViews):
    assert (similar_request(None), similar_request(""), similar_request(0), similar_request(0.9)) == (
        "auto", "auto", "off", 0.9)
    _, items, summary, csv_path = views.duplicate_view(0.99)  # the similar box empty: auto
    dup = views.duplicates(0.99)
    sim = dup.tier_counts()["similar"]
    assert f"{sim.groups} similar-shot ({sim.images} images, to review) from {dup.similar.threshold:.4f}" in summary
    assert sim.groups >= 1 and len(items) == len(dup.all_groups)
    gi = len(dup.groups)  # the first similar group comes after the duplicate groups
    assert items[gi][1].startswith(f"group {gi} · similar · ")
    members, _ = views.group_view(0.99, gi)
    assert all(cap.startswith("review · ") for _, cap in members)
    with open(csv_path) as f:
        assert {r["action"] for r in csv.DictReader(f) if r["tier"] == "similar"} == {"review"}
    _, items, summary, _ = views.duplicate_view(0.99, 0)
    assert "no similar shots (off)" in summary and len(items) == len(dup.groups)
    with pytest.raises(ExploreError, match="must be below the near-duplicate threshold"):
        views.duplicate_view(0.99, 0.995)


def test_clusters_and_neighbours(views: ExploreViews):
    items, summary = views.cluster_view()
    c = views.explorer.clusters()
    assert len(items) == c.k and summary.startswith(f"**{c.k} clusters** (k chosen by silhouette)")
    assert "purity" in summary and sum(c.sizes) == 26
    members, ids = views.cluster_members(0)
    assert len(members) == c.sizes[0] == len(ids)
    nbrs, status = views.neighbours(ids[0])
    assert nbrs[0][1].startswith("1.000 · ") and status.startswith("Nearest neighbours of ")


def test_map_html_draws_every_point_with_thumbnail_and_id(views: ExploreViews):
    page = views.map_html("label")
    assert page.count("<circle ") == 26 <= MAP_POINTS
    ids = {int(x) for x in re.findall(r'data-id="(\d+)"', page)}
    assert ids == set(views.explorer.collection.ids.tolist())
    first = re.search(r'data-src="gradio_api/file=([^"]+)"', page).group(1)
    assert Path(first).is_file() and Path(first).is_relative_to(views.si.root)
    assert len(set(re.findall(r'fill="(#[0-9a-f]{6})"', page))) == len(views.si.labels())  # one colour a label
