"""The pixel check: is a close pair an edited copy, or only a look-alike? Aligned correlation of thumbnails.

An embedding trained to tell images apart still scores a re-cropped copy below a JPEG or a
resized one (the crop moves and enlarges everything), and some look-alikes -- two photos of the
same kind of object on the same background -- score as high. Pixels settle it: a copy, once the
crop is undone, has the same fine structure as its original, a look-alike does not.

The check: both images as :data:`SIDE`-pixel grey thumbnails, band-passed (a difference of
Gaussians, :data:`BAND`: the edges and textures, not the overall brightness or colour a touch-up
changes); one is shrunk to each of :data:`SCALES` (a crop keeping 80-95 % of the area has
0.89-0.97 of the side) and slid over the other; the score is the best normalised correlation
over scales, positions and both directions (either image may be the crop). It is invariant to
brightness/contrast (normalised), tolerant of JPEG and downscaling (the band is coarse at
:data:`SIDE` px) and of crops (the search), and low for different photos; what it finds on planted
copies, against perceptual hashing, is measured in docs/explore.md. A picture smaller than
:data:`SIDE` px (a 16 px copy of a 32 px image) has no detail above its own size to match: the
larger one is then compared as it would look at the smaller one's size (:func:`at_size`).

It is run on pairs the embedding already puts close (:func:`check_band`): the kNN pairs scoring in a
band below the near-duplicate threshold, and each image's nearest neighbour down to a lower floor
(a copy is nearly always its original's nearest neighbour, even where a heavy edit moved it far);
the finder's ``auto`` threshold promotes those that pass (:mod:`.explorer`), which recovers the
crops and small downscales an embedding threshold set for precision misses.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageOps
from scipy.ndimage import correlate1d

from .collection import Collection
from .errors import ExploreError
from .grouping import pair_edges
from .neighbours import KnnGraph

SIDE = 64  # thumbnail side in px
SCALES = (1.0, 0.975, 0.95, 0.925, 0.9, 0.875)  # relative sides tried for the smaller picture (crops: 0.89-0.97)
BAND = (1.0, 4.0)  # difference-of-Gaussians sigmas, px at SIDE: edges and texture, not brightness or colour
THRESHOLD = 0.9  # a pair scoring at least this is an edited copy
MAX_PAIRS = 10_000  # pairs checked at most per run: nearest neighbours first, best embedding scores first
PREPARED_CACHE = 2048  # thumbnails kept ready to match during a run (~170 KB each)
ABOVE_SAMPLE = 300  # pairs above the threshold checked to estimate how many of them are copies


def thumbnail(img: Image.Image) -> np.ndarray:
    """(SIDE, SIDE) uint8 grey levels of ``img``, its whole frame squeezed to a square (aspect is not
    kept: a copy and its original share their aspect, and a crop keeps it)."""
    grey = img.convert("L")
    if min(grey.size) < 1:
        raise ExploreError(f"empty image {grey.size}")
    return np.asarray(grey.resize((SIDE, SIDE), Image.Resampling.BILINEAR, reducing_gap=2.0), dtype=np.uint8)


def at_size(thumb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``thumb`` as it would look had its picture been only ``size`` (w, h) px: down to that size and back
    up to :data:`SIDE`, the way the smaller picture's own thumbnail was made."""
    small = Image.fromarray(thumb).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(small.resize((SIDE, SIDE), Image.Resampling.BILINEAR), dtype=np.uint8)


def _common_size(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int] | None:
    """The size to compare two pictures of sizes ``a`` and ``b`` at: the smaller one's, where it is smaller
    than the thumbnail (below that both thumbnails would hold detail only the larger has); else None."""
    small = min(a, b, key=lambda s: s[0] * s[1])
    return small if min(small) < SIDE and a != b else None


def _kernel(sigma: float) -> np.ndarray:
    """scipy's Gaussian weights for ``sigma`` (truncated at 4 sigma), made once instead of on every call."""
    x = np.arange(-int(4.0 * sigma + 0.5), int(4.0 * sigma + 0.5) + 1, dtype=np.float64)
    w = np.exp(-0.5 / (sigma * sigma) * x * x)
    return w / w.sum()


_KERNELS = tuple(_kernel(s) for s in BAND)


def _smooth(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return correlate1d(correlate1d(x, w, axis=0, mode="nearest"), w, axis=1, mode="nearest")


def _band(x: np.ndarray) -> np.ndarray:
    """The difference of the two Gaussian blurs of :data:`BAND` (``scipy.ndimage.gaussian_filter``'s)."""
    x = x.astype(np.float32)
    return _smooth(x, _KERNELS[0]) - _smooth(x, _KERNELS[1])


@dataclass(frozen=True)
class _Prepared:
    """One thumbnail ready to be matched: band-passed, its integral images, and its shrunk templates."""

    band: np.ndarray  # (SIDE, SIDE) float32, band-passed
    s1: np.ndarray  # (SIDE + 1, SIDE + 1) float64 integral image of ``band`` ...
    s2: np.ndarray  # ... and of its square: any window's mean and energy in four lookups
    templates: tuple[np.ndarray, ...]  # per SCALES: shrunk, band-passed, zero mean, unit norm


def _prepare(thumb: np.ndarray) -> _Prepared:
    band = _band(thumb)
    padded = np.pad(band.astype(np.float64), ((1, 0), (1, 0)))
    templates = []
    for s in SCALES:
        r = int(round(SIDE * s))
        t = thumb if r == SIDE else np.asarray(Image.fromarray(thumb).resize((r, r), Image.Resampling.BILINEAR))
        t = _band(t)
        t = t - t.mean()
        templates.append(t / (np.linalg.norm(t) + 1e-6))
    return _Prepared(band, padded.cumsum(0).cumsum(1), (padded ** 2).cumsum(0).cumsum(1), tuple(templates))


def _best_match(search: _Prepared, templates: tuple[np.ndarray, ...]) -> float:
    """Best normalised correlation of any template with any same-size window of ``search``."""
    s1, s2, best = search.s1, search.s2, -1.0
    for t in templates:
        r = t.shape[0]
        windows = np.lib.stride_tricks.sliding_window_view(search.band, (r, r))  # (SIDE-r+1, SIDE-r+1, r, r), a view
        num = np.einsum("ijkl,kl->ij", windows, t)  # the template is zero-mean: the window's mean drops out
        total = s1[r:, r:] - s1[:-r, r:] - s1[r:, :-r] + s1[:-r, :-r]
        sq = s2[r:, r:] - s2[:-r, r:] - s2[r:, :-r] + s2[:-r, :-r]
        den = np.sqrt(np.maximum(sq - total * total / (r * r), 0.0)) + 1e-6
        best = max(best, float((num / den).max()))
    return best


def _match(a: _Prepared, b: _Prepared) -> float:
    return max(_best_match(a, b.templates), _best_match(b, a.templates))  # either may be the crop


def aligned_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """The pixel check's score of two :func:`thumbnail` arrays, in [-1, 1] (see the module doc)."""
    if a.shape != (SIDE, SIDE) or b.shape != (SIDE, SIDE):
        raise ExploreError(f"thumbnails must be {SIDE}x{SIDE}, got {a.shape} and {b.shape}")
    return _match(_prepare(a), _prepare(b))


@dataclass(frozen=True)
class Thumb:
    """One picture's :func:`thumbnail` and the size (w, h) of the picture it was made from."""

    pixels: np.ndarray
    size: tuple[int, int]


def thumb(img: Image.Image) -> Thumb:
    """:class:`Thumb` of ``img`` (its size as it is displayed: after EXIF rotation, where the caller applied it)."""
    return Thumb(thumbnail(img), img.size)


def thumb_score(a: Thumb, b: Thumb) -> float:
    """:func:`aligned_correlation` of two thumbnails, at the smaller picture's size where it is below the
    thumbnail's (:func:`at_size`)."""
    common = _common_size(a.size, b.size)
    if common is None:
        return aligned_correlation(a.pixels, b.pixels)
    return aligned_correlation(*(t.pixels if t.size == common else at_size(t.pixels, common) for t in (a, b)))


def pair_score(a: Image.Image, b: Image.Image) -> float:
    """The pixel check's score of two images (:func:`thumb_score`).

    Example:
        >>> from PIL import Image
        >>> img = Image.effect_mandelbrot((200, 150), (-2, -1.2, 1, 1.2), 60).convert("RGB")
        >>> pair_score(img, img.resize((120, 90))) > THRESHOLD
        True
    """
    return thumb_score(thumb(a), thumb(b))


def thumbnail_loader(coll: Collection) -> Callable[[int], Thumb]:
    """row -> :class:`Thumb`, decoding a JPEG file at a reduced size where the collection has files."""
    from instdisc.images import load_image

    def load(row: int) -> Thumb:
        path = coll.file_path(row)
        if path is None:
            return thumb(coll.load_image(row))
        with Image.open(path) as img:
            full = img.size  # before draft mode shrinks it
            img.draft("L", (2 * SIDE, 2 * SIDE))  # JPEG: decode at 1/2-1/8 scale, still >= 2x the thumbnail
            rotated = ImageOps.exif_transpose(img) or img
            if rotated.size != img.size:
                full = full[::-1]
            if rotated.mode in ("P", "PA", "LA", "RGBA"):  # transparency: flatten as everywhere else
                rotated = load_image(path)
            return Thumb(thumbnail(rotated), full)

    return load


@dataclass(frozen=True)
class Band:
    """Which pairs below the near-duplicate threshold are pixel-checked: the kNN pairs from ``floor`` up,
    and an image with its nearest neighbour from ``nearest_floor`` up (None: from ``floor``)."""

    floor: float
    nearest_floor: float | None = None


@dataclass
class PixelCheck:
    """The pairs of one embedding band checked by pixels, and those that passed."""

    floor: float  # the band: kNN pairs scoring >= floor ...
    ceiling: float  # ... and < ceiling (the near-duplicate threshold)
    threshold: float  # pixel score a pair needs
    band_pairs: int  # pairs in the band (nearest-neighbour pairs below the floor included)
    checked: int  # of them checked (nearest-neighbour pairs first, best first; at most MAX_PAIRS)
    unreadable: int  # checked pairs with an image that could not be read (not promoted)
    pairs: np.ndarray  # (M, 2) int64 rows a < b of the pairs that passed
    scores: np.ndarray  # (M,) float32 their pixel scores
    seconds: float
    lowest_checked: float = -1.0  # every nearest-neighbour pair scoring at least this was checked
    nearest_floor: float | None = None  # an image and its nearest neighbour: checked from here (< floor) up
    nearest_pairs: int = 0  # of the band's pairs, those of an image and its nearest neighbour

    def __post_init__(self) -> None:
        self.pairs = np.asarray(self.pairs, dtype=np.int64).reshape(-1, 2)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)

    def describe_band(self) -> str:
        """The band in words: its cosines, how many pairs, how many checked."""
        nearest = (f" (an image's nearest neighbour from {self.nearest_floor:.4f})"
                   if self.nearest_floor is not None and self.nearest_floor < self.floor else "")
        capped = (f", the best {self.checked:,} of {self.band_pairs:,} checked, nearest neighbours first, down to "
                  f"{self.lowest_checked:.4f}" if self.checked < self.band_pairs else "")
        return (f"{self.floor:.4f}-{self.ceiling:.4f}{nearest}: {len(self.pairs)} of {self.band_pairs:,} pairs "
                f"passed{capped}")

    def rule(self) -> str:
        return f"or cosine {self.describe_band()}, pixel check >= {self.threshold:.2f}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["pairs"], d["scores"] = self.pairs.tolist(), self.scores.tolist()
        return d


def band_pairs(graph: KnnGraph, floor: float, ceiling: float) -> tuple[np.ndarray, np.ndarray]:
    """Undirected kNN pairs (a < b) scoring in [floor, ceiling), best first: rows (P, 2) and scores (P,)."""
    a, b, s = pair_edges(graph, floor, below=ceiling)
    return np.stack([a, b], axis=1), s


def nearest_pairs(graph: KnnGraph, floor: float, ceiling: float) -> tuple[np.ndarray, np.ndarray]:
    """Undirected pairs (a < b) of an image and its nearest neighbour scoring in [floor, ceiling), best first."""
    first = KnnGraph(graph.neighbours[:, :1], graph.scores[:, :1], graph.method, graph.seconds)
    return band_pairs(first, floor, ceiling)


def _bottom(floor: float, nearest_floor: float | None) -> float:
    """The lowest cosine a band reaches: its nearest-neighbour floor where that is lower."""
    return floor if nearest_floor is None else min(floor, nearest_floor)


def candidate_pairs(graph: KnnGraph, floor: float, ceiling: float, nearest_floor: float | None = None
                    ) -> tuple[np.ndarray, np.ndarray, int]:
    """The pairs :func:`check_band` checks, in its order: (rows (P, 2), cosines (P,), how many lead).

    First every image with its nearest neighbour scoring in [min(floor, nearest_floor), ceiling), best
    first: where copies are (a copy's nearest neighbour is nearly always its original); then the other
    kNN pairs in [floor, ceiling), best first."""
    near, near_s = nearest_pairs(graph, _bottom(floor, nearest_floor), ceiling)
    rest, rest_s = band_pairs(graph, floor, ceiling)
    n = len(graph.neighbours)
    seen = np.isin(rest[:, 0] * n + rest[:, 1], near[:, 0] * n + near[:, 1])
    return (np.concatenate([near, rest[~seen]]), np.concatenate([near_s, rest_s[~seen]]), len(near))


def check_band(coll: Collection, graph: KnnGraph, floor: float, ceiling: float, threshold: float = THRESHOLD,
               max_pairs: int = MAX_PAIRS, workers: int | None = None,
               nearest_floor: float | None = None) -> PixelCheck:
    """Pixel-check the pairs of :func:`candidate_pairs` (the kNN pairs scoring in [floor, ceiling), each image
    with its nearest neighbour from ``nearest_floor``), at most ``max_pairs`` in that order, on ``workers``
    threads (default: one per core).

    Example:
        >>> check = check_band(collection, explorer.graph(), 0.86, 0.96, nearest_floor=0.78)  # doctest: +SKIP
        >>> check.pairs  # the pairs that are edited copies by their pixels
    """
    if not -1.0 <= floor <= ceiling <= 1.0:
        raise ExploreError(f"pixel-check band must satisfy -1 <= floor <= ceiling <= 1, got [{floor}, {ceiling})")
    if nearest_floor is not None and not -1.0 <= nearest_floor <= 1.0:
        raise ExploreError(f"the nearest-neighbour floor must be a cosine in [-1, 1], got {nearest_floor}")
    if max_pairs < 0:
        raise ExploreError(f"max_pairs must be >= 0, got {max_pairs}")
    t0 = time.perf_counter()
    pairs, cosines, leading = candidate_pairs(graph, floor, ceiling, nearest_floor)
    todo = pairs[:max_pairs].tolist()
    # every nearest-neighbour pair checked: down to the band's bottom; else the last one checked (none: ceiling)
    lowest = (_bottom(floor, nearest_floor) if len(todo) >= leading
              else float(cosines[len(todo) - 1]) if todo else ceiling)
    scores = pixel_scores(coll, todo, workers)
    passed = [(p, s) for p, s in zip(todo, scores, strict=True) if s is not None and s >= threshold]
    return PixelCheck(floor, ceiling, threshold, len(pairs), len(todo), sum(s is None for s in scores),
                      np.asarray([p for p, _ in passed], np.int64), np.asarray([s for _, s in passed], np.float32),
                      time.perf_counter() - t0, lowest, nearest_floor, leading)


def pixel_scores(coll: Collection, pairs: list[list[int]], workers: int | None = None) -> list[float | None]:
    """The pixel score of each pair of rows (None where an image cannot be read), on ``workers`` threads
    (default: one per core), each image decoded once and prepared once while the cache holds it."""
    workers = workers or os.cpu_count() or 1
    load = thumbnail_loader(coll)

    @lru_cache(maxsize=PREPARED_CACHE)
    def prepared(row: int) -> tuple[_Prepared, Thumb]:
        t = load(row)
        return _prepare(t.pixels), t

    def score(pair: list[int]) -> float | None:
        try:
            (a, ta), (b, tb) = prepared(pair[0]), prepared(pair[1])
        except (OSError, ValueError, KeyError, ExploreError, Image.DecompressionBombError):
            return None
        if _common_size(ta.size, tb.size) is not None:  # a picture smaller than the thumbnail: rare, not cached
            return thumb_score(ta, tb)
        return _match(a, b)

    # pairs sharing their first row in turn (the cache holds it), on one thread per core: decoding and numpy
    # release the GIL; the given order is kept for the result
    order = sorted(range(len(pairs)), key=lambda i: pairs[i])
    with ThreadPoolExecutor(max(1, min(workers, len(pairs)))) as pool:
        scored = dict(zip(order, pool.map(score, [pairs[i] for i in order]), strict=True))
    return [scored[i] for i in range(len(pairs))]


@dataclass
class AboveCheck:
    """A seeded sample of the kNN pairs at or above the near-duplicate threshold, pixel-checked: the share
    of them that are edited copies, measured instead of modelled (for the expected precision)."""

    threshold: float  # the near-duplicate threshold
    pairs: int  # undirected kNN pairs scoring >= threshold
    sampled: int
    readable: int  # sampled pairs whose two images could be read
    passed: int  # of them, passing the pixel check
    seconds: float

    @property
    def pass_rate(self) -> float | None:
        return self.passed / self.readable if self.readable else None

    def to_dict(self) -> dict:
        return asdict(self)


def check_above(coll: Collection, graph: KnnGraph, ceiling: float, sample: int = ABOVE_SAMPLE,
                threshold: float = THRESHOLD, seed: int = 0, workers: int | None = None) -> AboveCheck:
    """Pixel-check ``sample`` kNN pairs scoring >= ``ceiling`` (all of them if fewer), drawn with ``seed``.

    Example:
        >>> above = check_above(collection, explorer.graph(), 0.96)  # doctest: +SKIP
        >>> above.pass_rate  # the share of the pairs above 0.96 that are edited copies by their pixels
    """
    if sample < 0:
        raise ExploreError(f"sample must be >= 0, got {sample}")
    t0 = time.perf_counter()
    a, b, _ = pair_edges(graph, ceiling)
    pick = np.sort(np.random.default_rng(seed).permutation(len(a))[:sample])
    scores = pixel_scores(coll, np.stack([a[pick], b[pick]], axis=1).tolist(), workers)
    readable = [x for x in scores if x is not None]
    return AboveCheck(ceiling, len(a), len(pick), len(readable), sum(x >= threshold for x in readable),
                      time.perf_counter() - t0)
