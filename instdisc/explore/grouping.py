"""Duplicate groups from the kNN graph: pairs above a threshold, joined with a chain guard.

Plain connected components are what most duplicate finders do, and they fail on chains:
a~b, b~c, c~d each above the threshold while a and d are unrelated puts a..d in one group,
and on a large collection one chain can swallow thousands of images. Here pairs are joined
best first and two groups merge only if *every* cross pair scores at least the guard. The
default guard, ``2 t^2 - 1``, is the cosine of twice the threshold's angle: two edited copies
of one original, each within the threshold of it, are always at least that similar (triangle
inequality on the sphere), so real copy groups pass and a chain breaks after two links.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .errors import ExploreError
from .neighbours import KnnGraph

STATS_MAX = 512  # pairwise statistics of a group use at most this many members


def parse_similarity(value: str | float, flag: str, words: tuple[str, ...], example: float) -> float | str:
    """One of ``words`` (lower-cased) or a cosine similarity in (0, 1] for ``flag``; a clear error otherwise."""
    if isinstance(value, str) and value.strip().lower() in words:
        return value.strip().lower()
    try:
        t = float(value)
    except (TypeError, ValueError):
        named = ", ".join(f"'{w}'" for w in words)
        raise ExploreError(f"{flag} must be {named} or a similarity such as {example}, got {value!r}") from None
    if not 0.0 < t <= 1.0:
        raise ExploreError(f"{flag} must be in (0, 1] (cosine similarity), got {t}")
    return t


def chain_guard(threshold: float) -> float:
    """The default guard for ``threshold`` (see the module doc)."""
    return 2.0 * threshold * threshold - 1.0


@dataclass
class Group:
    """One duplicate group; ``rows`` are collection rows, most connected first."""

    rows: list[int]
    min_score: float  # the least similar pair (>= the guard)
    mean_score: float
    max_score: float
    tier: str = "near"  # "exact" where every member is the same bytes or pixels (.tiers)

    @property
    def size(self) -> int:
        return len(self.rows)

    def to_dict(self) -> dict:
        return asdict(self)


def pair_edges(graph: KnnGraph, threshold: float, below: float | None = None, allowed: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Undirected edges (a < b) scoring >= threshold (and < ``below``; both ends ``allowed``, a boolean mask),
    best first (ties by row numbers: deterministic)."""
    n, k = graph.neighbours.shape
    src = np.repeat(np.arange(n, dtype=np.int64), k)
    dst = graph.neighbours.ravel()
    s = graph.scores.ravel()
    keep = (dst >= 0) & (s >= threshold)
    if below is not None:
        keep &= s < below
    if allowed is not None:
        keep &= allowed[src] & allowed[np.maximum(dst, 0)]
    a, b, s = np.minimum(src[keep], dst[keep]), np.maximum(src[keep], dst[keep]), s[keep]
    pair = a * n + b
    pair, first = np.unique(pair, return_index=True)
    a, b, s = a[first], b[first], s[first]
    order = np.lexsort((b, a, -s))
    return a[order], b[order], s[order]


def group_duplicates(graph: KnnGraph, vectors: np.ndarray, threshold: float, guard: float | None = None,
                     below: float | None = None, allowed: np.ndarray | None = None,
                     verified: np.ndarray | None = None) -> list[Group]:
    """Groups of rows whose pairs score >= ``threshold``, any two members >= ``guard``; largest and
    tightest first. ``below`` and ``allowed`` (a boolean row mask) restrict the joining pairs, which is how
    the similar tier (:mod:`.similar`) groups what lies under the near tier among the rows it left free.
    ``verified`` (P, 2) rows are pairs known to be copies below the threshold (the pixel check,
    :mod:`.pixelcheck`): they join after every pair above it, and count as passing the guard."""
    if not -1.0 <= threshold <= 1.0:
        raise ExploreError(f"threshold must be a cosine similarity in [-1, 1], got {threshold}")
    guard = chain_guard(threshold) if guard is None else float(guard)
    if guard > threshold:
        raise ExploreError(f"the chain guard ({guard}) must not exceed the threshold ({threshold})")
    if len(vectors) != len(graph.neighbours):
        raise ExploreError(f"graph has {len(graph.neighbours)} rows, vectors {len(vectors)}")
    owner: dict[int, int] = {}  # row -> group key
    members: dict[int, list[int]] = {}
    ea, eb, _ = pair_edges(graph, threshold, below, allowed)
    known: set[tuple[int, int]] = set()
    if verified is not None and len(verified):
        pairs = np.sort(np.asarray(verified, dtype=np.int64).reshape(-1, 2), axis=1)
        known = {(int(a), int(b)) for a, b in pairs}
        ea, eb = np.concatenate([ea, pairs[:, 0]]), np.concatenate([eb, pairs[:, 1]])
    for a, b in zip(ea.tolist(), eb.tolist(), strict=True):
        ga, gb = owner.get(a, a), owner.get(b, b)
        if ga == gb:
            continue
        ma, mb = members.get(ga, [ga]), members.get(gb, [gb])
        sim = vectors[ma] @ vectors[mb].T
        if sim.min() < guard and not all((min(ma[i], mb[j]), max(ma[i], mb[j])) in known
                                         for i, j in zip(*np.nonzero(sim < guard), strict=True)):
            continue
        if len(ma) < len(mb):
            ga, gb, ma, mb = gb, ga, mb, ma
        ma.extend(mb)
        members[ga] = ma
        members.pop(gb, None)
        for r in mb:
            owner[r] = ga
        owner[ga] = ga
    groups = [group_stats(rows, vectors) for rows in members.values()]
    groups.sort(key=lambda g: (-g.size, -g.mean_score, g.rows[0]))
    return groups


def group_stats(rows: list[int], vectors: np.ndarray) -> Group:
    """A group of ``rows`` with its pair statistics, the most connected member first."""
    sub = vectors[rows[:STATS_MAX]]
    sim = sub @ sub.T
    order = np.argsort(-(sim.sum(axis=1)), kind="stable")  # most connected (the likely original) first
    iu = np.triu_indices(len(sub), 1)
    pairs = sim[iu]
    ranked = [rows[i] for i in order] + rows[STATS_MAX:]
    return Group(ranked, float(pairs.min()), float(pairs.mean()), float(pairs.max()))
