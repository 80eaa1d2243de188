"""Clusters of the collection: spherical FAISS k-means, the most central images of each, and how
well the clusters match the labels where there are some (purity, NMI).

``k="auto"`` picks k from the data: the candidate with the best mean silhouette (cosine
distance) on a seeded sample. The candidates and their scores are kept in the result, so the
choice can be checked.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import faiss
import numpy as np

from .errors import ExploreError

CANDIDATES = (4, 8, 16, 32, 64, 128)  # k tried by "auto" (those < N / 10 and fitting the sample)
SILHOUETTE_SAMPLE = 4000  # a (4000, 4000) distance matrix: 64 MB
POINTS_PER_CENTROID = 39  # FAISS k-means wants at least this many training points per centroid
NITER = 25
CENTRAL = 12  # most central members kept per cluster


@dataclass
class Clustering:
    """Cluster ``c`` holds the rows with ``assignment == c``; clusters are numbered by size, largest first."""

    k: int
    assignment: np.ndarray  # (N,) int32
    centroids: np.ndarray  # (k, d) float32 unit rows
    sizes: list[int]
    central: list[list[int]]  # per cluster: rows nearest its centroid, nearest first
    chosen_by: str  # "given" | "silhouette"
    k_scores: dict[str, float] = field(default_factory=dict)  # "auto": k -> mean silhouette
    purity: float | None = None
    nmi: float | None = None
    labelled: int = 0  # entries with a label (the ones purity / NMI are computed on)
    majority: list[tuple[str, float] | None] = field(default_factory=list)  # per cluster: (label, share)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        del d["assignment"], d["centroids"]
        return d


def _kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    km = faiss.Kmeans(x.shape[1], k, niter=NITER, seed=seed, spherical=True, verbose=False)
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    return km.centroids


def _assign(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(centroids)
    s, a = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return a[:, 0].astype(np.int32), s[:, 0]


def silhouette(x: np.ndarray, assignment: np.ndarray) -> float:
    """Mean silhouette with cosine distance (unit rows), over points whose cluster has >= 2 members."""
    dist = 1.0 - x @ x.T
    labels = np.unique(assignment)
    if len(labels) < 2:
        return -1.0
    onehot = (assignment[:, None] == labels[None, :]).astype(np.float32)
    counts = onehot.sum(axis=0)
    sums = dist @ onehot  # (n, clusters): summed distance to each cluster
    own = np.searchsorted(labels, assignment)
    n_own = counts[own]
    a = sums[np.arange(len(x)), own] / np.maximum(n_own - 1, 1)
    other = sums / counts[None, :]
    other[np.arange(len(x)), own] = np.inf
    b = other.min(axis=1)
    s = (b - a) / np.maximum(np.maximum(a, b), 1e-12)
    return float(s[n_own > 1].mean())


def choose_k(vectors: np.ndarray, seed: int = 0) -> tuple[int, dict[str, float]]:
    """The candidate k with the best sample silhouette, and every candidate's score."""
    n = len(vectors)
    rng = np.random.default_rng(seed)
    sample = vectors[np.sort(rng.choice(n, min(n, SILHOUETTE_SAMPLE), replace=False))]
    cands = [k for k in CANDIDATES if k < n / 10 and k * POINTS_PER_CENTROID <= len(sample)] or [2]
    scores = {}
    for k in cands:
        a, _ = _assign(sample, _kmeans(sample, k, seed))
        scores[str(k)] = silhouette(sample, a)
    best = max(scores, key=lambda k: (scores[k], -int(k)))
    return int(best), scores


def label_agreement(assignment: np.ndarray, labels: list[str | None]) -> tuple[float, float, int]:
    """(purity, NMI with arithmetic-mean normalisation, entries used) over the labelled entries."""
    has = np.array([x is not None for x in labels])
    if not has.any():
        raise ExploreError("no entry has a label: purity and NMI need labels")
    names, lab = np.unique(np.array([x for x in labels if x is not None]), return_inverse=True)
    clu = np.unique(assignment[has], return_inverse=True)[1]
    table = np.zeros((clu.max() + 1, len(names)), np.float64)
    np.add.at(table, (clu, lab), 1)
    n = table.sum()
    purity = table.max(axis=1).sum() / n
    p = table / n
    pc, pl = p.sum(axis=1), p.sum(axis=0)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / (pc[:, None] * pl[None, :])[nz])).sum())
    hc = -float((pc[pc > 0] * np.log(pc[pc > 0])).sum())
    hl = -float((pl[pl > 0] * np.log(pl[pl > 0])).sum())
    nmi = mi / ((hc + hl) / 2) if hc + hl > 0 else 1.0
    return float(purity), float(nmi), int(n)


def cluster(vectors: np.ndarray, k: int | str = "auto", labels: list[str | None] | None = None, seed: int = 0
            ) -> Clustering:
    """k-means over ``vectors`` (unit rows); ``k`` an int or "auto"."""
    t0 = time.perf_counter()
    n = len(vectors)
    scores: dict[str, float] = {}
    if k == "auto":
        k, scores = choose_k(vectors, seed)
        how = "silhouette"
    else:
        try:
            k = int(k)
        except (TypeError, ValueError):
            raise ExploreError(f"--clusters must be a whole number or 'auto', got {k!r}") from None
        how = "given"
    if not 2 <= k <= n:
        raise ExploreError(f"k must be between 2 and the number of entries ({n}), got {k}")
    trained = _kmeans(vectors, k, seed)
    raw = _assign(vectors, trained)[0]
    rank = np.argsort(-np.bincount(raw, minlength=k), kind="stable")  # renumber: largest cluster first
    renum = np.empty(k, np.int32)
    renum[rank] = np.arange(k)
    assignment = renum[raw]
    centroids = np.ascontiguousarray(trained[rank], dtype=np.float32)
    sim = np.einsum("ij,ij->i", vectors, centroids[assignment])
    central = []
    for c in range(k):
        rows = np.flatnonzero(assignment == c)
        central.append(rows[np.argsort(-sim[rows], kind="stable")[:CENTRAL]].tolist())
    out = Clustering(k=k, assignment=assignment, centroids=centroids,
                     sizes=np.bincount(assignment, minlength=k).tolist(), central=central, chosen_by=how,
                     k_scores=scores)
    if labels is not None and any(x is not None for x in labels):
        out.purity, out.nmi, out.labelled = label_agreement(assignment, labels)
        lab = np.array(["" if x is None else x for x in labels])
        for c in range(k):
            names, counts = np.unique(lab[(assignment == c) & (lab != "")], return_counts=True)
            out.majority.append((str(names[counts.argmax()]), float(counts.max() / counts.sum())) if len(names)
                                else None)
    out.seconds = time.perf_counter() - t0
    return out
