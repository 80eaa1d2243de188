"""How many of a collection's close pairs are copies: a two-component fit of its kNN-graph scores.

Every directed edge of the kNN graph above ``t_lo`` is either a copy edge (an image and its
copy; the collection's own duplicates included) or an unrelated one (a look-alike). Counted per
image, the edges scoring >= t are ``F(t) = q R(t) + F0(t)``: ``q`` copy edges per image (twice
the share of images that have one copy), of which the share ``R(t)`` scores >= t, plus ``F0(t)``
unrelated edges. ``R`` is known from synthetic edits (:mod:`.calibrate`); ``q`` and ``F0`` are
fitted to the graph's edge counts in bins of ``BIN`` by Poisson maximum likelihood, with
``log F0`` a decreasing, concave quadratic in t (the tail of similarity scores falls faster and
faster towards 1). The shape of ``R`` — concentrated near 1 — is what separates the two:
counting every edge above t as false (as a fixed-prevalence estimate does) makes a folder's
only duplicate look like noise and hides it.

Edges scoring >= ``IDENTICAL`` are the same picture to the embedding: they are left out of the
fit (no synthetic edit scores there) and reported as identical pairs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize

from .errors import ExploreError

BIN = 0.0025  # width of the score bins the fit counts edges in
IDENTICAL = 0.9999  # scores at or above this are identical to the embedding: not fitted
LOW_QUANTILE = 50  # the fit starts at this percentile of the images' nearest-neighbour scores ...
KTH_QUANTILE = 99  # ... and no lower than this percentile of their k-th neighbour scores (graph complete above)
POSITIVE_FLOOR = 1e-4  # copy-component mass spread over every bin (a copy may score where no sample did)


@dataclass
class MixtureFit:
    """``F(t) = q R(t) + F0(t)`` for t >= ``t_lo``; ``F0(t) = exp(a + b u + c u^2) - exp(a + b + c)``,
    ``u = (t - t_lo) / (1 - t_lo)`` (zero at 1)."""

    copy_edges_per_image: float  # q
    a: float
    b: float
    c: float
    t_lo: float
    edges_fitted: int
    identical_edges: int

    def null(self, t: np.ndarray | float) -> np.ndarray:
        """F0(t): unrelated edges per image scoring >= t (clamped to the fitted range)."""
        u = (np.clip(np.asarray(t, dtype=np.float64), self.t_lo, 1.0) - self.t_lo) / (1.0 - self.t_lo)
        return np.maximum(np.exp(self.a + self.b * u + self.c * u * u) - np.exp(self.a + self.b + self.c), 0.0)

    def to_dict(self) -> dict:
        return asdict(self)


def positive_tail(positives: np.ndarray, t: np.ndarray) -> np.ndarray:
    """R(t): share of ``positives`` scoring >= t."""
    s = np.sort(np.asarray(positives, dtype=np.float64))
    return (s.size - np.searchsorted(s, t, side="left")) / max(1, s.size)


def fit_range_start(scores: np.ndarray) -> float:
    """Where the fit starts: the median nearest-neighbour score, raised to where the k-graph is complete."""
    first = np.where(np.isfinite(scores[:, 0]), scores[:, 0], -1.0)
    last = np.where(np.isfinite(scores[:, -1]), scores[:, -1], -1.0)
    lo = max(float(np.percentile(first, LOW_QUANTILE)), float(np.percentile(last, KTH_QUANTILE)))
    return float(np.clip(np.floor(lo / BIN) * BIN, 0.0, 1.0 - 8 * BIN))


def fit_mixture(scores: np.ndarray, positives: np.ndarray, t_lo: float | None = None) -> MixtureFit:
    """Fit ``q`` and ``F0`` to the kNN ``scores`` (N, k), copy shape from ``positives`` (see the module doc)."""
    scores = np.asarray(scores, dtype=np.float32)  # (N, k): float32 keeps a 1M x 32 graph at 128 MB
    if scores.ndim != 2 or len(scores) < 2:
        raise ExploreError(f"need an (N >= 2, k) score matrix, got {scores.shape}")
    positives = np.asarray(positives, dtype=np.float64)
    if positives.size == 0:
        raise ExploreError("need at least one synthetic-copy score to fit the copy component")
    n = len(scores)
    t_lo = fit_range_start(scores) if t_lo is None else float(t_lo)
    flat = scores[np.isfinite(scores)].ravel()
    identical = int((flat >= IDENTICAL).sum())
    fitted = flat[(flat >= t_lo) & (flat < IDENTICAL)]
    edges = np.append(np.arange(t_lo, IDENTICAL, BIN), IDENTICAL)
    counts = np.histogram(fitted, edges)[0].astype(np.float64)
    above = float((positives >= t_lo).mean())  # R(t_lo): copies scoring below the range are not counted
    pmass = np.histogram(np.minimum(positives[positives >= t_lo], edges[-1] - 1e-9), edges)[0].astype(np.float64)
    pmass = (pmass + POSITIVE_FLOOR * max(1, positives.size)) / max(1e-12, pmass.sum() + POSITIVE_FLOOR * max(
        1, positives.size) * len(pmass)) * max(above, 1e-6)
    u = (edges - t_lo) / (1.0 - t_lo)

    def null_tail(a: float, b: float, c: float) -> np.ndarray:
        return np.exp(a + b * u + c * u * u) - np.exp(a + b + c)

    def nll(x: np.ndarray) -> float:
        logq, a, b, c = x
        tail = null_tail(a, b, c)
        mu = n * (np.exp(logq) * pmass + np.maximum(tail[:-1] - tail[1:], 0.0)) + 1e-12
        return float((mu - counts * np.log(mu)).sum())

    total = max(1.0, counts.sum()) / n
    start_b = -np.log(max(2.0, counts.sum()) / max(1.0, counts[len(counts) // 2:].sum()))
    best = None
    for logq0 in (np.log(max(1e-6, 0.5 * total)), np.log(1e-4)):
        res = minimize(nll, np.array([logq0, np.log(total), start_b, -1.0]), method="L-BFGS-B",
                       bounds=[(np.log(1e-7), np.log(max(2.0, 4 * total))), (-30.0, 10.0), (-200.0, 0.0),
                               (-200.0, 0.0)])
        if best is None or res.fun < best.fun:
            best = res
    logq, a, b, c = best.x
    return MixtureFit(float(np.exp(logq)), float(a), float(b), float(c), t_lo, int(fitted.size), identical)
