"""Similarity search at scale: Flat, IVF-Flat, IVF-SQ8, IVF-PQ, HNSW and ``auto`` on 50k, 1M and 10M vectors.

    python benchmarks/search_scale.py                       # 50k and 1M (about 15 min on 2 cores)
    python benchmarks/search_scale.py --sizes 10000000 --out benchmarks/results/search_scale_10m.json
    python benchmarks/search_scale.py --quick               # smoke test, seconds

Data: ``index.synthetic.clustered_unit_vectors(n + queries, 128, centres=1000, spread=1.0,
seed=0)`` -- each row is ``normalise(c + 1.0 * g / sqrt(128))`` for one of 1000 random unit
centres ``c`` and a standard Gaussian ``g``, so the vectors clump like real embeddings; the
last ``queries`` rows are never indexed and serve as queries. Every index is built, trained
and tuned (nprobe / efSearch raised until recall@10 >= 0.95 on held-out database rows) by
``index.auto.build_vector_index``, the code ``scripts/build_index.py`` runs. Then, on the
fresh queries: recall@10 against exact search, single-query p50 / p99 latency (k = 10, one
query per call, at most ``--singles`` calls or ``--single-seconds``), batched throughput (all
queries in one call) and the serialised index size. Exact Flat is also compared with plain
numpy and torch brute force (matmul + top-k) on the same vectors.

Time-boxes (recorded in the JSON): IVF k-means trains on at most ``--max-train`` vectors;
HNSW is skipped above ``--hnsw-max`` vectors (its graph build is single-insert-bound and
takes hours for 10M on 2 cores); above 2M vectors only ``--big-queries`` queries are used.
The JSON is rewritten after every index, so a stopped run keeps what it measured.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from benchmarks import common
from index import auto, faiss_util
from index.synthetic import clustered_unit_vectors
from instdisc.evaluation.stats import latency_summary
from instdisc.plots import pyplot

TYPES = ("flat", "ivf", "ivfsq", "ivfpq", "hnsw", "auto")
K = 10
BIG = 2_000_000


def index_bytes(index: faiss.Index) -> int:
    """Size of the serialised index (what ``build_index.py`` writes to disk and loads to RAM)."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "i.faiss")
        faiss.write_index(index, path)
        return os.path.getsize(path)


def singles(search, q: np.ndarray, max_calls: int, max_seconds: float) -> list[float]:
    """Per-call seconds of one-query searches, stopping at ``max_calls`` or ``max_seconds``."""
    search(q[:1])
    out, start = [], time.perf_counter()
    for row in q[:max_calls]:
        t = time.perf_counter()
        search(row[None])
        out.append(time.perf_counter() - t)
        if time.perf_counter() - start > max_seconds and len(out) >= 10:
            break
    return out


def numpy_topk(x: np.ndarray, q: np.ndarray, k: int, block: int = 32) -> np.ndarray:
    """Plain numpy brute force: matmul, argpartition, sort the k (query blocks bound memory)."""
    out = np.empty((len(q), k), np.int64)
    for i in range(0, len(q), block):
        s = q[i : i + block] @ x.T
        part = np.argpartition(-s, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, part, 1), axis=1)
        out[i : i + block] = np.take_along_axis(part, order, 1)
    return out


def torch_topk(x: torch.Tensor, q: np.ndarray, k: int, block: int = 256) -> np.ndarray:
    """Plain torch brute force: one matmul + topk per block of queries."""
    out = []
    for i in range(0, len(q), block):
        out.append((torch.from_numpy(q[i : i + block]) @ x.T).topk(k, dim=1).indices)
    return torch.cat(out).numpy()


def measure(name: str, search, q: np.ndarray, truth: np.ndarray, args) -> dict:
    t0 = time.perf_counter()
    found = search(q)
    batch_s = time.perf_counter() - t0
    lat = singles(search, q, args.singles, args.single_seconds)
    return {"recall_at_10": round(faiss_util.recall_at_k(found, truth), 4), "batch_qps": round(len(q) / batch_s, 1),
            **{f"single_{k}": v for k, v in latency_summary(lat).items()}}


def run_size(n: int, args, rec: common.Record) -> None:
    nq = args.queries if n <= BIG else args.big_queries
    t0 = time.perf_counter()
    data = clustered_unit_vectors(n + nq, args.d, args.centres, args.spread, seed=0)
    x, q = data[:n], np.ascontiguousarray(data[n:])
    gen_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    _, truth = faiss.knn(q, x, K, metric=faiss.METRIC_INNER_PRODUCT)
    print(f"n={n:,}: generated in {gen_s:.1f}s, exact truth for {nq} queries in {time.perf_counter() - t1:.1f}s",
          flush=True)
    base = {"n": n, "d": args.d, "queries": nq}

    xt = torch.from_numpy(x)  # shares x's memory
    baselines = (("numpy brute force", lambda qq, x=x: numpy_topk(x, qq, K)),
                 ("torch brute force", lambda qq, xt=xt: torch_topk(xt, qq, K)))
    for name, fn in baselines if args.baselines else ():
        rec.add({**base, "index": name, "build_total_s": 0.0, "bytes": x.nbytes,
                 **measure(name, fn, q, truth, args)})
        rec.save(partial=True)

    built: dict[str, dict] = {}
    for kind in args.types:
        if kind == "hnsw" and n > args.hnsw_max:
            rec.add({**base, "index": "hnsw", "skipped": f"HNSW graph build above {args.hnsw_max:,} vectors does "
                     "not fit the time box on 2 cores (insertion-bound)"})
            rec.save(partial=True)
            continue
        plan = auto.plan_index(n, args.d, kind, auto.parse_bytes(args.memory_budget), auto.FLAT_MAX_VECTORS)
        if kind == "auto":
            same = next((k for k, row in built.items() if row["factory"] == plan.factory), None)
            if same is not None:  # auto's plan is one already measured: report it, do not build it twice
                rec.add({**built[same], "index": "auto", "same_as": same, "reason": plan.reason})
                rec.save(partial=True)
                continue
        gc.collect()
        t2 = time.perf_counter()
        with common.capped_training(args.max_train):
            index, info = auto.build_vector_index(
                x, None, kind, auto.parse_bytes(args.memory_budget), n_queries=min(1000, nq * 5),
                progress=n > BIG)  # long builds show their progress (and a stopped run how far it got)
            info = info.to_dict()  # recorded in the JSON as is
        build_s = time.perf_counter() - t2
        params = faiss_util.search_params(index, info["params"])

        def search(qq, index=index, params=params):
            return index.search(qq, K, params=params)[1]

        row = {**base, "index": kind, "factory": info["factory"], "reason": info["reason"],
               "params": info["params"], "train_vectors": info["train_vectors"],
               "build_s": round(info["build_seconds"], 2), "tune_s": round(info["tune_seconds"], 2),
               "build_total_s": round(build_s, 2), "bytes": index_bytes(index),
               "tuning_recall_at_10": info["recall_at_10"], **measure(kind, search, q, truth, args)}
        built[kind] = row
        rec.add(row)
        rec.save(partial=True)
        print(f"  {kind}: {info['factory']} {info['params']} built in {build_s:.1f}s, recall "
              f"{row['recall_at_10']}, p50 {row['single_p50_ms']} ms", flush=True)
        del index, search, params
    del data, x, q


def plot(rec: common.Record) -> Path:
    plt = pyplot()
    rows = [r for r in rec.data["results"] if "single_p50_ms" in r]
    sizes = sorted({r["n"] for r in rows})
    names = list(dict.fromkeys(r["index"] for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    width = 0.8 / max(1, len(sizes))
    for j, n in enumerate(sizes):
        by = {r["index"]: r for r in rows if r["n"] == n}
        xs = [i + j * width for i in range(len(names))]
        for ax, key in zip(axes, ("single_p50_ms", "batch_qps", "recall_at_10"), strict=True):
            ax.bar(xs, [by[m][key] if m in by else 0 for m in names], width, label=f"{n:,}")
    for ax, title in zip(axes, ("single-query p50 (ms, log)", "batched queries/s (log)", "recall@10 vs exact"),
                         strict=True):
        ax.set_xticks([i + width * (len(sizes) - 1) / 2 for i in range(len(names))])
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.set_title(title)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[2].set_ylim(0, 1.05)
    axes[2].axhline(0.95, color="grey", lw=0.8, ls="--")
    axes[0].legend(title="vectors")
    return common.save_figure(fig, rec, "Search on clustered 128-d unit vectors")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[50_000, 1_000_000])
    p.add_argument("--types", nargs="+", default=list(TYPES), choices=TYPES)
    common.add_vector_args(p)
    p.add_argument("--queries", type=int, default=1000, help="fresh queries (sizes up to 2M)")
    p.add_argument("--big-queries", type=int, default=200, help="fresh queries above 2M vectors")
    p.add_argument("--singles", type=int, default=300, help="single-query calls timed (at most)")
    p.add_argument("--single-seconds", type=float, default=20.0, help="time box for the single-query calls")
    p.add_argument("--max-train", type=int, default=262_144, help="IVF/PQ training sample cap")
    p.add_argument("--hnsw-max", type=int, default=1_000_000, help="skip HNSW above this many vectors")
    p.add_argument("--memory-budget", default="8G")
    p.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=True,
                   help="also time plain numpy / torch brute force (--no-baselines: FAISS indexes only)")
    common.add_standard_args(p, "search_scale", "4,000 vectors, 50 queries")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.queries, args.singles, args.single_seconds = [4000], 50, 20, 2.0
    common.use_threads(args.threads)
    rec = common.Record("search_scale", vars(args), args.out)
    rec.data["data"] = {"generator": "index.synthetic.clustered_unit_vectors", "d": args.d,
                        "centres": args.centres, "spread": args.spread, "seed": 0,
                        "formula": "normalise(centre + spread * N(0, I) / sqrt(d)), centres random unit vectors"}
    rec.data["faiss_threads"] = faiss.omp_get_max_threads()
    for n in args.sizes:
        run_size(n, args, rec)
    rec.save()
    cols = ["n", "index", "factory", "params", "build_total_s", "bytes", "recall_at_10", "single_p50_ms",
            "single_p99_ms", "batch_qps"]
    rec.data["table"] = common.table(rec.data["results"], cols, "search at scale")
    rec.data["plot"] = str(plot(rec))
    rec.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
