"""The exploration jobs of one collection, each computed once and cached (per index generation).

What the CLI and the app call: ``Explorer.open(index_dir)`` (or ``Explorer.for_index(si)``
for an already opened index) then ``graph()``, ``calibration()``, ``duplicates(threshold)``,
``clusters(k)`` and ``map(method)``. The exact and near groups are not cached: from the cached
kNN graph they take milliseconds to seconds, which lets the app regroup on every slider move.
The similar tier (:mod:`.similar`) is cached per its parameters, near threshold included.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

from .cache import ResultCache
from .calibrate import PREVALENCE, SAMPLES, TARGET_PRECISION, Calibration, calibrate, expected_with_pixel_check
from .clusters import Clustering, cluster
from .collection import STORED, Collection, Embedding, from_index
from .embeddings import EMBEDDING, INDEX, with_embedding
from .grouping import Group, chain_guard, group_duplicates, group_stats, parse_similarity
from .neighbours import EXACT_MAX, K, KnnGraph, knn_graph
from .pixelcheck import ABOVE_SAMPLE, MAX_PAIRS, AboveCheck, Band, PixelCheck, check_above, check_band
from .pixelcheck import THRESHOLD as PIXEL_THRESHOLD
from .projection import Projection, project
from .similar import DEFAULT as SIMILAR_DEFAULT
from .similar import SIMILAR, SimilarTier, parse_similar, similar_tier
from .tiers import EXACT, NEAR, ExactClasses, exact_classes, exact_only_groups


@dataclass
class CalibrationOptions:
    """What ``--threshold auto`` is calibrated for (defaults: :mod:`instdisc.explore.calibrate`)."""

    samples: int = SAMPLES
    target_precision: float = TARGET_PRECISION
    prevalence: float | None = PREVALENCE  # None: estimated from the collection


@dataclass
class TierCount:
    """What one tier holds; ``pairs`` counts every two members of its groups."""

    groups: int
    images: int
    pairs: int
    files_to_remove: int
    threshold: float | None  # None for the exact tier (no threshold) and a similar tier that is off
    rule: str

    def to_dict(self) -> dict:
        return asdict(self)


def _count(groups: list[Group], threshold: float | None, rule: str, removable: bool) -> TierCount:
    return TierCount(len(groups), sum(g.size for g in groups), sum(g.size * (g.size - 1) // 2 for g in groups),
                     sum(g.size - 1 for g in groups) if removable else 0, threshold, rule)


@dataclass
class Duplicates:
    """Duplicate groups (exact and near) at one threshold, the similar shots below it, and the calibration
    behind an ``auto`` threshold."""

    threshold: float
    guard: float
    groups: list[Group]  # exact and near: the groups with a file to keep and files to remove
    calibration: Calibration | None = None
    graph_method: str = ""
    extra: dict = field(default_factory=dict)
    embedding: Embedding | None = None  # the vectors the pairs were scored with (None: an in-memory collection)

    exact: ExactClasses | None = None
    similar: SimilarTier = field(default_factory=SimilarTier.off)  # review only: nothing is removed
    pixel: PixelCheck | None = None  # the pairs below the threshold promoted by their pixels (None: not run)
    above: AboveCheck | None = None  # auto: a pixel-checked sample of the pairs above the threshold
    expected_precision: float | None = None  # auto: of the near pairs, pixel-checked ones included
    expected_recall: float | None = None

    def expectation(self) -> str:
        """The printed line on the near tier beyond the embedding threshold: what ``auto`` expects of it, pixel
        check included, or what the pixel check promoted below a number; "" when neither applies."""
        p = self.pixel
        check = f"pairs scoring {p.describe_band()}, {p.seconds:.1f} s" if p is not None else ""
        if self.expected_precision is None:
            return f"pixel check: {check}" if check else ""
        how = f"with the pixel check ({check})" if check else "embedding threshold alone"
        a = self.above
        sampled = (f" ({a.passed} of {a.readable} pairs sampled from the {a.pairs:,} above the threshold pass the "
                   f"pixel check)" if a is not None and a.readable else "")
        return (f"near duplicates, {how}: expected precision {self.expected_precision:.3f}{sampled}, "
                f"recall {self.expected_recall:.3f}")

    @property
    def all_groups(self) -> list[Group]:
        """Every reported group in report order: exact, near, then similar."""
        return self.groups + self.similar.groups

    @property
    def images_in_groups(self) -> int:
        return sum(g.size for g in self.all_groups)

    def tier_counts(self) -> dict[str, TierCount]:
        """Per tier (exact, near, similar): groups, images, pairs, files to remove, threshold and rule."""
        return {
            EXACT: _count([g for g in self.groups if g.tier == EXACT], None,
                          "same bytes (SHA-256) or same decoded pixels", True),
            NEAR: _count([g for g in self.groups if g.tier == NEAR], self.threshold,
                         f"cosine >= {self.threshold:.4f}{' ' + self.pixel.rule() if self.pixel else ''}, every two "
                         f"members >= {self.guard:.4f}{' or pixel-checked' if self.pixel else ''}", True),
            SIMILAR: _count(self.similar.groups, self.similar.threshold, self.similar.rule(), False),
        }


def parse_threshold(value: str | float) -> float | str:
    """'auto' or a cosine similarity in (0, 1]; a clear error otherwise."""
    return parse_similarity(value, "--threshold", ("auto",), 0.92)


PIXEL_AUTO, PIXEL_OFF = "auto", "off"  # --pixel-check words


def parse_pixel_check(value: str | float | Band | None) -> float | str | Band:
    """--pixel-check: 'auto' (below an ``auto`` threshold, the band it calibrates), 'off', or the band's
    floor as a cosine similarity (below any threshold); a :class:`.pixelcheck.Band` is kept as it is."""
    if isinstance(value, Band):
        return value
    return PIXEL_AUTO if value is None else parse_similarity(value, "--pixel-check", (PIXEL_AUTO, PIXEL_OFF), 0.86)


def _band(pixel_check: float | str | Band, cal: Calibration | None) -> Band | None:
    """The band a parsed ``pixel_check`` asks for: ``auto`` takes the calibrated one (none without a
    calibration), a number is a floor for the kNN pairs alone."""
    if isinstance(pixel_check, Band):
        return pixel_check
    if pixel_check == PIXEL_AUTO:
        return cal.pixel_band() if cal is not None else None
    return None if pixel_check == PIXEL_OFF else Band(float(pixel_check))


class Explorer:
    """Cached exploration of one collection (see the module doc)."""

    def __init__(self, collection: Collection, cache: ResultCache | None = None, seed: int = 0,
                 k: int = K, exact_max: int = EXACT_MAX, featuriser: str = "index") -> None:
        self.collection = collection
        self.cache = cache or ResultCache(os.devnull, None)
        self.seed = seed
        self.k = k
        self.exact_max = exact_max
        self.featuriser = featuriser  # part of every cache key: vectors made another way are another result
        self._exact: ExactClasses | None = None  # the exact tier does not depend on the threshold

    @classmethod
    def for_index(cls, si, embedding: str = EMBEDDING, **kw) -> Explorer:
        """An explorer over an opened :class:`index.search.SearchIndex`, cached next to it, scoring with
        ``embedding`` ('index' or 'native': :mod:`.embeddings`)."""
        cache = ResultCache(si.dir, si.manifest.generation)
        coll = with_embedding(si, from_index(si), embedding, cache)
        # vectors re-embedded another way are other results; the stored ones share theirs whatever the name
        kw.setdefault("featuriser", INDEX if coll.embedding.source == STORED else coll.embedding.name)
        return cls(coll, cache, **kw)

    @classmethod
    def open(cls, index_dir: str | os.PathLike, device: str | None = "cpu", **kw) -> Explorer:
        from index.search import SearchIndex

        return cls.for_index(SearchIndex.open(index_dir, device=device), **kw)

    def _params(self, **extra) -> dict:
        return {"featuriser": self.featuriser, "seed": self.seed, "n": len(self.collection), **extra}

    def graph(self) -> KnnGraph:
        return self.cache.fetch("knn", self._params(k=self.k, exact_max=self.exact_max), KnnGraph,
                                lambda: knn_graph(self.collection.vectors, self.k, self.exact_max, self.seed))

    def calibration(self, options: CalibrationOptions | None = None) -> Calibration:
        o = options or CalibrationOptions()
        params = self._params(k=self.k, samples=o.samples, target=o.target_precision, prevalence=o.prevalence)
        return self.cache.fetch("calibration", params, Calibration, lambda: calibrate(
            self.collection, self.graph(), o.samples, o.target_precision, o.prevalence, seed=self.seed))

    def duplicates(self, threshold: float | str = "auto", guard: float | None = None,
                   options: CalibrationOptions | None = None, similar: float | str = SIMILAR_DEFAULT,
                   similar_guard: float | None = None, pixel_check: float | str = PIXEL_AUTO) -> Duplicates:
        """Groups at ``threshold`` (a number or 'auto'), chain guard ``guard`` (default 2t^2 - 1), the pairs
        below it that pass the pixel check (``pixel_check``: :func:`parse_pixel_check`), and the similar
        shots below it at ``similar`` ('auto', 'off' or a number; :mod:`.similar`)."""
        t = parse_threshold(threshold)
        similar = parse_similar(similar)  # a bad value fails before any calibration
        pixel_check = parse_pixel_check(pixel_check)
        cal = self.calibration(options) if t == "auto" else None
        t = cal.threshold if cal is not None else float(t)
        g = chain_guard(t) if guard is None else float(guard)
        graph = self.graph()
        band = _band(pixel_check, cal)
        pixel = (self.pixel_check(band.floor, t, nearest_floor=band.nearest_floor)
                 if band is not None and band.floor < t else None)
        groups = group_duplicates(graph, self.collection.vectors, t, g,
                                  verified=pixel.pairs if pixel is not None else None)
        exact = self.exact_classes()
        for group in groups:
            group.tier = EXACT if exact.covers(group.rows) else NEAR
        grouped = {r for group in groups for r in group.rows}
        extra = [group_stats(rows, self.collection.vectors) for rows in exact_only_groups(exact, grouped)]
        for group in extra:
            group.tier = EXACT
        groups.extend(extra)
        groups.sort(key=lambda x: (x.tier != EXACT, -x.size, -x.mean_score, x.rows[0]))
        taken = grouped | {r for group in extra for r in group.rows}
        params = self._params(k=self.k, exact_max=self.exact_max, near=t, guard=g, similar=str(similar),
                              similar_guard=similar_guard,
                              pixel=[band.floor, band.nearest_floor] if pixel is not None else None)
        tier = self.cache.fetch(SIMILAR, params, SimilarTier, lambda: similar_tier(
            graph, self.collection.vectors, taken, t, similar, similar_guard))
        above = self.above_check(t) if cal is not None and pixel_check != PIXEL_OFF else None
        expected = (None, None) if cal is None else expected_with_pixel_check(cal, pixel, len(self.collection), above)
        return Duplicates(t, g, groups, cal, graph.method, exact=exact, similar=tier,
                          embedding=self.collection.embedding, pixel=pixel, above=above,
                          expected_precision=expected[0], expected_recall=expected[1])

    def above_check(self, threshold: float, sample: int = ABOVE_SAMPLE) -> AboveCheck:
        """A pixel-checked sample of the kNN pairs at or above ``threshold`` (:func:`.pixelcheck.check_above`),
        cached: how many of the pairs reported are copies by their pixels."""
        params = self._params(k=self.k, exact_max=self.exact_max, above=threshold, sample=sample)
        return self.cache.fetch("pixelabove", params, AboveCheck, lambda: check_above(
            self.collection, self.graph(), threshold, sample, seed=self.seed))

    def pixel_check(self, floor: float, ceiling: float, threshold: float = PIXEL_THRESHOLD,
                    max_pairs: int = MAX_PAIRS, nearest_floor: float | None = None) -> PixelCheck:
        """The kNN pairs scoring in [floor, ceiling), and each image with its nearest neighbour from
        ``nearest_floor``, checked by their pixels (:func:`.pixelcheck.check_band`), cached."""
        params = self._params(k=self.k, exact_max=self.exact_max, floor=floor, ceiling=ceiling, threshold=threshold,
                              max_pairs=max_pairs, nearest_floor=nearest_floor)
        return self.cache.fetch("pixelcheck", params, PixelCheck, lambda: check_band(
            self.collection, self.graph(), floor, ceiling, threshold, max_pairs, nearest_floor=nearest_floor))

    def exact_classes(self) -> ExactClasses:
        """Same bytes / same pixels (:mod:`.tiers`), computed once per explorer."""
        if self._exact is None:
            self._exact = exact_classes(self.collection, self.graph())
        return self._exact

    def clusters(self, k: int | str = "auto") -> Clustering:
        return self.cache.fetch("clusters", self._params(k=str(k)), Clustering, lambda: cluster(
            self.collection.vectors, k, self.collection.labels, self.seed))

    def map(self, method: str = "pca") -> Projection:
        return self.cache.fetch("map", self._params(method=method), Projection, lambda: project(
            self.collection.vectors, method, self.seed))
