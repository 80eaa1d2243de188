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
copies, against perceptual hashing, is measured in docs/explore.md.

It is run on pairs the embedding already puts close (:func:`check_band`): the finder's ``auto``
threshold promotes those that pass (:mod:`.explorer`), which recovers the crops an embedding
threshold set for precision misses.
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
MAX_PAIRS = 10_000  # pairs checked at most per run, best embedding scores first
PREPARED_CACHE = 2048  # thumbnails kept ready to match during a run (~170 KB each)


def thumbnail(img: Image.Image) -> np.ndarray:
    """(SIDE, SIDE) uint8 grey levels of ``img``, its whole frame squeezed to a square (aspect is not
    kept: a copy and its original share their aspect, and a crop keeps it)."""
    grey = img.convert("L")
    if min(grey.size) < 1:
        raise ExploreError(f"empty image {grey.size}")
    return np.asarray(grey.resize((SIDE, SIDE), Image.Resampling.BILINEAR, reducing_gap=2.0), dtype=np.uint8)


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


def pair_score(a: Image.Image, b: Image.Image) -> float:
    """:func:`aligned_correlation` of two images.

    Example:
        >>> from PIL import Image
        >>> img = Image.effect_mandelbrot((200, 150), (-2, -1.2, 1, 1.2), 60).convert("RGB")
        >>> pair_score(img, img.resize((120, 90))) > THRESHOLD
        True
    """
    return aligned_correlation(thumbnail(a), thumbnail(b))


def thumbnail_loader(coll: Collection) -> Callable[[int], np.ndarray]:
    """row -> :func:`thumbnail`, decoding a JPEG file at a reduced size where the collection has files."""
    from instdisc.images import load_image

    def load(row: int) -> np.ndarray:
        path = coll.file_path(row)
        if path is None:
            return thumbnail(coll.load_image(row))
        with Image.open(path) as img:
            img.draft("L", (2 * SIDE, 2 * SIDE))  # JPEG: decode at 1/2-1/8 scale, still >= 2x the thumbnail
            img = ImageOps.exif_transpose(img) or img
            if img.mode in ("P", "PA", "LA", "RGBA"):  # transparency: flatten as everywhere else
                img = load_image(path)
            return thumbnail(img)

    return load


@dataclass
class PixelCheck:
    """The pairs of one embedding band checked by pixels, and those that passed."""

    floor: float  # the band: kNN pairs scoring >= floor ...
    ceiling: float  # ... and < ceiling (the near-duplicate threshold)
    threshold: float  # pixel score a pair needs
    band_pairs: int  # pairs in the band
    checked: int  # of them checked (the best-scoring ones, at most MAX_PAIRS)
    unreadable: int  # checked pairs with an image that could not be read (not promoted)
    pairs: np.ndarray  # (M, 2) int64 rows a < b of the pairs that passed
    scores: np.ndarray  # (M,) float32 their pixel scores
    seconds: float
    lowest_checked: float = -1.0  # the cosine of the last pair checked (the floor when every pair was)

    def __post_init__(self) -> None:
        self.pairs = np.asarray(self.pairs, dtype=np.int64).reshape(-1, 2)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)

    def rule(self) -> str:
        capped = (f", the best {self.checked:,} of {self.band_pairs:,} checked, down to {self.lowest_checked:.4f}"
                  if self.checked < self.band_pairs else "")
        return (f"or cosine >= {self.floor:.4f} and pixel check >= {self.threshold:.2f} "
                f"({len(self.pairs)} of {self.band_pairs:,} pairs passed{capped})")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["pairs"], d["scores"] = self.pairs.tolist(), self.scores.tolist()
        return d


def band_pairs(graph: KnnGraph, floor: float, ceiling: float) -> tuple[np.ndarray, np.ndarray]:
    """Undirected kNN pairs (a < b) scoring in [floor, ceiling), best first: rows (P, 2) and scores (P,)."""
    a, b, s = pair_edges(graph, floor, below=ceiling)
    return np.stack([a, b], axis=1), s


def check_band(coll: Collection, graph: KnnGraph, floor: float, ceiling: float, threshold: float = THRESHOLD,
               max_pairs: int = MAX_PAIRS, workers: int | None = None) -> PixelCheck:
    """Pixel-check the kNN pairs scoring in [floor, ceiling) (at most ``max_pairs``, best first), on ``workers``
    threads (default: one per core).

    Example:
        >>> check = check_band(collection, explorer.graph(), 0.86, 0.96)  # doctest: +SKIP
        >>> check.pairs  # the pairs that are edited copies by their pixels
    """
    if not -1.0 <= floor <= ceiling <= 1.0:
        raise ExploreError(f"pixel-check band must satisfy -1 <= floor <= ceiling <= 1, got [{floor}, {ceiling})")
    if max_pairs < 0:
        raise ExploreError(f"max_pairs must be >= 0, got {max_pairs}")
    workers = workers or os.cpu_count() or 1
    t0 = time.perf_counter()
    pairs, cosines = band_pairs(graph, floor, ceiling)
    todo = pairs[:max_pairs].tolist()
    lowest = floor if len(todo) == len(pairs) else float(cosines[len(todo) - 1]) if todo else ceiling
    load = thumbnail_loader(coll)

    @lru_cache(maxsize=PREPARED_CACHE)
    def prepared(row: int) -> _Prepared:
        return _prepare(load(row))

    def score(pair: list[int]) -> float | None:
        """The pair's pixel score, None if an image cannot be read."""
        try:
            a, b = prepared(pair[0]), prepared(pair[1])
        except (OSError, ValueError, KeyError, ExploreError, Image.DecompressionBombError):
            return None
        return _match(a, b)

    # pairs sharing their first row in turn (the cache holds it), on one thread per core: decoding and numpy
    # release the GIL; the band's order (best first) is kept for the result
    order = sorted(range(len(todo)), key=lambda i: todo[i])
    with ThreadPoolExecutor(max(1, min(workers, len(todo)))) as pool:
        scored = dict(zip(order, pool.map(score, [todo[i] for i in order]), strict=True))
    scores = [scored[i] for i in range(len(todo))]
    passed = [(p, s) for p, s in zip(todo, scores, strict=True) if s is not None and s >= threshold]
    return PixelCheck(floor, ceiling, threshold, len(pairs), len(todo), sum(s is None for s in scores),
                      np.asarray([p for p, _ in passed], np.int64), np.asarray([s for _, s in passed], np.float32),
                      time.perf_counter() - t0, lowest)
