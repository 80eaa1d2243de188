"""``--threshold auto``: a duplicate threshold calibrated on the collection itself.

True copies: every sampled image is edited (:mod:`instdisc.explore.edits`: crop, colour, JPEG, resize),
re-embedded, and scored against its own stored vector -- what a copy added to the index would
score against its original; R(t) is the share of them scoring >= t (the expected recall).

Unrelated pairs: the kNN graph's edges (every row; the look-alikes that really compete with a
copy) hold both the collection's own copies and unrelated images. :func:`.mixture.fit_mixture`
splits them: ``F(t) = q R(t) + F0(t)``, with ``q`` (copy edges per image) estimated from the data.
The finder then reports ``N q R / 2`` true and ``N F0 / 2`` false pairs, so the expected
precision is ``q R / (q R + F0)``; ``auto`` takes the threshold with the highest recall whose
expected precision reaches ``target_precision``. A collection's only duplicate is no longer
counted as noise, and a collection full of copies no longer looks full of false pairs.
``prevalence`` (the share of images with one copy) may still be given instead of estimated:
``q = 2 prevalence``.

Below that threshold the pixel check (:mod:`.pixelcheck`) may still promote a pair: the band
starts at ``pixel_floor`` (the score :data:`PIXEL_FLOOR_PERCENTILE` % of the synthetic copies
fall below), and an image with its nearest neighbour from ``pixel_nearest_floor`` (the lowest
score of any synthetic copy). The synthetic copies in the band -- below the floor, those that
would be their original's nearest neighbour or have it as theirs -- are pixel-checked against their
originals here, so the expected recall with the check (``pixel_recall``) is measured the same
way as the embedding's.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass

import numpy as np

from .collection import Collection
from .edits import KINDS, describe, edit
from .errors import ExploreError
from .mixture import MixtureFit, fit_mixture, positive_tail
from .neighbours import KnnGraph
from .pixelcheck import ABOVE_SAMPLE, AboveCheck, Band, PixelCheck, pair_score
from .pixelcheck import THRESHOLD as PIXEL_THRESHOLD

SAMPLES = 200  # images edited (x 4 edits)
TARGET_PRECISION = 0.95
PREVALENCE = None  # share of images with a copy: None = estimated from the collection (.mixture)
RANDOM_PAIRS = 20_000
GRID = np.round(np.arange(0.0, 1.0, 0.0025), 4)  # candidate thresholds
EMBED_BATCH = 256
PIXEL_FLOOR_PERCENTILE = 1.0  # the pixel check's band starts where this share (%) of synthetic copies score less


@dataclass
class Calibration:
    """The chosen threshold, its expected precision/recall and the evidence behind them."""

    threshold: float
    precision: float
    recall: float
    reached: bool  # precision >= target at the chosen threshold
    target_precision: float
    prevalence: float  # share of images with a copy (q / 2): estimated, or as given
    prevalence_estimated: bool
    samples: int
    unreadable: int
    recall_by_edit: dict[str, float]
    false_pairs_per_image: float  # F0(threshold): unrelated edges per image, from the fit
    graph_pairs_per_image: float  # F(threshold): every kNN edge per image (copies included)
    identical_pairs: int  # pairs scoring >= mixture.IDENTICAL (left out of the fit)
    fit: dict
    random_pair_fpr: float  # share of random pairs >= threshold
    random_pair_quantiles: dict[str, float]
    positive_quantiles: dict[str, float]
    curve: list[dict[str, float]]  # every 0.01: threshold, precision, recall, false / graph pairs per image
    edits: dict[str, str]
    seconds: float
    # the pixel check below the threshold (.pixelcheck): its band's floor and what it adds to the recall
    pixel_floor: float | None = None  # None: no band (the floor is not below the threshold)
    pixel_threshold: float = PIXEL_THRESHOLD
    pixel_nearest_floor: float | None = None  # an image and its nearest neighbour are checked from here up
    pixel_band_copies: int = 0  # synthetic copies the band holds (see the module doc)
    pixel_band_passed: int = 0  # of them, passing the pixel check against their original
    pixel_recall: float | None = None  # expected recall of threshold-or-pixel-check (every band pair checked)
    pixel_recall_by_edit: dict[str, float] | None = None
    pixel_band_passed_scores: list[float] | None = None  # cosines of the band's synthetic copies that passed
    pixel_pass_above: float | None = None  # share of the synthetic copies scoring >= threshold passing the check

    def to_dict(self) -> dict:
        return asdict(self)

    def pixel_band(self) -> Band | None:
        """The pixel check's band below the threshold (None: none calibrated)."""
        return None if self.pixel_floor is None else Band(self.pixel_floor, self.pixel_nearest_floor)

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        return cls(**d)

    def summary(self) -> str:
        verdict = "" if self.reached else f" (target precision {self.target_precision:.2f} not reachable)"
        share = "estimated" if self.prevalence_estimated else "given"
        return (f"auto threshold {self.threshold:.4f}: expected precision {self.precision:.3f}, recall "
                f"{self.recall:.3f}{verdict} -- {self.samples} sampled images x {len(self.recall_by_edit)} edits; "
                f"{self.prevalence:.1%} of the images have a copy ({share})")


def expected_with_pixel_check(cal: Calibration, check: PixelCheck | None, n: int,
                              above: AboveCheck | None = None) -> tuple[float, float]:
    """Expected (precision, recall) of the pairs at or above the threshold plus those the pixel check
    promoted from its band, for a collection of ``n`` images.

    Above the threshold, with ``above`` (a pixel-checked sample of those pairs): of its ``pairs`` the share
    that passed, over the share of synthetic copies above the threshold that pass (``pixel_pass_above``),
    are copies -- measured on the collection, so its own duplicates count as what they are. Without it,
    from the fit: ``n q / 2 R(t)`` copy pairs and ``n F0(t) / 2`` unrelated ones. The promoted pairs count
    as copies: a look-alike does not keep its fine structure through the check's crop search (on the
    planted sets the pairs it passed were copies or the folder's own duplicates, docs/explore.md). The
    recall is the synthetic copies' (:func:`_pixel_band`), less those that passed below the lowest
    nearest-neighbour pair checked when the band held more pairs than were checked (a copy is counted as
    its original's nearest-neighbour pair: those are checked first, best first).
    """
    measured = above is not None and above.pass_rate is not None and bool(cal.pixel_pass_above)
    if not measured and (check is None or cal.pixel_recall is None):
        return cal.precision, cal.recall
    if measured:
        true_above = above.pairs * min(1.0, above.pass_rate / cal.pixel_pass_above)
        false_above = above.pairs - true_above
    else:
        true_above = n * cal.prevalence * cal.recall  # n q / 2 undirected copy pairs, the share R(t) above t
        false_above = n * cal.false_pairs_per_image / 2
    promoted = len(check.pairs) if check is not None else 0
    reported = true_above + false_above + promoted
    precision = (true_above + promoted) / reported if reported > 0 else 1.0
    if check is None or cal.pixel_recall is None:
        return float(precision), cal.recall
    recall = cal.pixel_recall
    if check.checked < check.band_pairs and cal.pixel_band_passed_scores is not None:
        # the nearest-neighbour pairs were checked down to lowest_checked: copies passing below it are not found
        missed = sum(x < check.lowest_checked for x in cal.pixel_band_passed_scores)
        recall -= missed / max(1, cal.samples * len(KINDS))
    return float(precision), float(recall)


def _pass_above(rows: list[int], images: list, pos: dict[str, np.ndarray], t: float, seed: int) -> float | None:
    """The share of (at most :data:`ABOVE_SAMPLE`) synthetic copies scoring >= ``t`` that pass the pixel check
    against their originals: what the check finds of the copies above the threshold."""
    above = [(kind, i) for kind, scores in pos.items() for i in np.flatnonzero(scores >= t).tolist()]
    if not above:
        return None
    pick = np.random.default_rng(seed).permutation(len(above))[:ABOVE_SAMPLE]
    passed = [pair_score(images[i], synthetic_copy(images[i], kind, rows[i], seed)) >= PIXEL_THRESHOLD
              for kind, i in (above[j] for j in pick)]
    return float(np.mean(passed))


def _pixel_band(coll: Collection, graph: KnnGraph, rows: list[int], images: list, pos: dict[str, np.ndarray],
                pos_vectors: dict[str, np.ndarray], floor: float, nearest_floor: float, t: float, seed: int
                ) -> tuple[int, list[float], float, dict[str, float]]:
    """Pixel-check the synthetic copies the band holds against their originals (the edits are re-made from
    their seeds): those scoring in [floor, t), and those in [nearest_floor, floor) that would be a nearest
    neighbour pair (closer to their original than its nearest neighbour is, or than any other image is to
    them). Returns (in band, the cosines of those that passed, recall with the check, recall with it by
    edit)."""
    in_band, passed = 0, []
    by_edit = {}
    for kind, scores in pos.items():
        ok = scores >= t
        for i in np.flatnonzero((scores >= min(floor, nearest_floor)) & (scores < t)).tolist():
            nearest = scores[i] >= floor or _would_be_nearest(coll, graph, rows[i], pos_vectors[kind][i],
                                                               float(scores[i]))
            if not nearest:
                continue
            copy = synthetic_copy(images[i], kind, rows[i], seed)
            in_band += 1
            if pair_score(images[i], copy) >= PIXEL_THRESHOLD:
                passed.append(float(scores[i]))
                ok[i] = True
        by_edit[kind] = float(ok.mean())
    total = sum(len(v) for v in pos.values())
    recall = sum(by_edit[k] * len(v) for k, v in pos.items()) / max(1, total)
    return in_band, passed, float(recall), by_edit


def _would_be_nearest(coll: Collection, graph: KnnGraph, row: int, copy_vector: np.ndarray, score: float) -> bool:
    """Would a copy of row ``row`` embedded as ``copy_vector`` (cosine ``score`` with it), added to the
    collection, form a nearest-neighbour pair with it: nearer to it than its nearest neighbour, or it the
    copy's nearest?"""
    if score > graph.scores[row, 0]:
        return True
    others = coll.vectors @ copy_vector
    others[row] = -np.inf
    return score >= float(others.max())


def _quantiles(x: np.ndarray) -> dict[str, float]:
    qs = {"p01": 1, "p10": 10, "p50": 50, "p90": 90, "p99": 99, "p999": 99.9}
    out = {k: float(np.percentile(x, q)) for k, q in qs.items()}
    out["max"] = float(x.max())
    return out


def _sample_images(coll: Collection, samples: int, rng: np.random.Generator) -> tuple[list[int], list, int]:
    rows, images, unreadable = [], [], 0
    for r in rng.permutation(len(coll)).tolist():
        if len(rows) == samples:
            break
        try:
            images.append(coll.load_image(r))
        except (OSError, ValueError, KeyError):
            unreadable += 1
            continue
        rows.append(r)
    return rows, images, unreadable


def synthetic_copy(img, kind: str, row: int, seed: int):
    """The calibration's edit ``kind`` of row ``row``'s image, the same for the same seed."""
    return edit(img, kind, random.Random(seed * 1_000_003 + row * len(KINDS) + KINDS.index(kind)))


def positive_scores(coll: Collection, rows: list[int], images: list, seed: int
                    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per edit kind: cosine of each edited image's embedding with its original's stored vector, and the
    edited images' embeddings (kept for :func:`_pixel_band`)."""
    scores, vectors = {}, {}
    for kind in KINDS:
        edited = [synthetic_copy(img, kind, r, seed) for r, img in zip(rows, images, strict=True)]
        vecs = np.concatenate([coll.embed(edited[i:i + EMBED_BATCH]) for i in range(0, len(edited), EMBED_BATCH)])
        scores[kind] = np.einsum("ij,ij->i", vecs, coll.vectors[rows]).astype(np.float32)
        vectors[kind] = vecs
    return scores, vectors


def false_pairs_per_image(scores: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """F(t) for each t of ``grid``: the mean count per row of ``scores`` (N, k) that are >= t."""
    flat = np.sort(scores[np.isfinite(scores)].ravel())
    return (flat.size - np.searchsorted(flat, grid, side="left")) / len(scores)


def expected_precision(recall: np.ndarray, false_per_image: np.ndarray, copy_edges: float) -> np.ndarray:
    """``q R / (q R + F0)`` with ``q`` = copy edges per image (1 where nothing is reported)."""
    tp = copy_edges * np.asarray(recall, dtype=np.float64)
    denom = tp + false_per_image
    return np.where(denom > 0, tp / np.where(denom > 0, denom, 1), 1.0)


def calibrate(coll: Collection, graph: KnnGraph, samples: int = SAMPLES, target_precision: float = TARGET_PRECISION,
              prevalence: float | None = PREVALENCE, random_pairs: int = RANDOM_PAIRS, seed: int = 0) -> Calibration:
    """Choose the duplicate threshold for ``coll`` (see the module doc)."""
    if not 0 < target_precision < 1:
        raise ExploreError(f"target precision must be in (0, 1), got {target_precision}")
    if prevalence is not None and not 0 < prevalence <= 1:
        raise ExploreError(f"prevalence must be in (0, 1], got {prevalence}")
    if samples < 1:
        raise ExploreError(f"calibration needs at least 1 sampled image, got {samples}")
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    rows, images, unreadable = _sample_images(coll, min(samples, len(coll)), rng)
    if not rows:
        raise ExploreError(f"none of the {unreadable} images tried could be read: cannot calibrate; "
                           "pass --threshold with a number")
    pos, pos_vectors = positive_scores(coll, rows, images, seed)
    allpos = np.concatenate(list(pos.values()))
    fit: MixtureFit = fit_mixture(graph.scores, allpos)
    q = fit.copy_edges_per_image if prevalence is None else 2.0 * prevalence
    recall = positive_tail(allpos, GRID)
    false = fit.null(GRID)
    graph_f = false_pairs_per_image(graph.scores, GRID)
    prec = expected_precision(recall, false, q)
    ok = np.flatnonzero((prec >= target_precision) & (GRID >= fit.t_lo))
    reached = len(ok) > 0
    if reached:
        best = ok[np.lexsort((-GRID[ok], -recall[ok]))[0]]  # highest recall, then the higher threshold
    else:
        best = int(np.argmax(prec * recall + 1e-9 * GRID))
    t = float(GRID[best])
    floor = float(np.percentile(allpos, PIXEL_FLOOR_PERCENTILE))
    nearest_floor = float(allpos.min())
    band = (_pixel_band(coll, graph, rows, images, pos, pos_vectors, floor, nearest_floor, t, seed)
            if floor < t else None)
    pass_above = _pass_above(rows, images, pos, t, seed)
    a = rng.integers(0, len(coll), random_pairs)
    b = (a + rng.integers(1, len(coll), random_pairs)) % len(coll)
    rand = np.einsum("ij,ij->i", coll.vectors[a], coll.vectors[b])
    step = int(round(0.01 / (GRID[1] - GRID[0])))
    curve = [{"threshold": float(GRID[i]), "precision": float(prec[i]), "recall": float(recall[i]),
              "false_pairs_per_image": float(false[i]), "graph_pairs_per_image": float(graph_f[i])}
             for i in range(0, len(GRID), step)]
    return Calibration(
        threshold=t, precision=float(prec[best]), recall=float(recall[best]), reached=reached,
        target_precision=target_precision, prevalence=q / 2, prevalence_estimated=prevalence is None,
        samples=len(rows), unreadable=unreadable,
        recall_by_edit={k: float((v >= t).mean()) for k, v in pos.items()},
        false_pairs_per_image=float(false[best]), graph_pairs_per_image=float(graph_f[best]),
        identical_pairs=fit.identical_edges // 2, fit=fit.to_dict(), random_pair_fpr=float((rand >= t).mean()),
        random_pair_quantiles=_quantiles(rand), positive_quantiles=_quantiles(allpos), curve=curve,
        edits=describe(), seconds=time.perf_counter() - t0,
        pixel_floor=floor if band else None, pixel_nearest_floor=nearest_floor if band else None,
        pixel_band_copies=band[0] if band else 0,
        pixel_band_passed=len(band[1]) if band else 0, pixel_recall=band[2] if band else None,
        pixel_recall_by_edit=band[3] if band else None, pixel_band_passed_scores=band[1] if band else None,
        pixel_pass_above=pass_above)
