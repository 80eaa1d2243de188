"""Exact duplicates: the same file twice (same bytes) or the same picture saved twice (same pixels).

The tier below the near-duplicates: no threshold, no embedding judgement. Same bytes come from
the index's SHA-256 of every file; same pixels are checked only where the embedding already says
"identical" (a kNN edge scoring >= :data:`.mixture.IDENTICAL`) and the two pictures have the same
size, so only those few pairs are decoded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .collection import Collection
from .mixture import IDENTICAL
from .neighbours import KnnGraph

EXACT, NEAR = "exact", "near"  # the tiers a duplicate group is reported in


@dataclass
class ExactClasses:
    """Row -> class id: rows with the same id hold the same bytes or the same pixels."""

    owner: np.ndarray  # (N,) int64; a row alone in its class has its own row number
    same_bytes_pairs: int
    same_pixels_pairs: int  # decoded and equal, bytes different

    def covers(self, rows: list[int]) -> bool:
        """All of ``rows`` are exact copies of each other."""
        return len({int(self.owner[r]) for r in rows}) == 1


def _find(parent: np.ndarray, x: int) -> int:
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = int(parent[x])
    return x


def _union(parent: np.ndarray, a: int, b: int) -> bool:
    ra, rb = _find(parent, a), _find(parent, b)
    if ra == rb:
        return False
    parent[max(ra, rb)] = min(ra, rb)
    return True


def _same_pixels(coll: Collection, a: int, b: int) -> bool:
    try:
        x, y = np.asarray(coll.load_image(a)), np.asarray(coll.load_image(b))
    except (OSError, ValueError, KeyError):
        return False
    return x.shape == y.shape and bool(np.array_equal(x, y))


def exact_classes(coll: Collection, graph: KnnGraph) -> ExactClasses:
    """Same-bytes classes from the stored hashes, joined by same-pixel pairs among identical-scoring edges."""
    n = len(coll)
    parent = np.arange(n, dtype=np.int64)
    by_hash: dict[str, int] = {}
    same_bytes = 0
    for r, h in enumerate(coll.sha256 or [None] * n):
        if h is None:
            continue
        if h in by_hash:
            same_bytes += _union(parent, by_hash[h], r)
        else:
            by_hash[h] = r
    same_pixels = 0
    rows, cols = np.nonzero(graph.scores >= IDENTICAL)
    for a, j in zip(rows.tolist(), cols.tolist(), strict=True):
        b = int(graph.neighbours[a, j])
        if b < 0 or a > b or _find(parent, a) == _find(parent, b):
            continue
        if (coll.widths[a], coll.heights[a]) != (coll.widths[b], coll.heights[b]):
            continue
        if _same_pixels(coll, a, b):
            same_pixels += _union(parent, a, b)
    owner = np.array([_find(parent, r) for r in range(n)], dtype=np.int64)
    return ExactClasses(owner, same_bytes, same_pixels)


def exact_only_groups(classes: ExactClasses, grouped: set[int]) -> list[list[int]]:
    """Exact classes (2+ rows) none of whose rows the near-duplicate grouping placed."""
    members: dict[int, list[int]] = {}
    for r, o in enumerate(classes.owner.tolist()):
        members.setdefault(o, []).append(r)
    return [rows for rows in members.values() if len(rows) > 1 and not grouped & set(rows)]
