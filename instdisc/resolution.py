"""Training resolution from the collection itself: sample image sizes, pick a size and a stem.

A folder of 32 px thumbnails and a folder of phone photos need different encoders: the CIFAR
stem (3x3 stride 1, no max-pool) keeps all of a 32 px image's pixels but costs 16x the
compute per pixel of the ImageNet stem (7x7 stride 2 + max-pool), which is what makes 64 px
and 96 px affordable on a CPU. The rule (median short side of a sample of headers):

=================  ==========  ============  =========================================
median short side  image_size  stem          preset family (CPU / GPU)
=================  ==========  ============  =========================================
<= 40 px           32          CIFAR         cpu-cifar-fast / paper-cifar
41 - 127 px        64          ImageNet      cpu-photos-fast / paper-cifar, ImageNet stem
>= 128 px          96          ImageNet      cpu-photos-fast at 96 / paper-cifar, ImageNet stem
=================  ==========  ============  =========================================

Training images are stored (decoded, in the disk cache) at ``store_size``: 1.25x the training
size, so random-resized crops are cut from more pixels than the crop keeps -- but never above
the originals' median short side, since upsampling adds no detail, only disk and memory.
"""

from __future__ import annotations

import os
import statistics
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .images import ImageError, probe

SAMPLE_SIZE = 256  # headers read to decide (spread evenly over the sorted file list: every class folder)
THUMBNAIL_MAX_SIDE = 40  # median short side up to this: a thumbnail collection
LARGE_PHOTO_MIN_SIDE = 128  # median short side from this: 96 px training
THUMBNAIL_SIZE, PHOTO_SIZE, LARGE_PHOTO_SIZE = 32, 64, 96
STORE_SCALE = 1.25  # stored side / training side for random-resized crops


@dataclass(frozen=True)
class SizeSample:
    """Short sides (pixels) of a sample of a collection's images."""

    probed: int  # headers read
    unreadable: int  # of those, not images (the decode reports them properly later)
    short_median: int
    short_min: int
    short_max: int

    def describe(self) -> str:
        return (f"median short side {self.short_median} px (range {self.short_min}-{self.short_max}) "
                f"over {self.probed - self.unreadable} sampled images")


@dataclass(frozen=True)
class Resolution:
    """What to train at and why (printed by scripts/train.py, saved in the run's ingest report)."""

    image_size: int  # training crops and embeddings
    cifar_stem: bool
    store_size: int  # side of the decoded training images in the cache (>= image_size)
    family: str  # "thumbnails" or "photos": which presets fit
    reason: str

    def preset(self, gpu: bool) -> str:
        """The preset this family starts from (its image_size / stem are then set from this result)."""
        if gpu:
            return "paper-cifar"
        return "cpu-cifar-fast" if self.family == "thumbnails" else "cpu-photos-fast"

    def to_dict(self) -> dict:
        return {"image_size": self.image_size, "cifar_stem": self.cifar_stem, "store_size": self.store_size,
                "family": self.family, "reason": self.reason}


def sample_sizes(root: Path, paths: list[str], n: int = SAMPLE_SIZE) -> SizeSample:
    """Read up to ``n`` headers, evenly spaced over the sorted ``paths`` (deterministic, no decoding)."""
    if not paths:
        raise ValueError("no images to sample sizes from")
    step = max(1, len(paths) // n)
    picked = paths[::step][:n]

    def short(p: str) -> int | None:
        try:
            info = probe(root / p)
        except ImageError:
            return None
        return min(info.width, info.height)

    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        sides = list(pool.map(short, picked))
    ok = [s for s in sides if s is not None]
    if not ok:
        return SizeSample(len(picked), len(picked), 0, 0, 0)
    return SizeSample(len(picked), len(picked) - len(ok), int(statistics.median_low(ok)), min(ok), max(ok))


def store_size(image_size: int, sample: SizeSample | None) -> int:
    """Cache side for training at ``image_size``: STORE_SCALE above it, capped by the originals' short side."""
    target = round(image_size * STORE_SCALE)
    if sample is None or sample.short_median <= 0:
        return image_size
    return max(image_size, min(target, sample.short_median))


def family_of(image_size: int) -> str:
    return "thumbnails" if image_size <= THUMBNAIL_MAX_SIDE else "photos"


def choose_resolution(sample: SizeSample, image_size: int | None = None) -> Resolution:
    """The training resolution for a collection with these sizes; ``image_size`` forces the size (--image-size)."""
    if image_size is not None:
        if image_size < 8:
            raise ValueError(f"image_size must be at least 8 px, got {image_size}")
        fam = family_of(image_size)
        return Resolution(image_size, fam == "thumbnails", store_size(image_size, sample), fam,
                          f"--image-size {image_size} given ({sample.describe()}); "
                          f"{'CIFAR' if fam == 'thumbnails' else 'ImageNet'} stem for that size")
    if sample.short_median <= 0:
        raise ValueError(f"none of the {sample.probed} sampled files has a readable image header")
    side = sample.short_median
    if side <= THUMBNAIL_MAX_SIDE:
        size, why = THUMBNAIL_SIZE, f"thumbnails (<= {THUMBNAIL_MAX_SIDE} px): {THUMBNAIL_SIZE} px, CIFAR stem"
    elif side < LARGE_PHOTO_MIN_SIDE:
        size, why = PHOTO_SIZE, (f"small photos ({THUMBNAIL_MAX_SIDE + 1}-{LARGE_PHOTO_MIN_SIDE - 1} px): "
                                 f"{PHOTO_SIZE} px, ImageNet stem")
    else:
        size, why = LARGE_PHOTO_SIZE, (f"photos (>= {LARGE_PHOTO_MIN_SIDE} px): {LARGE_PHOTO_SIZE} px, "
                                       "ImageNet stem")
    fam = family_of(size)
    store = store_size(size, sample)
    why = f"{sample.describe()} -> {why}; {stored_note(size, store)}"
    return Resolution(size, fam == "thumbnails", store, fam, why)


def stored_note(size: int, store: int) -> str:
    if store > size:
        return f"decoded at {store} px so random crops have pixels to spare"
    return f"decoded at {store} px (the originals are no larger)"


def from_config(image_size: int, cifar_stem: bool, sample: SizeSample | None, why: str) -> Resolution:
    """The resolution a preset or checkpoint already fixes (only the store size is chosen here)."""
    return Resolution(image_size, cifar_stem, store_size(image_size, sample), family_of(image_size), why)
