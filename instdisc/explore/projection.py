"""A 2-D map of the collection: PCA by default (exact, seconds on 1M vectors), UMAP or t-SNE where
their package is installed (``umap-learn``; ``openTSNE`` or scikit-learn), fitted on a sample
and, for UMAP, applied to every vector."""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass

import numpy as np

from .errors import ExploreError

METHODS = ("pca", "umap", "tsne")
FIT_SAMPLE = 20_000  # UMAP / t-SNE fit on at most this many vectors (t-SNE maps only those)
CHUNK = 262_144


@dataclass
class Projection:
    """Row ``i`` of ``xy`` places collection row ``rows[i]`` (all rows for PCA and UMAP)."""

    method: str
    rows: np.ndarray  # (M,) int64
    xy: np.ndarray  # (M, 2) float32
    explained: list[float]  # PCA: share of the variance on each axis; empty otherwise
    seconds: float


def available() -> list[str]:
    """The methods usable here (PCA always)."""
    out = ["pca"]
    if importlib.util.find_spec("umap"):
        out.append("umap")
    if importlib.util.find_spec("openTSNE") or importlib.util.find_spec("sklearn"):
        out.append("tsne")
    return out


def pca_2d(vectors: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Projection on the two leading principal axes (covariance accumulated in chunks)."""
    x = np.asarray(vectors, dtype=np.float32)
    mean = x.mean(axis=0, dtype=np.float64)
    cov = np.zeros((x.shape[1], x.shape[1]), np.float64)
    for i in range(0, len(x), CHUNK):
        c = x[i:i + CHUNK] - mean
        cov += c.T.astype(np.float64) @ c
    w, v = np.linalg.eigh(cov / max(1, len(x) - 1))
    axes = v[:, ::-1][:, :2]
    axes *= np.sign(axes[np.abs(axes).argmax(axis=0), [0, 1]])  # a fixed sign: the map does not flip
    xy = np.concatenate([(x[i:i + CHUNK] - mean) @ axes for i in range(0, len(x), CHUNK)]).astype(np.float32)
    total = float(w.sum())
    return xy, [float(w[-1] / total), float(w[-2] / total)] if total > 0 else [0.0, 0.0]


def project(vectors: np.ndarray, method: str = "pca", seed: int = 0) -> Projection:
    """Place every row (or, for t-SNE, a sample) on a plane."""
    if method not in METHODS:
        raise ExploreError(f"unknown map method {method!r}; choose from {METHODS}")
    if method not in available():
        pkg = "umap-learn" if method == "umap" else "openTSNE or scikit-learn"
        raise ExploreError(f"--map {method} needs {pkg} (pip install it), or use --map pca")
    if len(vectors) < 3:
        raise ExploreError(f"a map needs at least 3 vectors, got {len(vectors)}")
    t0 = time.perf_counter()
    n = len(vectors)
    rows = np.arange(n, dtype=np.int64)
    explained: list[float] = []
    if method == "pca":
        xy, explained = pca_2d(vectors)
    else:
        rng = np.random.default_rng(seed)
        fit = np.sort(rng.choice(n, min(n, FIT_SAMPLE), replace=False))
        if method == "umap":
            import umap

            model = umap.UMAP(n_components=2, metric="cosine", random_state=seed).fit(vectors[fit])
            xy = model.transform(vectors) if len(fit) < n else model.embedding_
        else:
            rows = fit
            if importlib.util.find_spec("openTSNE"):
                from openTSNE import TSNE
                xy = np.asarray(TSNE(metric="cosine", random_state=seed).fit(vectors[fit]))
            else:
                from sklearn.manifold import TSNE
                xy = TSNE(metric="cosine", random_state=seed, init="pca").fit_transform(vectors[fit])
    return Projection(method, rows, np.asarray(xy, dtype=np.float32), explained, time.perf_counter() - t0)
