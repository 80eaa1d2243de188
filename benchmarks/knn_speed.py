"""Weighted-kNN evaluation speed: ``instdisc.knn`` (chunked) against the naive full similarity matrix.

    python benchmarks/knn_speed.py             # 10k queries vs 50k and 1.28M gallery rows (~3 min)
    python benchmarks/knn_speed.py --quick     # smoke test, seconds

Gallery and queries are ``index.synthetic.clustered_unit_vectors`` (128-d, 1000 centres,
spread 1.0; queries drawn with another seed) with random labels in 10 classes. Both
methods do the paper's evaluation: top-200 by cosine, votes weighted exp(s / 0.1), argmax.
*chunked* is ``instdisc.knn.knn_predict`` (1024 queries x 65,536 rows at a time, running
top-k merge); *naive* is ``(Q @ G.T).topk(200)`` then the same vote. Each case runs in a
fresh subprocess; peak memory is VmHWM reset just before the search (so it counts the
search's own allocations on top of the loaded data). The naive method's Q x N float32
matrix (10k x 1.28M = 51 GB) cannot exist on a 24 GiB machine; it is run on a smaller query
batch and its time extrapolated linearly to 10k queries -- labelled so in the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from benchmarks import common
from index.synthetic import clustered_unit_vectors
from instdisc.knn import knn_predict, weighted_vote

K, TAU, CLASSES = 200, 0.1, 10


def naive_predict(queries: torch.Tensor, bank: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The whole Q x N similarity matrix at once, then top-k and the same weighted vote."""
    s, i = (queries @ bank.T).topk(K, dim=1)
    return weighted_vote(s, labels[i], CLASSES, K, TAU).argmax(1)


def run_case(method: str, n: int, nq: int) -> dict:
    bank = torch.from_numpy(clustered_unit_vectors(n, 128, 1000, 1.0, seed=0))
    queries = torch.from_numpy(clustered_unit_vectors(nq, 128, 1000, 1.0, seed=1))
    labels = torch.randint(0, CLASSES, (n,), generator=torch.Generator().manual_seed(0))
    before = common.rss_mib()
    common.reset_peak_rss()
    t0 = time.perf_counter()
    if method == "chunked":
        pred = knn_predict(queries, bank, labels, ks=(K,), temperature=TAU, num_classes=CLASSES)[K]
    else:
        pred = naive_predict(queries, bank, labels)
    secs = time.perf_counter() - t0
    return {"seconds": round(secs, 3), "peak_extra_mib": round(common.peak_rss_mib() - before, 1),
            "data_mib": round(before, 1), "predictions": int(pred.shape[0])}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--case" in argv:
        p = argparse.ArgumentParser()
        p.add_argument("--case", choices=("chunked", "naive"))
        p.add_argument("--n", type=int)
        p.add_argument("--queries", type=int)
        a = p.parse_args(argv)
        print(json.dumps(run_case(a.case, a.n, a.queries)))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[50_000, 1_280_000])
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--naive-max-gib", type=float, default=8.0,
                   help="largest naive similarity matrix to allocate; above it fewer queries, extrapolated")
    common.add_standard_args(p, "knn_speed", "500 queries vs 20k rows")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.queries, args.naive_max_gib = [20000], 500, 0.02
    common.use_threads(args.threads)
    rec = common.Record("knn_speed", vars(args), args.out)
    for n in args.sizes:
        for method in ("chunked", "naive"):
            nq = args.queries
            matrix = 4 * nq * n
            row = {"n": n, "method": method, "queries": nq}
            if method == "naive":
                row["similarity_matrix_gib"] = round(matrix / 2**30, 2)
                if matrix > args.naive_max_gib * 2**30:
                    nq = max(1, int(args.naive_max_gib * 2**30 / (4 * n)) // 100 * 100 or 1)
                    row["note"] = (f"a {nq:,} x {n:,} matrix for {args.queries:,} queries needs "
                                   f"{matrix / 2**30:.0f} GiB (machine: 24 GiB): ran {nq:,} queries, "
                                   "time extrapolated linearly")
            res = common.run_case_subprocess(__file__, ["--case", method, "--n", str(n), "--queries", str(nq)])
            row.update(res, ran_queries=nq)
            row["seconds_for_all_queries"] = round(res["seconds"] * args.queries / nq, 2)
            row["extrapolated"] = nq != args.queries
            row["queries_per_s"] = round(nq / res["seconds"], 1)
            rec.add(row)
            print(f"n={n:,} {method}: {row['seconds_for_all_queries']} s, +{row['peak_extra_mib']} MiB", flush=True)
            rec.save(partial=True)
    for r in rec.data["results"]:
        if r["method"] == "naive":
            c = next(c for c in rec.data["results"] if c["method"] == "chunked" and c["n"] == r["n"])
            r["naive_over_chunked_time"] = round(r["seconds_for_all_queries"] / c["seconds_for_all_queries"], 2)
    rec.save()
    rec.data["table"] = common.table(rec.data["results"], [
        "n", "method", "queries", "ran_queries", "seconds_for_all_queries", "extrapolated", "queries_per_s",
        "peak_extra_mib", "naive_over_chunked_time"], "weighted kNN (k = 200), 10 classes")
    rec.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
