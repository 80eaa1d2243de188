"""FAISS's BLAS switch for exact search: ``distance_compute_blas_threshold``, measured.

    python benchmarks/faiss_blas_threshold.py          # 50k / 1M / 10M vectors, ~3 min
    python benchmarks/faiss_blas_threshold.py --quick  # smoke test, seconds

Exact (Flat) search scans the database either query by query with SIMD kernels or as one BLAS
matrix product per block; FAISS picks BLAS when the number of queries reaches
``faiss.cvar.distance_compute_blas_threshold``. The FAISS 1.15 wheel ships it at 128,000, so a
batch of a few hundred queries against 10M vectors streams the 5 GB database once per query.
This times the same batched searches (k = 10, inner product, the clustered vectors of
search_scale.py) at the shipped threshold and at 20, the value FAISS used for years, plus
single queries and an IVF4096,Flat batch, where the coarse quantizer uses the same switch.
"""

from __future__ import annotations

import argparse
import sys

import faiss
import numpy as np

from benchmarks import common
from index.synthetic import clustered_unit_vectors
from instdisc.evaluation.stats import latency_summary

K = 10


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[50_000, 1_000_000, 10_000_000])
    p.add_argument("--queries", type=int, nargs="+", default=[1000, 1000, 200], help="batch size per size")
    p.add_argument("--thresholds", type=int, nargs="+", default=[faiss.cvar.distance_compute_blas_threshold, 20])
    p.add_argument("--singles", type=int, default=100, help="one-query calls timed per case")
    common.add_standard_args(p, "faiss_blas_threshold", "5,000 vectors")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.queries, args.singles = [5000], [100], 10
    common.use_threads(args.threads)
    shipped = faiss.cvar.distance_compute_blas_threshold
    rec = common.Record("faiss_blas_threshold", vars(args), args.out)
    rec.data["shipped_threshold"] = shipped
    for n, nq in zip(args.sizes, args.queries, strict=True):
        data = clustered_unit_vectors(n + nq, 128, 1000, 1.0, seed=0)
        x, q = data[:n], np.ascontiguousarray(data[n:])
        flat = faiss.IndexFlatIP(128)
        flat.add(x)
        ivf = None
        if n >= 100_000:
            ivf = faiss.index_factory(128, f"IVF{min(4096, n // 64)},Flat", faiss.METRIC_INNER_PRODUCT)
            ivf.train(x[:262_144])
            ivf.add(x)
            ivf.nprobe = 4
        for thr in args.thresholds:
            faiss.cvar.distance_compute_blas_threshold = thr
            for name, index in (("Flat", flat), ("IVF,Flat nprobe 4", ivf)):
                if index is None:
                    continue
                (batch,) = common.time_calls(lambda index=index, q=q: index.search(q, K), 1, warmup=0)
                one = [common.time_calls(lambda index=index, row=q[i : i + 1]: index.search(row, K), 1, warmup=0)[0]
                       for i in range(min(args.singles, nq))]
                rec.add({"n": n, "index": name, "threshold": thr, "queries": nq, "batch_s": round(batch, 3),
                         "batch_qps": round(nq / batch, 1), **{f"single_{k}": v for k, v in
                                                                latency_summary(one).items()}})
                rec.save(partial=True)
        faiss.cvar.distance_compute_blas_threshold = shipped
        del flat, ivf, data, x
    rec.data["table"] = common.table(rec.data["results"], ["n", "index", "threshold", "queries", "batch_qps",
                                                           "single_p50_ms"], "FAISS BLAS threshold")
    rec.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
