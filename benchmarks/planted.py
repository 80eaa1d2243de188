"""The duplicate finder's measured precision/recall: plant edited copies of known images in a
collection, run the finder at its ``auto`` threshold, and count which planted pairs end up in
one group.

Pair-level: the reported pairs are all pairs inside the reported groups; a planted pair is
found when original and copy share a group. Natural duplicates already in the collection (CIFAR-10
has some between its splits) count as false, so the precision is a lower bound; groups holding
both a train and a test image and no planted copy are counted and shown separately.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from instdisc.explore.calibrate import expected_precision
from instdisc.explore.collection import Collection, Embed
from instdisc.explore.edits import KINDS, edit
from instdisc.explore.explorer import CalibrationOptions, Duplicates, Explorer
from instdisc.explore.grouping import Group

PLANTED = 200
PLANT_SEED_OFFSET = 7_919  # copies are edited with seeds the calibration never draws


@dataclass
class PlantedResult:
    """What the finder did with the planted copies."""

    featuriser: str
    images: int  # originals in the collection
    planted: int
    threshold: float
    expected_precision: float
    expected_recall: float
    # the calibration's R and F0 at the chosen threshold, at the share of images that really have a
    # planted copy (the calibration itself estimates it): what `precision` tests
    expected_precision_at_planted_share: float
    precision: float
    recall: float
    recall_by_edit: dict[str, float]
    reported_pairs: int
    groups: int
    cross_split_groups: int  # train+test groups without a planted copy (natural near-duplicates)
    seconds: dict[str, float]

    def to_dict(self) -> dict:
        return asdict(self)


def planted_collection(images: list[Image.Image], labels: list[str | None], splits: list[str | None],
                       paths: list[str], featurise: Embed, plant_rows: list[int], seed: int
                       ) -> tuple[Collection, list[tuple[int, int, str]]]:
    """``images`` plus one edited copy of each of ``plant_rows`` (edit kinds in turn); returns the
    collection and (original row, copy row, kind) per copy."""
    all_imgs, all_labels, all_splits, all_paths = list(images), list(labels), list(splits), list(paths)
    pairs = []
    for j, r in enumerate(plant_rows):
        kind = KINDS[j % len(KINDS)]
        all_imgs.append(edit(images[r], kind, random.Random(seed * 1_000_003 + PLANT_SEED_OFFSET + r)))
        all_labels.append(labels[r])
        all_splits.append("planted")
        all_paths.append(f"planted/{kind}/{paths[r]}")
        pairs.append((r, len(all_imgs) - 1, kind))
    vectors = np.concatenate([featurise(all_imgs[i:i + 512]) for i in range(0, len(all_imgs), 512)])
    coll = Collection(ids=np.arange(len(all_imgs), dtype=np.int64), vectors=vectors.astype(np.float32),
                      paths=all_paths, labels=all_labels, splits=all_splits,
                      widths=[im.width for im in all_imgs], heights=[im.height for im in all_imgs],
                      load_image=lambda row: all_imgs[row], embed=featurise)
    return coll, pairs


def score_groups(groups: list[Group], pairs: list[tuple[int, int, str]], splits: list[str | None]) -> dict:
    """Planted pairs found (same group), reported pairs, cross-split groups without planted copies."""
    owner = {r: gi for gi, g in enumerate(groups) for r in g.rows}
    found = [owner.get(a, -1) == owner.get(b, -2) for a, b, _ in pairs]
    reported = sum(g.size * (g.size - 1) // 2 for g in groups)
    cross = [gi for gi, g in enumerate(groups)
             if {"train", "test"} <= {splits[r] for r in g.rows} and all(splits[r] != "planted" for r in g.rows)]
    by_kind = {k: float(np.mean([f for f, (_, _, kk) in zip(found, pairs, strict=True) if kk == k]))
               for k in KINDS if any(kk == k for _, _, kk in pairs)}
    return {"found": int(sum(found)), "reported": reported, "recall_by_edit": by_kind, "cross_split": cross}


def evaluate_planted(images: list[Image.Image], labels: list[str | None], splits: list[str | None],
                     paths: list[str], featurise: Embed, name: str, planted: int = PLANTED,
                     plant_split: str | None = "test", options: CalibrationOptions | None = None, seed: int = 0
                     ) -> tuple[PlantedResult, Explorer, Duplicates]:
    """Plant ``planted`` copies (of images of ``plant_split``), find duplicates at ``auto``, score."""
    t0 = time.perf_counter()
    pool = [i for i, s in enumerate(splits) if plant_split is None or s == plant_split]
    rng = np.random.default_rng(seed + PLANT_SEED_OFFSET)
    rows = sorted(rng.choice(pool, min(planted, len(pool)), replace=False).tolist())
    coll, pairs = planted_collection(images, labels, splits, paths, featurise, rows, seed)
    t1 = time.perf_counter()
    ex = Explorer(coll, seed=seed, featuriser=name)
    graph = ex.graph()
    cal = ex.calibration(options)
    t2 = time.perf_counter()
    dup = ex.duplicates(cal.threshold)
    dup.calibration = cal
    t3 = time.perf_counter()
    s = score_groups(dup.groups, pairs, coll.splits)
    dup.extra = {"cross_split_groups": s["cross_split"]}
    res = PlantedResult(
        featuriser=name, images=len(images), planted=len(pairs), threshold=cal.threshold,
        expected_precision=cal.precision, expected_recall=cal.recall,
        expected_precision_at_planted_share=float(expected_precision(  # q = 2 x the share with a copy
            np.array([cal.recall]), np.array([cal.false_pairs_per_image]), 2 * len(pairs) / len(coll))[0]),
        precision=s["found"] / s["reported"] if s["reported"] else 1.0, recall=s["found"] / max(1, len(pairs)),
        recall_by_edit=s["recall_by_edit"], reported_pairs=s["reported"], groups=len(dup.groups),
        cross_split_groups=len(s["cross_split"]),
        seconds={"featurise": t1 - t0, "knn_graph": graph.seconds, "calibration": cal.seconds,
                 "grouping": t3 - t2, "total": t3 - t0})
    return res, ex, dup


# ---------------------------------------------------------------- pair-level scores at several prevalences


@dataclass
class PairScore:
    """One method's reported pairs against the planted copies.

    ``precision``: of the reported pairs that hold a planted copy, the share that are the copy and
    its original; pairs of two originals (the folder's own duplicates and look-alikes) are counted
    apart in ``own_pairs`` and in ``precision_all`` (which counts them as false).
    ``precision_original_grouped``: as ``precision``, but a copy's pair with another member of the group
    that holds its original counts as right too (the original's own duplicates: a group of the original,
    its re-scan and the copy reports the copy with both)."""

    recall: float
    recall_by_edit: dict[str, float]
    precision: float
    precision_all: float
    reported_pairs: int
    pairs_with_copy: int
    right_pairs: int
    own_pairs: int
    precision_original_grouped: float = 1.0


def group_pairs(groups: list[Group]) -> set[tuple[int, int]]:
    """Every pair (a < b) inside a group: what a group of m images reports."""
    out = set()
    for g in groups:
        rows = sorted(g.rows)
        out.update((a, b) for i, a in enumerate(rows) for b in rows[i + 1:])
    return out


def score_pairs(reported: set[tuple[int, int]], pairs: list[tuple[int, int, str]], originals: int) -> PairScore:
    """Recall per edit kind and precision (see :class:`PairScore`) of ``reported``; rows >= ``originals``
    are the planted copies."""
    truth = {(min(a, b), max(a, b)) for a, b, _ in pairs}
    found = [(min(a, b), max(a, b)) in reported for a, b, _ in pairs]
    with_copy = [p for p in reported if p[1] >= originals]
    right = sum(p in truth for p in with_copy)
    original = {c: a for a, c, _ in pairs}  # copy row -> its original's row
    grouped = sum((min(original[b], x), max(original[b], x)) in reported or x == original[b]
                  for x, b in with_copy if b in original)
    by_kind = {k: float(np.mean([f for f, (_, _, kk) in zip(found, pairs, strict=True) if kk == k]))
               for k in KINDS if any(kk == k for _, _, kk in pairs)}
    return PairScore(recall=float(np.mean(found)) if pairs else 1.0, recall_by_edit=by_kind,
                     precision=right / len(with_copy) if with_copy else 1.0,
                     precision_all=right / len(reported) if reported else 1.0, reported_pairs=len(reported),
                     pairs_with_copy=len(with_copy), right_pairs=right, own_pairs=len(reported) - len(with_copy),
                     precision_original_grouped=grouped / len(with_copy) if with_copy else 1.0)


def plant_share(images: list[Image.Image], share: float, seed: int) -> tuple[list[Image.Image],
                                                                              list[tuple[int, int, str]]]:
    """``images`` plus one edited copy of ``round(share * N)`` (at least 1) of them, edit kinds in turn."""
    rng = np.random.default_rng(seed + PLANT_SEED_OFFSET)
    m = max(1, int(round(share * len(images))))
    rows = sorted(rng.choice(len(images), min(m, len(images)), replace=False).tolist())
    out, pairs = list(images), []
    for j, r in enumerate(rows):
        kind = KINDS[j % len(KINDS)]
        out.append(edit(images[r], kind, random.Random(seed * 1_000_003 + PLANT_SEED_OFFSET + r)))
        pairs.append((r, len(out) - 1, kind))
    return out, pairs
