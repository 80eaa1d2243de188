"""``--threshold auto``: a duplicate threshold calibrated on the collection itself.

True copies: every sampled image is edited (:mod:`instdisc.explore.edits`: crop, colour, JPEG, resize),
re-embedded, and scored against its own stored vector -- what a copy added to the index would
score against its original. Unrelated images: every image's nearest neighbours in the kNN
graph (the pairs that really compete with a copy; CIFAR-sized collections have many
look-alikes that random pairs never show) plus a random-pair sample for the histogram.

For a threshold t, recall R(t) is the share of copies scoring >= t and F(t) the mean number of
other images an image scores >= t with, counted over every row of the kNN graph (exact, and
free: the graph is already made). F is a tail count -- at a useful threshold one image in a
hundred has such a neighbour -- so estimating it from the sampled images alone (as this module
first did) sees a handful of events in 200 rows and can miss the false pairs altogether.
If a share ``prevalence`` of the images had one copy, the finder would report
``prevalence * N * R`` true pairs and ``N * F / 2`` false ones, so the expected precision is
``prevalence * R / (prevalence * R + F / 2)``. ``auto`` takes the threshold with the highest
recall whose precision reaches ``target_precision``. Real duplicates (the copies' own edges
too) count as false in F, so the estimate errs low where copies are common; where they are rare
it came within 0.02-0.09 above the measured group-level precision on CIFAR-10 (docs/explore.md).
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass

import numpy as np

from .collection import Collection
from .edits import KINDS, describe, edit
from .errors import ExploreError
from .neighbours import KnnGraph

SAMPLES = 200  # images edited (x 4 edits)
TARGET_PRECISION = 0.9
PREVALENCE = 0.05  # share of images with a copy; ciFAIR: ~3 % of CIFAR-10 test images have one in train
RANDOM_PAIRS = 20_000
GRID = np.round(np.arange(0.0, 1.0, 0.0025), 4)  # candidate thresholds
EMBED_BATCH = 256


@dataclass
class Calibration:
    """The chosen threshold, its expected precision/recall and the evidence behind them."""

    threshold: float
    precision: float
    recall: float
    reached: bool  # precision >= target at the chosen threshold
    target_precision: float
    prevalence: float
    samples: int
    unreadable: int
    recall_by_edit: dict[str, float]
    false_pairs_per_image: float  # F(threshold), from the kNN graph
    random_pair_fpr: float  # share of random pairs >= threshold
    random_pair_quantiles: dict[str, float]
    positive_quantiles: dict[str, float]
    curve: list[dict[str, float]]  # every 0.01: threshold, precision, recall, false_pairs_per_image
    edits: dict[str, str]
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        return cls(**d)

    def summary(self) -> str:
        verdict = "" if self.reached else f" (target precision {self.target_precision:.2f} not reachable)"
        return (f"auto threshold {self.threshold:.4f}: expected precision {self.precision:.3f}, recall "
                f"{self.recall:.3f}{verdict} -- {self.samples} sampled images x {len(self.recall_by_edit)} edits, "
                f"if {self.prevalence:.0%} of the images have a copy")


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


def positive_scores(coll: Collection, rows: list[int], images: list, seed: int) -> dict[str, np.ndarray]:
    """Per edit kind: cosine of each edited image's embedding with its original's stored vector."""
    out = {}
    for j, kind in enumerate(KINDS):
        edited = [edit(img, kind, random.Random(seed * 1_000_003 + r * len(KINDS) + j))
                  for r, img in zip(rows, images, strict=True)]
        vecs = np.concatenate([coll.embed(edited[i:i + EMBED_BATCH]) for i in range(0, len(edited), EMBED_BATCH)])
        out[kind] = np.einsum("ij,ij->i", vecs, coll.vectors[rows]).astype(np.float32)
    return out


def false_pairs_per_image(scores: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """F(t) for each t of ``grid``: the mean count per row of ``scores`` (N, k) that are >= t."""
    flat = np.sort(scores[np.isfinite(scores)].ravel())
    return (flat.size - np.searchsorted(flat, grid, side="left")) / len(scores)


def expected_precision(recall: np.ndarray, false_per_image: np.ndarray, prevalence: float) -> np.ndarray:
    """``prevalence * R / (prevalence * R + F / 2)`` (1 where nothing is reported)."""
    tp = prevalence * recall
    denom = tp + false_per_image / 2
    return np.where(denom > 0, tp / np.where(denom > 0, denom, 1), 1.0)


def calibrate(coll: Collection, graph: KnnGraph, samples: int = SAMPLES, target_precision: float = TARGET_PRECISION,
              prevalence: float = PREVALENCE, random_pairs: int = RANDOM_PAIRS, seed: int = 0) -> Calibration:
    """Choose the duplicate threshold for ``coll`` (see the module doc)."""
    if not 0 < target_precision < 1:
        raise ExploreError(f"target precision must be in (0, 1), got {target_precision}")
    if not 0 < prevalence <= 1:
        raise ExploreError(f"prevalence must be in (0, 1], got {prevalence}")
    if samples < 1:
        raise ExploreError(f"calibration needs at least 1 sampled image, got {samples}")
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    rows, images, unreadable = _sample_images(coll, min(samples, len(coll)), rng)
    if not rows:
        raise ExploreError(f"none of the {unreadable} images tried could be read: cannot calibrate; "
                           "pass --threshold with a number")
    pos = positive_scores(coll, rows, images, seed)
    allpos = np.concatenate(list(pos.values()))
    recall = (allpos[None, :] >= GRID[:, None]).mean(axis=1)
    false = false_pairs_per_image(graph.scores, GRID)  # every row (N, k) of the graph
    prec = expected_precision(recall, false, prevalence)
    ok = np.flatnonzero(prec >= target_precision)
    reached = len(ok) > 0
    if reached:
        best = ok[np.lexsort((-GRID[ok], -recall[ok]))[0]]  # highest recall, then the higher threshold
    else:
        best = int(np.argmax(prec * recall + 1e-9 * GRID))
    t = float(GRID[best])
    a = rng.integers(0, len(coll), random_pairs)
    b = (a + rng.integers(1, len(coll), random_pairs)) % len(coll)
    rand = np.einsum("ij,ij->i", coll.vectors[a], coll.vectors[b])
    step = int(round(0.01 / (GRID[1] - GRID[0])))
    curve = [{"threshold": float(GRID[i]), "precision": float(prec[i]), "recall": float(recall[i]),
              "false_pairs_per_image": float(false[i])} for i in range(0, len(GRID), step)]
    return Calibration(
        threshold=t, precision=float(prec[best]), recall=float(recall[best]), reached=reached,
        target_precision=target_precision, prevalence=prevalence, samples=len(rows), unreadable=unreadable,
        recall_by_edit={k: float((v >= t).mean()) for k, v in pos.items()},
        false_pairs_per_image=float(false[best]), random_pair_fpr=float((rand >= t).mean()),
        random_pair_quantiles=_quantiles(rand), positive_quantiles=_quantiles(allpos), curve=curve,
        edits=describe(), seconds=time.perf_counter() - t0)
