"""The pixel check (explore/pixelcheck.py): edited copies pass, different pictures do not, and the finder
promotes the pairs below its threshold that pass -- real images, real FAISS, the bundled encoder, an
index on disk for the command line."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from explore_data import noise_picture
from PIL import Image

from benchmarks.duplicates_measure import in_memory
from benchmarks.planted import group_pairs
from instdisc.bundled import bundled_checkpoint
from instdisc.explore import ExploreError, Explorer
from instdisc.explore.calibrate import expected_with_pixel_check
from instdisc.explore.edits import KINDS, edit
from instdisc.explore.featurisers import recipe_embedder
from instdisc.explore.grouping import group_duplicates
from instdisc.explore.neighbours import KnnGraph, knn_graph
from instdisc.explore.pixelcheck import (
    SIDE,
    THRESHOLD,
    AboveCheck,
    PixelCheck,
    Thumb,
    aligned_correlation,
    band_pairs,
    candidate_pairs,
    check_above,
    pair_score,
    thumb_score,
    thumbnail,
)
from instdisc.trained import Checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _photo(rng: np.random.Generator) -> Image.Image:
    """A distinct 160 px photo-like picture: colour noise at five scales and six filled shapes."""
    return noise_picture(rng, 160, ((2, 1.0), (4, 0.8), (8, 0.6), (16, 0.4), (40, 0.3)), 6, (15, 60))


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    rng = np.random.default_rng(5)
    return [_photo(rng) for _ in range(40)]


# ---------------------------------------------------------------- the score


def test_every_edit_kind_passes_and_different_pictures_do_not(photos):
    copies = {k: [pair_score(p, edit(p, k, random.Random(i))) for i, p in enumerate(photos[:12])] for k in KINDS}
    for kind, scores in copies.items():
        assert min(scores) >= THRESHOLD, (kind, scores)
    assert min(copies["jpeg"] + copies["resize"] + copies["colour"]) >= 0.98  # no geometry to undo
    others = [pair_score(a, b) for a, b in zip(photos[:20], photos[20:40], strict=True)]
    assert max(others) < 0.6, others


def test_the_crop_search_is_what_finds_a_crop(photos):
    img = photos[0]
    w, h = img.size
    crop = img.crop((w // 10, h // 12, w // 10 + int(w * 0.9), h // 12 + int(h * 0.9))).resize((w, h))
    a, b = thumbnail(img), thumbnail(crop)
    assert a.shape == (SIDE, SIDE) and a.dtype == np.uint8
    # without the search (both frames compared as they are) the crop looks like another picture
    x, y = a.astype(np.float64) - a.mean(), b.astype(np.float64) - b.mean()
    assert float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum())) < 0.9
    assert aligned_correlation(a, b) >= THRESHOLD
    assert aligned_correlation(a, b) == pytest.approx(aligned_correlation(b, a))  # either may be the crop
    assert aligned_correlation(a, a) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ExploreError, match="thumbnails must be"):
        aligned_correlation(a, a[:10])


def test_band_pairs_are_undirected_best_first_and_within_the_band():
    neighbours = np.array([[1, 2], [0, 2], [1, 0]])
    scores = np.array([[0.95, 0.80], [0.95, 0.90], [0.90, 0.80]], np.float32)
    pairs, s = band_pairs(KnnGraph(neighbours, scores, "exact", 0.0), 0.85, 0.99)
    assert pairs.tolist() == [[0, 1], [1, 2]] and s.tolist() == pytest.approx([0.95, 0.90])
    pairs, _ = band_pairs(KnnGraph(neighbours, scores, "exact", 0.0), 0.75, 0.9)
    assert pairs.tolist() == [[0, 2]]


def test_a_picture_smaller_than_the_thumbnail_is_compared_at_its_own_size(photos):
    small = [p.resize((32, 32), Image.Resampling.BICUBIC) for p in photos[:12]]  # CIFAR-sized originals
    copies = [p.resize((16, 16), Image.Resampling.BICUBIC) for p in small]  # downscaled to half
    for img, copy in zip(small, copies, strict=True):
        plain = aligned_correlation(thumbnail(img), thumbnail(copy))  # with the original's detail the copy lacks
        assert pair_score(img, copy) >= 0.98 and pair_score(img, copy) - plain > 0.02, plain
    # another small picture does not pass at the smaller size either
    others = [pair_score(a, b) for a, b in zip(small[:6], copies[6:12], strict=True)]
    assert max(others) < 0.7, others
    # pictures at least the thumbnail's size are compared as they are
    a, b = Thumb(thumbnail(photos[0]), (160, 160)), Thumb(thumbnail(photos[0].resize((80, 80))), (80, 80))
    assert thumb_score(a, b) == pytest.approx(aligned_correlation(a.pixels, b.pixels))


def test_candidates_are_nearest_neighbours_first_then_the_band():
    # 0-1 nearest of each other at 0.95; 2-3 at 0.88; 0-2 at 0.86 is nobody's nearest; 4's nearest is 0 at 0.70
    neighbours = np.array([[1, 2], [0, 3], [3, 0], [2, 1], [0, 1]])
    scores = np.array([[0.95, 0.86], [0.95, 0.60], [0.88, 0.86], [0.88, 0.60], [0.70, 0.60]], np.float32)
    graph = KnnGraph(neighbours, scores, "exact", 0.0)
    pairs, cos, leading = candidate_pairs(graph, 0.85, 0.99, nearest_floor=0.75)
    assert pairs.tolist() == [[0, 1], [2, 3], [0, 2]] and cos.tolist() == pytest.approx([0.95, 0.88, 0.86])
    assert leading == 2
    # a floor above 2-3: still checked as nearest neighbours, down to the nearest floor, not below it
    pairs, _, leading = candidate_pairs(graph, 0.9, 0.99, nearest_floor=0.75)
    assert pairs.tolist() == [[0, 1], [2, 3]] and leading == 2
    pairs, _, leading = candidate_pairs(graph, 0.9, 0.99)  # no nearest floor: the band's floor for all
    assert pairs.tolist() == [[0, 1]] and leading == 1
    assert candidate_pairs(graph, 0.6, 0.99, nearest_floor=0.65)[0].tolist()[:3] == [[0, 1], [2, 3], [0, 4]]


# ---------------------------------------------------------------- grouping and the finder


def test_a_verified_pair_below_the_threshold_joins_despite_the_guard():
    rng = np.random.default_rng(0)
    v = rng.standard_normal((50, 32))
    v[1] = v[0] + 0.55 * np.linalg.norm(v[0]) / np.sqrt(32) * rng.standard_normal(32)  # a "crop": ~0.85
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    v = v.astype(np.float32)
    assert 0.7 < float(v[0] @ v[1]) < 0.95
    graph = knn_graph(v, k=5)
    assert group_duplicates(graph, v, 0.95) == []
    groups = group_duplicates(graph, v, 0.95, verified=np.array([[1, 0]]))
    assert [sorted(g.rows) for g in groups] == [[0, 1]]


def _collection(images: list[Image.Image]):
    ckpt = Checkpoint.load(str(bundled_checkpoint("thumbnail")))
    return in_memory(images, [f"{i}.png" for i in range(len(images))], recipe_embedder(ckpt, images))


def test_the_finder_promotes_crops_below_its_threshold_and_nothing_else(photos):
    crops = [edit(p, "crop", random.Random(100 + i)) for i, p in enumerate(photos[:8])]
    images = photos + crops
    ex = Explorer(_collection(images), seed=0)
    truth = {(i, len(photos) + i) for i in range(8)}
    s = ex.collection.vectors
    crop_scores = [float(s[a] @ s[b]) for a, b in truth]
    t = float(np.round(max(crop_scores) + 0.0025, 4))  # every crop pair below the threshold
    plain = ex.duplicates(t, similar="off", pixel_check="off")
    assert plain.pixel is None and not group_pairs(plain.groups) & truth
    dup = ex.duplicates(t, similar="off", pixel_check=0.1)  # a band holding every pair of the kNN graph
    assert isinstance(dup.pixel, PixelCheck) and dup.pixel.checked == dup.pixel.band_pairs > len(truth)
    assert {tuple(p) for p in dup.pixel.pairs.tolist()} == truth  # every crop passed; no other pair did
    assert group_pairs(dup.groups) == truth
    assert "pixel check" in dup.tier_counts()["near"].rule
    # a band larger than the pairs it may check: the best-scoring ones, and the score it stopped at
    capped = ex.pixel_check(0.1, t, max_pairs=3)
    _, cosines, leading = candidate_pairs(ex.graph(), 0.1, t)
    assert capped.checked == 3 < leading < capped.band_pairs == len(cosines)
    assert capped.lowest_checked == pytest.approx(float(cosines[2])) and "the best 3 of" in capped.rule()
    # a sample of the pairs above a threshold, pixel-checked: every crop pair passes, no other pair does
    above = check_above(ex.collection, ex.graph(), 0.1, sample=10_000)
    assert above.pairs == above.sampled == above.readable == dup.pixel.band_pairs and above.passed == len(truth)
    few = check_above(ex.collection, ex.graph(), 0.1, sample=5)
    assert (few.pairs, few.sampled) == (above.pairs, 5) and few.passed <= 5
    assert dup.expected_precision is None  # a number as threshold: nothing calibrated, nothing expected
    with pytest.raises(ExploreError, match="--pixel-check must be"):
        ex.duplicates(t, pixel_check="sometimes")


def test_auto_expects_the_recall_the_pixel_check_then_gives(photos):
    rng = np.random.default_rng(9)
    originals = photos + [_photo(rng) for _ in range(80)]
    copies = [edit(p, KINDS[i % 4], random.Random(200 + i)) for i, p in enumerate(originals[:24])]
    images = originals + copies
    ex = Explorer(_collection(images), seed=0)
    dup = ex.duplicates("auto", similar="off")
    cal = dup.calibration
    truth = {(i, len(originals) + i) for i in range(24)}
    found = group_pairs(dup.groups) & truth
    assert cal.pixel_floor is not None and dup.pixel is not None
    assert cal.pixel_band_passed <= cal.pixel_band_copies and cal.pixel_recall >= cal.recall
    assert len(cal.pixel_band_passed_scores) == cal.pixel_band_passed
    assert cal.pixel_nearest_floor <= cal.pixel_floor
    assert all(cal.pixel_nearest_floor <= x < cal.threshold for x in cal.pixel_band_passed_scores)
    assert dup.expected_recall == cal.pixel_recall
    assert abs(len(found) / len(truth) - dup.expected_recall) <= 0.1
    assert len(found) / len(truth) >= 0.9
    precision, recall = expected_with_pixel_check(cal, dup.pixel, len(images), dup.above)
    assert (precision, recall) == (dup.expected_precision, dup.expected_recall)
    assert "expected precision" in dup.expectation()


def test_expected_precision_with_the_check_by_hand():
    from dataclasses import replace

    from instdisc.explore.calibrate import Calibration

    cal = Calibration(threshold=0.97, precision=0.9, recall=0.6, reached=False, target_precision=0.95,
                      prevalence=0.05, prevalence_estimated=True, samples=10, unreadable=0, recall_by_edit={},
                      false_pairs_per_image=0.004, graph_pairs_per_image=0.1, identical_pairs=0, fit={},
                      random_pair_fpr=0.0, random_pair_quantiles={}, positive_quantiles={}, curve=[], edits={},
                      seconds=0.0, pixel_floor=0.85, pixel_band_copies=40, pixel_band_passed=36, pixel_recall=0.95)
    check = PixelCheck(0.85, 0.97, THRESHOLD, 100, 100, 0, np.array([[0, 1]] * 20), np.ones(20), 0.1)
    # 1,000 images: 50 copy pairs, 30 above t; 2 unrelated pairs above t; 20 promoted
    assert expected_with_pixel_check(cal, check, 1000) == pytest.approx(((30 + 20) / (30 + 2 + 20), 0.95))
    assert expected_with_pixel_check(replace(cal, pixel_recall=None), check, 1000) == (0.9, 0.6)
    # 10 sampled images x 4 edits; two of the band's passing copies scored below the last pair checked
    capped = PixelCheck(0.85, 0.97, THRESHOLD, 500, 100, 0, np.array([[0, 1]] * 20), np.ones(20), 0.1, 0.9)
    cal = replace(cal, pixel_band_passed_scores=[0.86, 0.88, 0.9, 0.95])
    assert expected_with_pixel_check(cal, capped, 1000)[1] == pytest.approx(0.95 - 2 / 40)
    assert expected_with_pixel_check(cal, check, 1000)[1] == pytest.approx(0.95)  # every band pair checked
    # measured above the threshold: 18 of 20 sampled pairs pass, the check passes 95 % of the copies there
    above = AboveCheck(0.97, pairs=40, sampled=20, readable=20, passed=18, seconds=0.0)
    copies_above = 40 * 0.9 / 0.95
    assert expected_with_pixel_check(replace(cal, pixel_pass_above=0.95), check, 1000, above)[0] == pytest.approx(
        (copies_above + 20) / (40 + 20))
    assert expected_with_pixel_check(cal, check, 1000, above)[0] == pytest.approx((30 + 20) / (30 + 2 + 20))


@pytest.fixture(scope="module")
def crop_index(tmp_path_factory, photos) -> Path:
    """An index (thumbnail encoder) of 30 photos, re-crops of the first three and six look-alikes (another
    picture with 60 % of one of the photos blended in: close in the embedding, so ``auto`` sets its threshold
    above them and the crops fall in the pixel check's band)."""
    from index.build import BuildOptions, build

    d = tmp_path_factory.mktemp("crops")
    for i, p in enumerate(photos[:30]):
        p.save(d / f"{i:02d}.png")
    for i in range(3):
        edit(photos[i], "crop", random.Random(7 + i)).save(d / f"crop-{i}.png")
    for i in range(6):
        Image.blend(photos[30 + i], photos[10 + i], 0.6).save(d / f"alike-{i}.png")
    out = tmp_path_factory.mktemp("crop-index")
    build(bundled_checkpoint("thumbnail"), out, images=d, options=BuildOptions(progress=False), overwrite=True)
    return out


def _crop_groups(groups: list[list[str]]) -> None:
    for i in range(3):
        assert sorted([f"{i:02d}.png", f"crop-{i}.png"]) in groups, groups


def test_find_duplicates_prints_the_check_and_refuses_a_bad_value(crop_index: Path, tmp_path: Path):
    script = [sys.executable, str(ROOT / "scripts" / "find_duplicates.py"), "--index", str(crop_index)]
    out = subprocess.run(script + ["--out", str(tmp_path / "rep"), "--threshold", "0.999", "--pixel-check", "0.5"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "pixel check:" in out.stdout
    report = json.loads((tmp_path / "rep" / "groups.json").read_text())
    assert report["pixel_check"]["threshold"] == THRESHOLD and report["pixel_check"]["floor"] == 0.5
    _crop_groups([sorted(Path(m["path"]).name for m in g["members"]) for g in report["groups"]])
    bad = subprocess.run(script + ["--out", str(tmp_path / "rep2"), "--pixel-check", "yes"], capture_output=True,
                         text=True, cwd=ROOT)
    assert bad.returncode == 2 and "--pixel-check must be" in bad.stderr


def test_the_app_keeps_the_calibrated_check_when_the_slider_moves(crop_index: Path):
    from index.search import SearchIndex
    from instdisc.web.explore_tabs import ExploreViews

    views = ExploreViews(SearchIndex.open(crop_index, device="cpu"))
    _, _, summary, _ = views.duplicate_view("auto")
    floor = views.duplicates("auto").calibration.pixel_floor
    assert floor is not None and "expected precision" in summary
    dup = views.duplicates(0.999)  # the slider: a number above every crop's score
    assert dup.pixel is not None and dup.pixel.floor == floor and dup.expected_precision is None
    paths = views.explorer.collection.paths
    _crop_groups([sorted(Path(paths[r]).name for r in g.rows) for g in dup.groups])
    _, _, summary, _ = views.duplicate_view(0.999)
    assert "Pixel check:" in summary
