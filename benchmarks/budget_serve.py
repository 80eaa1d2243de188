"""10M vectors in a 2 GB budget: what ``auto --memory-budget`` builds, and what serving it costs.

    python benchmarks/budget_serve.py [--n 10000000] [--memory-budget 2G]   # ~30-60 min on 2 quiet cores
    python benchmarks/budget_serve.py --serve ram mmap --max-train 262144   # both ways from one build, ~10 min
    python benchmarks/budget_serve.py --quick                               # smoke test, seconds

Builds the index ``scripts/build_index.py --index-type auto --memory-budget B`` would build
(``index.auto.build_vector_index``) on clustered 128-d unit vectors (``index.synthetic``), writes
it to a temporary file with fresh (never indexed) queries and their exact top-10, and then, in a
**fresh process** so its memory is the serving memory alone (no raw vectors, no build buffers):
opens the index (read into RAM, or memory-mapped: ``--serve ram mmap`` serves the same file both
ways, each in its own fresh process), answers the first query, times single queries
(p50/p99) and measures recall@10 against the exact answers, and reports the process's peak
resident memory (``VmHWM``). Figures to compare against: recall@10 >= 0.95, p50 <= 5 ms, peak RSS <= 2.5 GB.
``--max-train`` caps the IVF k-means sample (a time box; the default trains as the library does).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from benchmarks import common
from index.auto import build_vector_index, parse_bytes
from index.faiss_util import recall_at_k, search_params
from index.synthetic import clustered_unit_vectors
from instdisc.evaluation.stats import latency_summary

K = 10


def serve_case(index_path: str, queries_path: str, truth_path: str, knobs: str, mmap: bool, singles: int) -> dict:
    """In this (fresh) process: open, first query, single-query latency, recall, peak RSS."""
    q, truth = np.load(queries_path), np.load(truth_path)
    rss0 = common.rss_mib()
    t0 = time.perf_counter()
    index = faiss.read_index(index_path, faiss.IO_FLAG_MMAP if mmap else 0)
    opened = time.perf_counter() - t0
    params = search_params(index, json.loads(knobs))
    t1 = time.perf_counter()
    index.search(q[:1], K, params=params)
    first = time.perf_counter() - t1
    lat = []
    for row in q[:singles]:
        t = time.perf_counter()
        index.search(row[None], K, params=params)
        lat.append(time.perf_counter() - t)
    _, found = index.search(q, K, params=params)
    return {"open_s": round(opened, 3), "first_query_ms": round(first * 1e3, 3),
            "open_plus_first_query_s": round(opened + first, 3), "recall_at_10": round(recall_at_k(found, truth), 4),
            "rss_before_open_mib": round(rss0, 1), "peak_rss_mib": round(common.peak_rss_mib(), 1),
            **{f"single_{k}": v for k, v in latency_summary(lat).items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10_000_000)
    common.add_vector_args(p)
    p.add_argument("--queries", type=int, default=1000, help="fresh queries")
    p.add_argument("--singles", type=int, default=300, help="single-query calls timed")
    p.add_argument("--memory-budget", default="2G")
    p.add_argument("--serve", nargs="+", choices=("ram", "mmap"), default=["ram"],
                   help="how the serving process opens the index: read into RAM, memory-mapped, or both (one row each)")
    p.add_argument("--max-train", type=int, default=None,
                   help="cap the IVF k-means training sample (default: the library's 64 per list)")
    p.add_argument("--case", nargs=6, metavar=("INDEX", "QUERIES", "TRUTH", "KNOBS", "MMAP", "SINGLES"),
                   help=argparse.SUPPRESS)  # the fresh serving process
    common.add_standard_args(p, "budget_serve", "20k vectors under a 4 MB budget, 100 queries")
    args = p.parse_args(argv)
    common.use_threads(args.threads)
    if args.case:
        ip, qp, tp, knobs, mmap, singles = args.case
        print(json.dumps(serve_case(ip, qp, tp, knobs, mmap == "1", int(singles))))
        return 0
    if args.quick:
        args.n, args.centres, args.queries, args.singles, args.memory_budget = 20_000, 50, 100, 50, "4M"
    rec = common.Record("budget_serve", vars(args), args.out)
    budget = parse_bytes(args.memory_budget)
    data = clustered_unit_vectors(args.n + args.queries, args.d, args.centres, args.spread, seed=0)
    x, q = data[: args.n], np.ascontiguousarray(data[args.n :])
    t0 = time.perf_counter()
    with common.capped_training(args.max_train):
        index, info = build_vector_index(x, None, "auto", budget, progress=args.n > 1_000_000)
    build_s = time.perf_counter() - t0
    _, truth = faiss.knn(q, x, K, metric=faiss.METRIC_INNER_PRODUCT)
    del data, x
    with tempfile.TemporaryDirectory() as tmp:
        paths = [str(Path(tmp) / name) for name in ("index.faiss", "q.npy", "truth.npy")]
        faiss.write_index(index, paths[0])
        np.save(paths[1], q)
        np.save(paths[2], truth)
        file_bytes = Path(paths[0]).stat().st_size
        del index
        for mode in dict.fromkeys(args.serve):
            served = common.run_case_subprocess(Path(__file__), [
                "--case", *paths, json.dumps(info.params), "1" if mode == "mmap" else "0", str(args.singles),
                *([] if args.threads is None else ["--threads", str(args.threads)])])
            row = rec.add({
                "n": args.n, "d": args.d, "memory_budget": budget, "factory": info.factory, "type": info.type,
                "reason": info.reason, "params": info.params, "estimated_bytes": info.estimated_bytes,
                "file_bytes": file_bytes, "bytes_per_vector": round(file_bytes / args.n, 2),
                "tuning_recall_at_10": info.recall_at_10, "target_reached": info.target_reached,
                "train_vectors": info.train_vectors, "build_s": round(build_s, 2), "mmap": mode == "mmap", **served})
            rec.save(partial=True)
            print(f"{row['factory']} {row['params']} ({mode}): {row['bytes_per_vector']} B/vector, recall@10 "
                  f"{row['recall_at_10']}, p50 {row['single_p50_ms']} ms, p99 {row['single_p99_ms']} ms, peak RSS "
                  f"{row['peak_rss_mib']} MiB, open + first query {row['open_plus_first_query_s']} s", flush=True)
    rec.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
