"""What ``--index-type auto`` does with a million 128-d unit vectors: chosen index, build time, recall.

    python benchmarks/auto_1m.py [--n 1000000] [--threads 1] [--out benchmarks/results/auto_1m.json]
    python benchmarks/auto_1m.py --quick --out /tmp/auto.json   # CI smoke test: 20k vectors, IVF forced

The vectors are synthetic but clustered like real embeddings (``index.synthetic``). After the
build (which tunes nprobe / efSearch on held-out database vectors), recall@10 is measured
again on queries that were never indexed, against exact brute-force search, and search
latency is timed for a batch and for single queries, next to exact Flat search.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import faiss
import numpy as np

from benchmarks.common import add_vector_args, cpu_seconds, measured_load
from index.auto import (
    DEFAULT_TARGET_RECALL,
    FLAT_MAX_VECTORS,
    build_vector_index,
    parse_bytes,
)
from index.faiss_util import recall_at_k, search_params
from index.synthetic import clustered_unit_vectors


def timed_search(index: faiss.Index, q: np.ndarray, k: int, params=None, singles: int = 200) -> dict:
    t0 = time.perf_counter()
    _, found = index.search(q, k, params=params)
    batch_ms = (time.perf_counter() - t0) * 1000
    lat = []
    for row in q[:singles]:
        t = time.perf_counter()
        index.search(row[None], k, params=params)
        lat.append((time.perf_counter() - t) * 1000)
    return {"found": found, "batch_ms_per_query": batch_ms / len(q), "single_p50_ms": float(np.percentile(lat, 50)),
            "single_p99_ms": float(np.percentile(lat, 99))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    add_vector_args(p)
    p.add_argument("--queries", type=int, default=1000, help="fresh (never indexed) queries for the final check")
    p.add_argument("--target-recall", type=float, default=DEFAULT_TARGET_RECALL)
    p.add_argument("--memory-budget", default="8G")
    p.add_argument("--flat-max", type=int, default=FLAT_MAX_VECTORS)
    p.add_argument("--hnsw", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="FAISS OpenMP threads (default: FAISS's)")
    p.add_argument("--no-flat-baseline", action="store_true")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 20,000 vectors in 50 clusters, 100 fresh queries, Flat only below 5,000 "
                        "(so auto builds and tunes an IVF index as it does at 1M)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "auto_1m.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.centres, args.queries, args.flat_max = 20_000, 50, 100, 5_000
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    load_before = os.getloadavg()
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    data = clustered_unit_vectors(args.n + args.queries, args.d, args.centres, args.spread, seed=0)
    x, q = data[: args.n], np.ascontiguousarray(data[args.n :])
    gen_s = time.perf_counter() - t0
    print(f"generated {args.n} x {args.d} in {gen_s:.1f}s; building auto ...", flush=True)

    t1 = time.perf_counter()
    index, info = build_vector_index(x, None, "auto", parse_bytes(args.memory_budget), args.target_recall,
                                     args.flat_max, args.hnsw, progress=True)
    info = info.to_dict()  # recorded in the JSON as is
    info = info.to_dict() if hasattr(info, "to_dict") else info  # an IndexInfo record, or a plain dict
    build_total = time.perf_counter() - t1
    print(f"chose {info['factory']} ({info['reason']}); params {info['params']}, recall@10 {info['recall_at_10']} "
          f"in {build_total:.1f}s", flush=True)

    t2 = time.perf_counter()
    _, truth = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)
    exact_s = time.perf_counter() - t2
    tuned = timed_search(index, q, 10, search_params(index, info["params"]))
    fresh_recall = recall_at_k(tuned.pop("found"), truth)
    result = {
        "n": args.n, "d": args.d, "data": {"generator": "index.synthetic.clustered_unit_vectors",
                                           "centres": args.centres, "spread": args.spread, "seed": 0},
        "chosen": {k: info[k] for k in ("type", "factory", "reason", "params", "estimated_bytes", "memory_budget")},
        "build_seconds": info["build_seconds"],
        "tune_seconds": info["tune_seconds"],
        "build_plus_tune_seconds": round(build_total, 2),
        "train_vectors": info["train_vectors"],
        "recall_at_10_tuning": info["recall_at_10"],
        "target_recall": info["target_recall"],
        "target_reached": info["target_reached"],
        "tuning_curve": info["tuning"],
        "recall_at_10_fresh_queries": round(fresh_recall, 4),
        "fresh_queries": len(q),
        "search": {k: round(v, 4) for k, v in tuned.items()},
        "exact_brute_force_ms_per_query": round(exact_s * 1000 / len(q), 4),
    }
    if not args.no_flat_baseline and info["type"] != "flat":
        flat = faiss.IndexFlatIP(args.d)
        flat.add(x)
        fl = timed_search(flat, q, 10)
        fl.pop("found")
        result["flat_baseline_search"] = {k: round(v, 4) for k, v in fl.items()}
        del flat
    result["machine"] = {
        "cpu_count": os.cpu_count(), "faiss_threads": faiss.omp_get_max_threads(), "faiss": faiss.__version__,
        "faiss_gpus": faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0,
        "python": platform.python_version(), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
    }
    result["load"] = measured_load(cpu0, load_before, result["machine"]["loadavg_after"])
    result["command"] = " ".join(["python benchmarks/auto_1m.py", *(sys.argv[1:] if argv is None else argv)])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "tuning_curve"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
