"""The knobs of an evaluation, one place for their defaults (``scripts/evaluate.py``'s flags map one to one)."""

from __future__ import annotations

from dataclasses import dataclass

from .baselines import BASELINES


@dataclass
class EvalOptions:
    """Knobs of an evaluation (the script's flags map one to one)."""

    ks: tuple[int, ...] = (1, 20, 200)
    pr_ks: tuple[int, ...] = (1, 10, 100)
    limit: int | None = None  # evaluate a seeded random subset of this many queries
    baselines: tuple[str, ...] = BASELINES
    near_dup_samples: int = 500
    ann_k: int = 10
    latency_queries: int = 200  # single-query vector searches timed
    e2e_queries: int = 50  # single image -> result searches timed
    e2e_batch: int = 256  # batched image -> result throughput: this many images
    speed_batch: int = 1000  # batched vector search: queries per call
    grid_queries: int = 8
    grid_k: int = 10
    pixel_size: int = 32  # raw-pixel baseline resolution (images larger than this are area-resized)
    imagenet_size: int | None = None  # ImageNet baseline input size (default: 224 on a GPU, 64+ on the CPU)
    faiss_threads: int | None = None  # OpenMP threads of FAISS searches (default: FAISS's own, all cores)
    device: str | None = None
    precision: str = "auto"
    batch_size: int = 256
    seed: int = 0
    progress: bool = True
