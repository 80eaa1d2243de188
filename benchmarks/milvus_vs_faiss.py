"""Milvus Lite beside FAISS on the same vectors: build time, recall@10, latency, resident memory.

    python benchmarks/milvus_vs_faiss.py [--n 1000000] [--cases faiss-auto milvus-FLAT milvus-IVF_FLAT]
    python benchmarks/milvus_vs_faiss.py --quick --out /tmp/mvf.json   # CI smoke test: 2,000 vectors

Each case runs in a fresh process (so its peak RSS is its own) on the same seeded clustered unit
vectors (``index.synthetic``): ``faiss-auto`` is what ``build_index.py`` builds by default
(``--index-type auto``), ``milvus-FLAT`` / ``milvus-IVF_FLAT`` are the two index types Milvus Lite
has, built as ``--backend milvus`` builds them (the same schema with metadata fields, nlist from
the same rule, nprobe tuned on held-out vectors to the same recall target). Recall@10 is measured
on queries that were never indexed against exact search; latency for single queries and for
batches of ``--batch`` queries; memory as the process's resident set after the build with the input
arrays freed, and its peak.
"""

from __future__ import annotations

import argparse
import gc
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import (
    Record,
    add_standard_args,
    add_vector_args,
    peak_rss_mib,
    rss_mib,
    run_case_subprocess,
    use_threads,
)
from index.auto import DEFAULT_TARGET_RECALL, FLAT_MAX_VECTORS
from index.synthetic import clustered_unit_vectors

CASES = ("faiss-auto", "milvus-FLAT", "milvus-IVF_FLAT")
K = 10
SINGLES = 200  # single-query latency samples
BATCHES = 20  # batched-latency samples
QUICK = {"n": 2_000, "centres": 20, "queries": 20, "tune_queries": 20, "singles": 5, "batches": 2, "batch": 8}


def data(args) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(database, tuning queries, fresh queries): one seeded draw, split."""
    x = clustered_unit_vectors(args.n + args.tune_queries + args.queries, args.d, args.centres, args.spread, seed=0)
    return x[: args.n], x[args.n : args.n + args.tune_queries], np.ascontiguousarray(x[args.n + args.tune_queries :])


def percentiles(ms: list[float]) -> dict:
    return {"p50": round(float(np.percentile(ms, 50)), 3), "p99": round(float(np.percentile(ms, 99)), 3)}


def latency(search, q: np.ndarray, batch: int, singles: int, batches: int) -> dict:
    """Single-query and batched latency (ms) of ``search(queries) -> (B, K) ids``; one warm-up call each."""
    search(q[:1])
    one = []
    for row in q[:singles]:
        t = time.perf_counter()
        search(row[None])
        one.append((time.perf_counter() - t) * 1000)
    many = []
    for i in range(batches):
        b = q[(i * batch) % max(1, len(q) - batch):][:batch]
        t = time.perf_counter()
        search(b)
        many.append((time.perf_counter() - t) * 1000)
    per_batch = percentiles(many)
    return {"single_ms": percentiles(one), "batch_ms": per_batch, "batch_size": batch,
            "batched_ms_per_query_p50": round(per_batch["p50"] / batch, 4)}


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[f >= 0]) & set(t)) / truth.shape[1] for f, t in zip(found, truth, strict=True)]))


# ---------------------------------------------------------------- one case, in its own process


def run_faiss(args, x, tq, q) -> dict:
    import faiss

    from index.auto import build_vector_index
    from index.faiss_util import search_params

    ids = np.arange(len(x), dtype=np.int64)
    t0 = time.perf_counter()
    index, info = build_vector_index(x, ids, "auto", target_recall=args.target_recall, flat_max=args.flat_max,
                                     n_queries=args.tune_queries, progress=False)
    build_s = time.perf_counter() - t0
    truth = faiss.knn(q, x, K, metric=faiss.METRIC_INNER_PRODUCT)[1]
    del x
    gc.collect()
    params = search_params(index, info.params)

    def search(b):
        return index.search(b, K, params=params)[1]

    rss = rss_mib()
    return {"index": info.factory, "params": info.params, "build_s": round(build_s, 2),
            "recall_at_10": round(recall(search(q), truth), 4), "rss_after_build_mib": round(rss, 1),
            **latency(search, q, args.batch, args.singles, args.batches)}


def run_milvus(args, x, tq, q, index_type: str) -> dict:
    import faiss

    from index import milvus_backend as mb
    from index.milvus_build import plan, tune

    kind = {"FLAT": "flat", "IVF_FLAT": "ivf"}[index_type]
    _, mtype, params, _ = plan(kind, len(x), True, args.flat_max, False)
    work = Path(tempfile.mkdtemp(prefix="milvus-bench-"))
    uri = str(work / "bench.db")
    client = mb.connect(uri)
    name = "bench"
    t0 = time.perf_counter()
    mb.create_collection(client, name, x.shape[1])
    for i in range(0, len(x), mb.INSERT_BATCH):  # the rows --backend milvus writes: vector + metadata fields
        chunk = x[i : i + mb.INSERT_BATCH]
        client.insert(name, [{"id": i + j, "vector": v.tolist(), "path": f"img/{i + j:07d}.png", "label": None,
                              "split": None, "width": None, "height": None, "sha256": None}
                             for j, v in enumerate(chunk)])
    insert_s = time.perf_counter() - t0
    client.create_index(name, mb.index_params(client, mtype, params))
    coll = mb.MilvusIndex(uri, name, x.shape[1], len(x), mtype, params, client=client)
    index_s = time.perf_counter() - t0 - insert_s
    tuned = {}
    if mtype != "FLAT":
        tuned, _, _, _ = tune(coll, x, np.arange(len(x), dtype=np.int64), tq, args.target_recall, progress=False)
    build_s = time.perf_counter() - t0
    truth = faiss.knn(q, x, K, metric=faiss.METRIC_INNER_PRODUCT)[1]
    del x
    gc.collect()

    def search(b):
        hits = coll.search(b, K)
        out = np.full((len(b), K), -1, np.int64)
        for i, row in enumerate(hits):
            out[i, : len(row)] = [r.id for _, r in row]
        return out

    rss = rss_mib()
    res = {"index": mtype, "params": {**params, **tuned}, "build_s": round(build_s, 2),
           "insert_s": round(insert_s, 2), "index_and_load_s": round(index_s, 2),
           "recall_at_10": round(recall(search(q), truth), 4), "rss_after_build_mib": round(rss, 1),
           "disk_mib": round(sum(p.stat().st_size for p in work.rglob("*") if p.is_file()) / 2**20, 1),
           **latency(search, q, args.batch, args.singles, args.batches)}
    coll.close()
    return res


def run_case(args) -> dict:
    """One case on this process's own copy of the vectors; its row of the results."""
    x, tq, q = data(args)
    res = run_faiss(args, x, tq, q) if args.case == "faiss-auto" else run_milvus(args, x, tq, q,
                                                                                args.case.split("-", 1)[1])
    return {"case": args.case, "n": args.n, **res, "peak_rss_mib": round(peak_rss_mib(), 1)}


# ---------------------------------------------------------------- the benchmark


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    add_vector_args(p)
    p.add_argument("--queries", type=int, default=1000, help="fresh (never indexed) queries for recall and latency")
    p.add_argument("--tune-queries", type=int, default=1000, help="held-out queries that tune nprobe")
    p.add_argument("--target-recall", type=float, default=DEFAULT_TARGET_RECALL)
    p.add_argument("--flat-max", type=int, default=FLAT_MAX_VECTORS, help="faiss-auto: Flat up to this many")
    p.add_argument("--batch", type=int, default=32, help="queries per batched search")
    p.add_argument("--singles", type=int, default=SINGLES)
    p.add_argument("--batches", type=int, default=BATCHES)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    p.add_argument("--case-timeout", type=float, default=None,
                   help="seconds a case may run; one that takes longer is recorded as not finished")
    p.add_argument("--note", default="", help="recorded with the results (e.g. what else ran on the machine)")
    p.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case and print its JSON
    add_standard_args(p, "milvus_vs_faiss", "2,000 vectors in 20 clusters, 20 fresh queries")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    use_threads(args.threads)  # FAISS's here and in the cases; Milvus Lite searches with the same FAISS library
    if args.case:
        print(json.dumps(run_case(args)))
        return 0
    rec = Record("milvus_vs_faiss", vars(args), args.out)
    rec.data["command"] = shlex.join(["python", "benchmarks/milvus_vs_faiss.py", *argv])
    rec.data["data"] = {"generator": "index.synthetic.clustered_unit_vectors", "n": args.n, "d": args.d,
                        "centres": args.centres, "spread": args.spread, "seed": 0}
    if args.note:
        rec.data["note"] = args.note
    for case in args.cases:
        t0 = time.perf_counter()
        try:
            row = run_case_subprocess(Path(__file__), ["--case", case, *_strip_cases(argv)], args.case_timeout)
        except subprocess.TimeoutExpired:
            row = {"case": case, "n": args.n, "not_finished_after_s": round(time.perf_counter() - t0, 1)}
        print(json.dumps(row), flush=True)
        rec.add(row)
        rec.save(partial=True)
    out = rec.save()
    print(f"written: {out}")
    return 0


def _strip_cases(flags: list[str]) -> list[str]:
    """The flags a case gets: all but ``--cases ...``, ``--out X`` and ``--note X`` (a case prints its JSON)."""
    out, i = [], 0
    while i < len(flags):
        if flags[i] in ("--out", "--note", "--case-timeout"):
            i += 2
        elif flags[i] == "--cases":
            i += 1
            while i < len(flags) and not flags[i].startswith("--"):
                i += 1
        else:
            out.append(flags[i])
            i += 1
    return out


if __name__ == "__main__":
    sys.exit(main())
