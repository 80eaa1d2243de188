"""The index itself: recall@k of its configured search against exact search, batched throughput and
single-query latency (vectors only, and image file -> results)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from index.faiss_util import recall_at_k
from index.search import SearchIndex
from instdisc.data import ImageCollection

from .options import EvalOptions
from .stats import latency_summary


def ann_and_batched(idx: SearchIndex, q: np.ndarray, exact_top: np.ndarray, o: EvalOptions) -> tuple[dict, dict]:
    """Recall@k of the configured search vs exact on the index's vectors, timing the batched calls."""
    k = exact_top.shape[1]
    idx.search_vectors(q[: min(len(q), 8)], k)  # warm-up
    found = np.full((len(q), k), -1, dtype=np.int64)
    elapsed = 0.0
    for i in tqdm(range(0, len(q), o.speed_batch), desc="index search", disable=not o.progress, leave=False):
        t = time.perf_counter()
        hits = idx.search_vectors(q[i : i + o.speed_batch], k)
        elapsed += time.perf_counter() - t
        for j, h in enumerate(hits):
            found[i + j, : len(h)] = [x.id for x in h]
    ann = {"k": k, "queries": len(q), "recall": recall_at_k(found, exact_top),
           "index_type": idx.manifest.index.type, "params": idx.manifest.index.params,
           "build_time_recall": idx.manifest.index.recall_at_10,
           "build_time_recall_queries": idx.manifest.index.recall_query_kind}
    batched = {"queries": len(q), "batch": o.speed_batch, "k": k, "seconds": elapsed,
               "qps": len(q) / elapsed if elapsed > 0 else float("nan")}
    return ann, batched


def latency(idx: SearchIndex, q: np.ndarray, qc: ImageCollection, o: EvalOptions) -> dict:
    """Single-query latency (vectors; image file -> results) and batched image throughput."""
    k = o.ann_k
    out: dict = {}
    n = min(o.latency_queries, len(q))
    times = []
    for i in range(n + 5):
        t = time.perf_counter()
        idx.search_vectors(q[i % len(q)][None], k)
        if i >= 5:  # the first calls warm caches up
            times.append(time.perf_counter() - t)
    out["single_vector"] = {**latency_summary(times, digits=None), "k": k}
    files = [str(Path(qc.root) / p) for p in qc.paths]
    n_e2e = min(o.e2e_queries, len(files))
    times = []
    for i in range(n_e2e + 2):
        t = time.perf_counter()
        idx.search_images([files[i % len(files)]], k)
        if i >= 2:
            times.append(time.perf_counter() - t)
    out["single_image"] = {**latency_summary(times, digits=None), "k": k, "what": "file -> decode -> embed -> search"}
    nb = min(o.e2e_batch, len(files))
    if nb:
        t = time.perf_counter()
        for i in range(0, nb, 128):
            idx.search_images(files[i : min(nb, i + 128)], k)
        el = time.perf_counter() - t
        out["batched_images"] = {"images": nb, "batch": 128, "seconds": el, "qps": nb / el if el > 0 else None}
    return out
