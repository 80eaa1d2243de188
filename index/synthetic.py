"""Synthetic clustered unit vectors: a stand-in for real embeddings in tests and benchmarks.

Real instance-discrimination features form clumps (similar images), so uniformly random
vectors would make IVF look worse than it is; points scattered around random centres are
closer to what the index will see.
"""

from __future__ import annotations

import numpy as np


def clustered_unit_vectors(
    n: int, d: int = 128, centres: int = 1000, spread: float = 0.6, seed: int = 0, chunk: int = 262_144
) -> np.ndarray:
    """(n, d) float32 unit rows: ``normalise(centre + spread * gaussian / sqrt(d))``."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    out = np.empty((n, d), dtype=np.float32)
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        x = c[rng.integers(0, centres, m)] + rng.standard_normal((m, d), dtype=np.float32) * (spread / np.sqrt(d))
        out[i : i + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out
