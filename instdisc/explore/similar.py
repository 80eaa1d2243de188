"""Similar shots: the third tier, burst-like look-alikes (the same scene shot twice), never copies.

Photo tools list these apart from duplicates because neither file is redundant: a user picks
the better shot, nothing is suggested for removal. A similar pair scores at or above the
similar threshold and below the near-duplicate one, between images that no exact or near group
holds; pairs are joined with the same chain guard as the near tier (:mod:`.grouping`).

``auto`` needs no calibration: it is the 99th percentile of the nearest-neighbour scores
(column 0 of the kNN graph) of the images outside the duplicate groups -- the 1 % of those
images whose most similar look-alike is closest -- kept below the near threshold. Unlike
copies, look-alikes have no edit model to calibrate against, so a fixed share of the
collection is the honest default; a number overrides it, ``off`` drops the tier.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import ExploreError
from .grouping import Group, chain_guard, group_duplicates, parse_similarity
from .neighbours import KnnGraph

SIMILAR = "similar"  # the tier's name (next to .tiers.EXACT and .tiers.NEAR)
AUTO, OFF = "auto", "off"
DEFAULT = AUTO  # --similar
PERCENTILE = 99.0  # auto: the 1 % of images (outside duplicate groups) with the closest look-alike
MARGIN = 0.0025  # auto stays at least this far below the near threshold (one step of calibrate.GRID)


@dataclass
class SimilarTier:
    """The similar-shot groups and how their threshold was set (cached per parameters by the explorer)."""

    requested: str  # "auto", "off" or the number as given
    threshold: float | None  # None: the tier is off (or had nothing to be computed from)
    guard: float | None
    chosen_by: str  # in words, for the printed line and groups.json
    near_threshold: float | None = None  # similar pairs score below this
    groups: list[Group] = field(default_factory=list)

    def __post_init__(self) -> None:
        # read back from the cache's JSON, the groups are plain dicts
        self.groups = [g if isinstance(g, Group) else Group(**g) for g in self.groups]

    @classmethod
    def off(cls) -> SimilarTier:
        return cls(OFF, None, None, "off")

    def rule(self) -> str:
        if self.threshold is None:
            return self.chosen_by
        return (f"cosine >= {self.threshold:.4f} and < {self.near_threshold:.4f}, every two members >= "
                f"{self.guard:.4f}, outside exact/near groups ({self.chosen_by})")


def parse_similar(value: str | float | None) -> float | str:
    """'auto', 'off' or a cosine similarity in (0, 1]; a clear error otherwise."""
    return DEFAULT if value is None else parse_similarity(value, "--similar", (AUTO, OFF), 0.85)


def auto_threshold(graph: KnnGraph, free: np.ndarray, near: float) -> tuple[float | None, str]:
    """The :data:`PERCENTILE` of the nearest-neighbour scores of the ``free`` rows (a boolean mask), kept
    :data:`MARGIN` below ``near``; None with the reason where there is nothing to compute it from."""
    nn = graph.scores[free, 0]
    nn = nn[np.isfinite(nn)]
    if len(nn) < 2:
        return None, "auto: fewer than 2 images outside the duplicate groups"
    p = float(np.percentile(nn, PERCENTILE))
    words = f"auto: {PERCENTILE:g}th percentile of the nearest-neighbour scores outside the duplicate groups"
    if p >= near - MARGIN:
        p = near - MARGIN
        words += f", kept {MARGIN:g} below the near threshold"
    if p <= 0.0:
        return None, words + ": not above 0, no similar tier"
    return p, words


def similar_tier(graph: KnnGraph, vectors: np.ndarray, taken: set[int], near: float,
                 request: float | str = DEFAULT, guard: float | None = None) -> SimilarTier:
    """Similar-shot groups among the rows not in ``taken`` (the exact and near groups' rows), pairs scoring
    in [similar threshold, ``near``), joined with the chain guard (default 2 s^2 - 1 of the similar threshold)."""
    request = parse_similar(request)
    if request == OFF:
        return SimilarTier.off()
    free = np.ones(len(vectors), dtype=bool)
    free[list(taken)] = False
    if request == AUTO:
        s, words = auto_threshold(graph, free, near)
        if s is None:
            return SimilarTier(AUTO, None, None, words, near)
    else:
        s, words = float(request), "given"
        if s >= near:
            raise ExploreError(f"--similar ({s:g}) must be below the near-duplicate threshold ({near:.4f})")
    g = chain_guard(s) if guard is None else float(guard)
    groups = group_duplicates(graph, vectors, s, g, below=near, allowed=free)
    for group in groups:
        group.tier = SIMILAR
    return SimilarTier(str(request), s, g, words, near, groups)
