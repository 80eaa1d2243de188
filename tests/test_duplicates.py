"""The duplicate finder's tiers, threshold and keep rule: a 101-image folder with one edited copy and the
bundled encoder, small planted folders scored as the measurement scores them, the copy-share fit against
a hand computation, exact duplicates, similar shots, the keep rule, and the pHash baseline -- real FAISS,
real images."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from explore_data import noise_picture
from PIL import Image

from benchmarks.duplicates_measure import case, edited_copy, in_memory
from benchmarks.phash import pairs_within, popcount
from benchmarks.planted import PairScore, score_pairs
from instdisc.bundled import bundled_checkpoint
from instdisc.explore import ExploreError, Explorer
from instdisc.explore.calibrate import expected_precision
from instdisc.explore.collection import Collection
from instdisc.explore.keep import RULES, suggest
from instdisc.explore.mixture import fit_mixture, positive_tail
from instdisc.explore.reports import write_duplicates
from instdisc.explore.similar import PERCENTILE
from instdisc.trained import Checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _pictures(n: int, seed: int = 3) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [noise_picture(rng) for _ in range(n)]


def _index(folder: Path, out: Path) -> Path:
    from index.build import BuildOptions, build

    build(bundled_checkpoint(), out, images=folder, options=BuildOptions(progress=False), overwrite=True)
    return out


def _rows_by_name(ex: Explorer) -> dict[str, int]:
    return {Path(p).name: r for r, p in enumerate(ex.collection.paths)}


def _cifar_test_folder() -> Path | None:
    """CIFAR-10's test JPEGs (``test/<class>/*.jpg``) where this machine has them (INSTDISC_CIFAR10)."""
    for root in (os.environ.get("INSTDISC_CIFAR10"), ROOT / "data" / "cifar10", Path("/work/main/data/cifar10")):
        if root and (Path(root) / "test").is_dir():
            return Path(root) / "test"
    return None


@pytest.fixture(scope="module")
def folder_101(tmp_path_factory) -> Path:
    """100 pictures and one edited copy of the first."""
    d = tmp_path_factory.mktemp("folder-101")
    pics = _pictures(100)
    for i, im in enumerate(pics):
        im.save(d / f"{i:03d}.png")
    (d / "copy.jpg").write_bytes(edited_copy(pics[0]))
    return d


# ---------------------------------------------------------------- the 101-image folder


@pytest.mark.skipif(_cifar_test_folder() is None, reason="CIFAR-10 test JPEGs not here (set INSTDISC_CIFAR10)")
def test_the_one_copy_of_a_101_image_cifar_folder_is_grouped_and_nothing_else(tmp_path: Path):
    files = sorted(_cifar_test_folder().rglob("*.jpg"))
    picked = [files[i] for i in np.random.default_rng(0).choice(len(files), 100, replace=False)]
    d = tmp_path / "imgs"
    d.mkdir()
    for i, f in enumerate(picked):
        shutil.copy(f, d / f"{i:03d}.jpg")
    (d / "copy.jpg").write_bytes(edited_copy(Image.open(picked[0])))
    ex = Explorer.open(_index(d, tmp_path / "idx"))
    dup = ex.duplicates("auto")
    rows = _rows_by_name(ex)
    assert [sorted(g.rows) for g in dup.groups] == [sorted([rows["000.jpg"], rows["copy.jpg"]])]
    assert dup.groups[0].tier == "near"
    cal = dup.calibration
    assert cal.prevalence_estimated and cal.reached and cal.precision >= cal.target_precision
    # one copy among 101 images, and the fit says so (a fixed 5 % share called the pair noise: 0 groups)
    assert 0.003 < cal.prevalence < 0.03
    assert cal.threshold <= dup.groups[0].min_score


# ---------------------------------------------------------------- planted folders, scored as measured


@pytest.mark.parametrize("share", [0.05, 0.2])
def test_planted_copies_in_a_small_folder(share: float):
    originals = _pictures(200, seed=11)
    row = case(originals, [f"{i}.png" for i in range(200)], share, Checkpoint.load(str(bundled_checkpoint())), 0)
    ours = row["ours"]
    assert row["planted"] == round(200 * share)
    # synthetic pictures are harder for the bundled encoder than photos (look-alikes score up to 0.95); the pixel
    # check finds the copies the threshold leaves below it
    assert ours["recall"] >= 0.9 and ours["precision"] >= 0.95 and ours["reached"]
    assert ours["pixel_check"] is not None and ours["pixel_check"]["passed"] >= 1, ours
    # what auto printed is what was then measured, and the copy share is estimated, not assumed
    assert abs(ours["expected_recall"] - ours["recall"]) <= 0.1
    # the printed precision is of every pair reported (a pixel-checked sample of those above the threshold):
    # these originals are independent pictures, so a pair of two of them is a look-alike, false
    assert abs(ours["expected_precision"] - ours["precision_all"]) <= 0.05
    assert abs(ours["estimated_share_with_copy"] - row["true_share_with_copy"]) <= 0.2 * row["true_share_with_copy"]
    for d in (10, 4, 2):
        assert 0.0 <= row[f"phash_le{d}"]["recall"] <= 1.0
    # the fixed-threshold curve is the embedding alone: at auto's threshold it finds what auto finds without
    # the pixel check, never more
    at_auto = next(c for c in ours["curve"] if abs(c["threshold"] - ours["threshold"]) < 1e-9)
    assert at_auto["recall"] < ours["recall"]
    recalls = [c["recall"] for c in ours["curve"]]
    assert recalls == sorted(recalls, reverse=True)  # a higher threshold never groups more copies
    best = ours["best_at_target"]
    assert best["precision"] >= 0.95 and best["recall"] >= at_auto["recall"]


def test_pair_scores_by_hand():
    # originals 0..5, copies 6 (of 0, jpeg) and 7 (of 1, crop)
    pairs = [(0, 6, "jpeg"), (1, 7, "crop")]
    reported = {(0, 6), (2, 7), (3, 4)}
    s = score_pairs(reported, pairs, originals=6)
    assert s == PairScore(recall=0.5, recall_by_edit={"crop": 0.0, "jpeg": 1.0}, precision=0.5,
                          precision_all=1 / 3, reported_pairs=3, pairs_with_copy=2, right_pairs=1, own_pairs=1,
                          precision_original_grouped=0.5)
    # a group {0, 5, 6}: 5 is 0's own duplicate, so the copy's pair with it counts right only in the second measure
    s = score_pairs({(0, 5), (0, 6), (5, 6), (2, 7)}, pairs, originals=6)
    assert (s.precision, s.precision_original_grouped, s.own_pairs) == (pytest.approx(1 / 3), pytest.approx(2 / 3), 1)


# ---------------------------------------------------------------- the copy-share fit


def test_copy_share_fit_against_a_hand_computation():
    # 2,000 images, k = 4. Unrelated edges: a known tail F0(t) = exp(-12 u) - exp(-12), u = (t - 0.5) / 0.5
    # (log-linear, inside the fitted family), drawn by its inverse at evenly spaced quantiles -- no noise.
    # Copy edges: q = 0.1 per image (100 pairs), at the synthetic-copy scores' own quantiles.
    n, k, q = 2000, 4, 0.1
    f0_at_lo = 1.0 - np.exp(-12.0)
    null_edges = int(round(n * f0_at_lo))  # F0(0.5) edges per image above 0.5 ...
    p = (np.arange(null_edges) + 0.5) / null_edges  # ... spread by inverting F0
    u = -np.log(np.exp(-12.0) + p * f0_at_lo) / 12.0
    null = 0.5 + 0.5 * u
    positives = np.linspace(0.95, 0.999, 400)
    copies = np.repeat(np.quantile(positives, (np.arange(100) + 0.5) / 100), 2)  # both directions of a pair
    scores = np.full(n * k, 0.1)
    scores[:null.size] = null
    scores[null.size:null.size + copies.size] = copies
    scores = -np.sort(-scores.reshape(n, k), axis=1)
    fit = fit_mixture(scores, positives, t_lo=0.5)
    assert fit.copy_edges_per_image == pytest.approx(q, rel=0.1)
    t = np.array([0.9, 0.96, 0.98])
    assert fit.null(t) == pytest.approx(np.exp(-12 * (t - 0.5) / 0.5) - np.exp(-12.0), rel=0.25, abs=1e-4)
    # the expected precision is q R / (q R + F0), by hand at t = 0.96: R = (0.999 - 0.96) / 0.049
    r = positive_tail(positives, np.array([0.96]))[0]
    assert r == pytest.approx((0.999 - 0.96) / 0.049, abs=0.01)
    f0 = np.exp(-12 * 0.92) - np.exp(-12.0)
    assert expected_precision(np.array([r]), np.array([f0]), q)[0] == pytest.approx(q * r / (q * r + f0))
    assert expected_precision(np.array([0.0]), np.array([0.0]), q)[0] == 1.0


# ---------------------------------------------------------------- tiers and the keep rule


def test_exact_tier_same_bytes_and_same_pixels(folder_101: Path, tmp_path: Path):
    d = tmp_path / "imgs"
    shutil.copytree(folder_101, d)
    shutil.copy(d / "005.png", d / "005-again.png")  # same bytes
    Image.open(d / "007.png").save(d / "007-resaved.png", compress_level=0)  # same pixels, other bytes
    assert (d / "007.png").read_bytes() != (d / "007-resaved.png").read_bytes()
    ex = Explorer.open(_index(d, tmp_path / "idx"))
    rows = _rows_by_name(ex)
    v = ex.collection.vectors
    dup = ex.duplicates(float(v[rows["000.png"]] @ v[rows["copy.jpg"]]) - 1e-4)  # the edited copy just in
    by_rows = {frozenset(g.rows): g.tier for g in dup.groups}
    assert by_rows == {frozenset({rows["005.png"], rows["005-again.png"]}): "exact",
                       frozenset({rows["007.png"], rows["007-resaved.png"]}): "exact",
                       frozenset({rows["000.png"], rows["copy.jpg"]}): "near"}
    assert dup.exact.same_bytes_pairs == 1 and dup.exact.same_pixels_pairs == 1
    tiers = dup.tier_counts()
    assert (tiers["exact"].groups, tiers["exact"].images, tiers["near"].groups) == (2, 4, 1)
    # exact groups stand at any threshold
    assert {frozenset(g.rows) for g in ex.duplicates(1.0).groups} == {k for k, t in by_rows.items() if t == "exact"}
    out = write_duplicates(tmp_path / "report", ex.collection, dup)
    table = list(csv.DictReader(out["csv"].open()))
    assert {r["tier"] for r in table} - {"similar"} == {"exact", "near"}
    assert {r["action"] for r in table if r["tier"] == "similar"} <= {"review"}  # look-alikes at --similar auto
    removed = [r for r in table if r["path"].endswith("-again.png") or r["path"].endswith("005.png")]
    assert sorted(r["action"] for r in removed) == ["keep", "remove"]
    assert any(r["reason"].startswith("exact copy of id") for r in removed)


SHOT_SIDE = 75  # px of a 96 px scene: each shot keeps 61 % of its area
NEAR = 0.95  # the near threshold of the similar-shot tests: the copy above it, the two shots below


@pytest.fixture(scope="module")
def shots_index(tmp_path_factory) -> Path:
    """24 unrelated pictures, an edited copy of the first, and two shots of one scene: two crops of 61 % of its
    area, the second shifted right by a fifth of the width (the same scene shot twice, not a copy)."""
    d = tmp_path_factory.mktemp("shots")
    pics = _pictures(24, seed=5)
    for i, im in enumerate(pics):
        im.save(d / f"{i:03d}.png")
    (d / "copy.jpg").write_bytes(edited_copy(pics[0]))
    scene = noise_picture(np.random.default_rng(77), 96)
    shift = 96 - SHOT_SIDE
    scene.crop((0, 0, SHOT_SIDE, SHOT_SIDE)).save(d / "shot-a.png")
    scene.crop((shift, 0, 96, SHOT_SIDE)).save(d / "shot-b.png")
    return _index(d, tmp_path_factory.mktemp("shots-index"))


def test_similar_shots_are_a_tier_of_their_own_marked_for_review(shots_index: Path, tmp_path: Path,
                                                                  monkeypatch):
    ex = Explorer.open(shots_index)
    rows = _rows_by_name(ex)
    v = ex.collection.vectors
    shots = {rows["shot-a.png"], rows["shot-b.png"]}
    shot_score = float(v[rows["shot-a.png"]] @ v[rows["shot-b.png"]])
    assert shot_score < NEAR <= float(v[rows["000.png"]] @ v[rows["copy.jpg"]])  # the data is as described
    dup = ex.duplicates(NEAR)  # --similar auto by default
    assert {frozenset(g.rows): g.tier for g in dup.groups} == {frozenset({rows["000.png"], rows["copy.jpg"]}): "near"}
    assert [(set(g.rows), g.tier) for g in dup.similar.groups] == [(shots, "similar")]
    # auto: the 99th percentile of the nearest-neighbour scores outside the near group -- the shots' own score
    free = [r for r in range(len(v)) if r not in dup.groups[0].rows]
    assert dup.similar.threshold == pytest.approx(np.percentile(ex.graph().scores[free, 0], PERCENTILE))
    assert dup.similar.threshold <= shot_score + 1e-5 and dup.similar.chosen_by.startswith("auto")  # float32 noise
    # unrelated pictures are in no group, and the ranking puts the similar tier last
    assert {r for g in dup.all_groups for r in g.rows} == shots | set(dup.groups[0].rows)
    assert [g.tier for g in dup.all_groups] == ["near", "similar"]
    tiers = dup.tier_counts()
    assert (tiers["similar"].groups, tiers["similar"].images, tiers["similar"].pairs) == (1, 2, 1)
    assert tiers["similar"].files_to_remove == 0 and tiers["similar"].threshold == dup.similar.threshold
    assert (tiers["near"].groups, tiers["near"].pairs, tiers["near"].threshold) == (1, 1, NEAR)

    out = write_duplicates(tmp_path / "report", ex.collection, dup)
    table = list(csv.DictReader(out["csv"].open()))
    similar = [r for r in table if r["tier"] == "similar"]
    assert {Path(r["path"]).name for r in similar} == {"shot-a.png", "shot-b.png"}
    assert all(r["action"] == "review" and r["reason"] == "similar shot: review" for r in similar)
    assert sorted(float(r["score_to_kept"]) for r in similar) == pytest.approx([shot_score, 1.0], abs=1e-4)
    assert sorted(r["action"] for r in table if r["tier"] == "near") == ["keep", "remove"]
    report = json.loads(out["json"].read_text())
    assert report["tiers"]["similar"]["groups"] == 1 and report["similar"]["requested"] == "auto"
    assert report["files_to_remove"] == 1 and report["groups_found"] == 2

    # a number in the gap groups the shots too; 'off' drops the tier
    given = ex.duplicates(NEAR, similar=shot_score - 0.01)
    assert [set(g.rows) for g in given.similar.groups] == [shots] and given.similar.chosen_by == "given"
    off = ex.duplicates(NEAR, similar="off")
    assert off.similar.groups == [] and off.tier_counts()["similar"].groups == 0 and off.similar.threshold is None
    assert {r["tier"] for r in csv.DictReader(io.StringIO(
        write_duplicates(tmp_path / "off", ex.collection, off)["csv"].read_text()))} == {"near"}
    # the similar tier is cached per its parameters: read back, not recomputed
    import instdisc.explore.explorer as explorer_mod

    def refuse(*a, **k):
        raise AssertionError("similar tier recomputed although cached")

    monkeypatch.setattr(explorer_mod, "similar_tier", refuse)
    cached = Explorer.open(shots_index).duplicates(NEAR)
    assert [set(g.rows) for g in cached.similar.groups] == [shots]
    assert cached.similar.threshold == dup.similar.threshold
    with pytest.raises(AssertionError, match="recomputed"):
        Explorer.open(shots_index).duplicates(NEAR, similar=0.9)  # other parameters are another entry


@pytest.mark.parametrize(("value", "message"), [
    ("often", "--similar must be 'auto', 'off' or a similarity such as 0.85, got 'often'"),
    ("1.5", r"--similar must be in (0, 1] (cosine similarity), got 1.5"),
    ("0", r"--similar must be in (0, 1] (cosine similarity), got 0.0"),
    ("0.97", "--similar (0.97) must be below the near-duplicate threshold (0.9500)"),
])
def test_a_bad_similar_value_stops_with_one_line(shots_index: Path, tmp_path: Path, capsys, value: str, message: str):
    from instdisc.explore.cli import find_duplicates_main

    with pytest.raises(ExploreError, match="--similar"):
        Explorer.open(shots_index).duplicates(NEAR, similar=value)
    code = find_duplicates_main(["--index", str(shots_index), "--threshold", str(NEAR), "--similar", value,
                                 "--out", str(tmp_path / "r")])
    assert code == 2 and capsys.readouterr().err == f"error: {message}\n"


def test_similar_off_from_the_command_line(shots_index: Path, tmp_path: Path, capsys):
    from instdisc.explore.cli import find_duplicates_main

    args = ["--index", str(shots_index), "--threshold", str(NEAR), "--out"]
    assert find_duplicates_main([*args, str(tmp_path / "auto")]) == 0
    line = capsys.readouterr().out
    assert "1 near-duplicate (2 images, 1 pairs" in line and "1 similar-shot (2 images, 1 pairs, to review" in line
    assert find_duplicates_main([*args, str(tmp_path / "off"), "--similar", "off"]) == 0
    assert "no similar shots (off)" in capsys.readouterr().out
    report = json.loads((tmp_path / "off" / "groups.json").read_text())
    assert report["tiers"]["similar"]["groups"] == 0 and {g["tier"] for g in report["groups"]} == {"near"}


def _files_collection(tmp_path: Path, specs: list[tuple[str, int, int, int, float]]) -> Collection:
    """Files named by ``specs`` (name, width, height, extra bytes, mtime), one vector each (all alike)."""
    paths = []
    for name, w, h, extra, mtime in specs:
        p = tmp_path / name
        buf = io.BytesIO()
        Image.new("RGB", (w, h), (90, 120, 30)).save(buf, format="PNG")
        p.write_bytes(buf.getvalue() + b"\0" * extra)
        os.utime(p, (mtime, mtime))
        paths.append(p)
    n = len(specs)
    v = np.ones((n, 4), np.float32) / 2
    return Collection(ids=np.arange(10, 10 + n), vectors=v, paths=[s[0] for s in specs], labels=[None] * n,
                      splits=[None] * n, widths=[s[1] for s in specs], heights=[s[2] for s in specs],
                      load_image=lambda r: Image.open(paths[r]), embed=lambda ims: v[:len(ims)],
                      file_path=lambda r: paths[r])


@pytest.mark.parametrize(("specs", "kept", "rule"), [
    # resolution first, even against a larger and older file
    ([("a.png", 32, 32, 5000, 100.0), ("b.png", 64, 64, 0, 200.0)], "b.png", RULES[0]),
    # equal resolution: the larger file
    ([("a.png", 32, 32, 0, 100.0), ("b.png", 32, 32, 300, 200.0)], "b.png", RULES[1]),
    # equal resolution and size: the oldest
    ([("aa.png", 32, 32, 0, 100.0), ("b.png", 32, 32, 0, 200.0)], "aa.png", RULES[2]),
    ([("a.png", 32, 32, 0, 300.0), ("bb.png", 32, 32, 0, 200.0)], "bb.png", RULES[2]),
    # all equal: the shorter path
    ([("copy-a.png", 32, 32, 0, 100.0), ("a.png", 32, 32, 0, 100.0)], "a.png", RULES[3]),
])
def test_keep_rule(tmp_path: Path, specs, kept: str, rule: str):
    coll = _files_collection(tmp_path, specs)
    members = suggest(coll, list(range(len(specs))))
    assert [m.action for m in members] == ["keep"] + ["remove"] * (len(specs) - 1)
    assert members[0].path == kept and members[0].reason == rule
    assert members[1].reason == f"near-duplicate of id {members[0].id}"


# ---------------------------------------------------------------- the pHash baseline


def test_phash_pairs_are_the_brute_force_pairs():
    rng = np.random.default_rng(0)
    h = rng.integers(0, 2**63, 300, dtype=np.int64).astype(np.uint64)
    h[5] = h[4] ^ np.uint64(0b1011)  # 3 bits from 4
    h[9] = h[4] ^ np.uint64(1 << 63)  # 1 bit from 4 (the top bit)
    bits = lambda x: bin(int(x)).count("1")  # noqa: E731
    assert popcount(np.array([h[4] ^ h[5], h[4] ^ h[9]])).tolist() == [3, 1]
    for d in (1, 4, 20):
        brute = {(a, b) for a in range(300) for b in range(a + 1, 300) if bits(h[a] ^ h[b]) <= d}
        assert pairs_within(h, d) == brute
    assert {(4, 9)} <= pairs_within(h, 1) and (4, 5) not in pairs_within(h, 2)


def test_in_memory_collection_keeps_sizes():
    ims = _pictures(3)
    coll = in_memory(ims, ["a", "b", "c"], lambda batch: np.eye(3, dtype=np.float32)[:len(batch)])
    assert coll.widths == [32, 32, 32] and len(coll) == 3


def test_copy_partners_shows_a_copy_grouped_with_its_originals_twin(tmp_path: Path):
    from benchmarks.copy_partners import main as copy_partners

    d = tmp_path / "folder"
    d.mkdir()
    pictures = _pictures(24, seed=21)
    for i, p in enumerate(pictures):
        p.save(d / f"{i:02d}.png")
    pictures[0].save(d / "00-twin.jpg", quality=90)  # the folder's own duplicate of 00.png
    out = tmp_path / "partners"
    summary = copy_partners(["--folder", str(d), "--size", "25", "--share", "1.0", "--encoder", "thumbnail",
                             "--out", str(out)])
    rows = summary["pairs"]
    # the copy of 00.png is grouped with the twin too (and the twin's copy with 00.png): not a mistake, and the
    # sheet says why -- the other image is the original's duplicate by pixels and by pHash
    family = {"00.png", "00-twin.jpg", "planted/colour/00.png", "planted/crop/00.png", "planted/jpeg/00.png",
              "planted/resize/00.png", "planted/colour/00-twin.jpg", "planted/crop/00-twin.jpg",
              "planted/jpeg/00-twin.jpg", "planted/resize/00-twin.jpg"}
    assert rows and all(r["other"] in family and r["copy"] in family for r in rows), rows
    assert summary["other_is_pixel_duplicate"] == summary["other_within_phash_10"] == len(rows)
    assert json.loads((out / "pairs.json").read_text())["pairs"] == rows and (out / "contact_sheet.png").is_file()
