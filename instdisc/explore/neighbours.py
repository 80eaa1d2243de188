"""The k-nearest-neighbour graph of a collection: every pair the duplicate finder can consider.

Computed once per index (it is the expensive part) and cached; grouping at any threshold is
then a cheap pass over its edges, which is what lets the app's threshold slider regroup
instantly. Exact FAISS search up to ``EXACT_MAX`` vectors; above it an IVF index built here
(from the vectors, so it does not depend on how the search index was built), because exact
all-pairs search grows as N^2 (1M x 1M on 2 cores: tens of minutes).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import faiss
import numpy as np

from .errors import ExploreError

K = 32  # neighbours kept per entry; groups larger than K+1 still form through chains of kNN links
EXACT_MAX = 200_000  # exact search up to this many vectors (50k: ~10 s on 2 cores)
NPROBE = 16  # IVF lists visited per query above EXACT_MAX
CHUNK = 16_384  # queries per FAISS call (bounds the (chunk, k) result buffers)


@dataclass
class KnnGraph:
    """Row ``i``: the ``k`` nearest other rows of row ``i`` (-1 where fewer exist), best first."""

    neighbours: np.ndarray  # (N, k) int64 row numbers, not ids
    scores: np.ndarray  # (N, k) float32 cosine similarities (-inf for missing)
    method: str  # "exact" | "ivf<nlist>,nprobe<p>"
    seconds: float


def _ivf(vectors: np.ndarray, seed: int) -> tuple[faiss.Index, str]:
    n, d = vectors.shape
    nlist = 1 << max(4, int(round(np.log2(4 * np.sqrt(n)))))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    sample = vectors[np.sort(rng.choice(n, min(n, 64 * nlist), replace=False))]
    index.train(sample)
    index.add(vectors)
    index.nprobe = NPROBE
    return index, f"ivf{nlist},nprobe{NPROBE}"


def knn_graph(vectors: np.ndarray, k: int = K, exact_max: int = EXACT_MAX, seed: int = 0) -> KnnGraph:
    """The kNN graph of unit rows by inner product, self excluded."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(vectors)
    if vectors.ndim != 2 or n < 2:
        raise ExploreError(f"need at least 2 vectors to look for duplicates, got {vectors.shape}")
    if k < 1:
        raise ExploreError(f"k must be >= 1, got {k}")
    k = min(k, n - 1)
    t0 = time.perf_counter()
    if n <= exact_max:
        index: faiss.Index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        method = "exact"
    else:
        index, method = _ivf(vectors, seed)
    nbr = np.empty((n, k), np.int64)
    sc = np.empty((n, k), np.float32)
    for start in range(0, n, CHUNK):
        q = vectors[start:start + CHUNK]
        s, i = index.search(q, k + 1)
        own = i == np.arange(start, start + len(q))[:, None]
        own[~own.any(axis=1), -1] = True  # self not returned (ties, IVF miss): drop the last instead
        keep = ~own
        nbr[start:start + len(q)] = i[keep].reshape(len(q), k)
        sc[start:start + len(q)] = s[keep].reshape(len(q), k)
    sc[nbr < 0] = -np.inf
    return KnnGraph(nbr, sc, method, time.perf_counter() - t0)
