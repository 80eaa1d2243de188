"""The perceptual-hash baseline most duplicate tools ship: imagehash's 64-bit pHash, and every pair
of images within a maximum Hamming distance (imagededup's ``PHash`` default is 10)."""

from __future__ import annotations

import imagehash
import numpy as np
from PIL import Image
from tqdm import tqdm

IMAGEDEDUP_DEFAULT = 10  # imagededup PHash.find_duplicates(max_distance_threshold=10)
DISTANCES = (IMAGEDEDUP_DEFAULT, 4, 2)  # the default and two tighter ones
CHUNK = 512  # rows of the all-pairs distance matrix at a time


def phashes(images: list[Image.Image], progress: bool = True) -> np.ndarray:
    """(N,) uint64: each image's pHash bits."""
    out = np.empty(len(images), np.uint64)
    for i, im in enumerate(tqdm(images, desc="phash", unit="img", disable=not progress, leave=False)):
        out[i] = np.uint64(int(str(imagehash.phash(im)), 16))
    return out


_BITS16 = np.array([bin(i).count("1") for i in range(1 << 16)], np.uint8)


def popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (four 16-bit table look-ups)."""
    x = x.astype(np.uint64)
    return sum(_BITS16[((x >> np.uint64(s)) & np.uint64(0xFFFF)).astype(np.int64)].astype(np.int32)
               for s in (0, 16, 32, 48))


def pairs_within(hashes: np.ndarray, max_distance: int) -> set[tuple[int, int]]:
    """Every pair (a < b) whose hashes differ in at most ``max_distance`` bits (exact, all pairs)."""
    n = len(hashes)
    found: set[tuple[int, int]] = set()
    for start in range(0, n, CHUNK):
        block = hashes[start:start + CHUNK]
        d = popcount(block[:, None] ^ hashes[None, :])
        a, b = np.nonzero(d <= max_distance)
        a = a + start
        keep = a < b
        found.update(zip(a[keep].tolist(), b[keep].tolist(), strict=True))
    return found
