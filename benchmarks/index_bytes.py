"""Bytes per vector of each FAISS index type, measured: the numbers behind docs/scaling.md.

    python benchmarks/index_bytes.py [--n 100000] [--out benchmarks/results/index_bytes.json]
    python benchmarks/index_bytes.py --quick      # smoke test, seconds

For 128-d clustered unit vectors (``index.synthetic.clustered_unit_vectors``, spread 1.0, like
benchmarks/search_scale.py) each index is built at n/2 and at n vectors and serialised; the
marginal bytes per vector are (size(n) - size(n/2)) / (n/2), which leaves out fixed costs such
as IVF centroids and PQ codebooks, so they extrapolate to 100M and 1B vectors. The resident
memory of the loaded n-vector index (growth of this process's RSS on deserialising it) is
recorded too, in a fresh process (VmRSS growth on ``read_index``): IDMap2's reverse id map is
rebuilt in memory and not written to the file.
Recall@10 against exact search on held-out queries says what the compression costs.
"""

from __future__ import annotations

import argparse
import gc
import re
import subprocess
import sys
import tempfile
import time

import faiss
import numpy as np

from benchmarks import common
from index.synthetic import clustered_unit_vectors

# (name, factory, search knobs): the types docs/index.md offers, at the settings auto would start from
CASES = (
    ("flat", "IDMap2,Flat", {}),
    ("ivf-flat", "IVF1024,Flat", {"nprobe": 16}),
    ("ivf-pq32", "IVF1024,PQ32", {"nprobe": 16}),
    ("ivf-pq16", "IVF1024,PQ16", {"nprobe": 16}),
    ("hnsw32", "IDMap2,HNSW32,Flat", {"efSearch": 64}),
)


RESIDENT = """
import sys, faiss
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
before = rss()
index = faiss.read_index(sys.argv[1])
print(rss() - before)
"""


def resident_bytes(blob: np.ndarray) -> int:
    """Memory a fresh process gains by loading the serialised index (no freed memory to reuse)."""
    with tempfile.NamedTemporaryFile(suffix=".faiss") as f:
        f.write(blob.tobytes())
        f.flush()
        out = subprocess.run([sys.executable, "-c", RESIDENT, f.name], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def trained(factory: str, train: np.ndarray) -> np.ndarray:
    """The empty index after training, serialised: the half and the full build start from the same one
    (PQ codebooks take most of a build; training them twice measured nothing more)."""
    index = faiss.index_factory(train.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        index.train(train)
    return faiss.serialize_index(index)


def build(empty: np.ndarray, x: np.ndarray) -> faiss.Index:
    index = faiss.deserialize_index(empty)
    index.add_with_ids(x, np.arange(len(x), dtype=np.int64))
    return index


def set_knobs(index: faiss.Index, knobs: dict) -> None:
    ps = faiss.ParameterSpace()
    for k, v in knobs.items():
        ps.set_index_parameter(index, k, v)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--nlist", type=int, default=1024, help="inverted lists of the IVF cases")
    common.add_standard_args(p, "index_bytes", "4,000 vectors, 64 lists")
    args = p.parse_args(argv)
    pq_bits = ""
    if args.quick:  # 4-bit PQ codebooks: FAISS trains 8-bit ones for minutes even on 4,000 vectors
        args.n, args.queries, args.nlist, pq_bits = 4000, 100, 64, "x4"
    common.use_threads(args.threads)
    rec = common.Record("index_bytes", vars(args), args.out)
    n, d = args.n, 128
    data = clustered_unit_vectors(n + args.queries, d, centres=1000, spread=1.0, seed=0)
    x, q = data[:n], data[n:]
    train = x[: min(n, 64 * 1024)]
    exact = faiss.IndexFlatIP(d)
    exact.add(x)
    _, truth = exact.search(q, 10)
    for name, factory, knobs in CASES:
        factory = re.sub(r"PQ(\d+)", rf"PQ\g<1>{pq_bits}", factory.replace("IVF1024", f"IVF{args.nlist}"))
        t0 = time.perf_counter()
        empty = trained(factory, train)
        half = faiss.serialize_index(build(empty, x[: n // 2])).nbytes
        full_index = build(empty, x)
        full = faiss.serialize_index(full_index)
        build_s = time.perf_counter() - t0
        del full_index
        gc.collect()
        resident = resident_bytes(full)
        loaded = faiss.deserialize_index(full)
        set_knobs(loaded, knobs)
        _, found = loaded.search(q, 10)
        recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))
        row = rec.add({"case": name, "factory": factory, "knobs": knobs, "n": n, "d": d, "queries": args.queries,
                       "file_bytes": int(full.nbytes), "file_bytes_per_vector": round(full.nbytes / n, 1),
                       "marginal_bytes_per_vector": round((full.nbytes - half) / (n - n // 2), 1),
                       "resident_bytes_per_vector": round(resident / n, 1), "recall_at_10": round(recall, 4),
                       "build_seconds": round(build_s, 2)})
        rec.save(partial=True)
        print(f"{name:9s} {factory:20s} file {row['file_bytes_per_vector']:7.1f} B/vec, marginal "
              f"{row['marginal_bytes_per_vector']:7.1f} B/vec, resident {row['resident_bytes_per_vector']:7.1f} "
              f"B/vec, recall@10 {recall:.3f} ({knobs}), {build_s:.1f} s", flush=True)
        del loaded
        gc.collect()
    cols = ["case", "factory", "file_bytes_per_vector", "marginal_bytes_per_vector", "resident_bytes_per_vector",
            "recall_at_10", "build_seconds"]
    rec.data["table"] = common.table(rec.data["results"], cols, "bytes per vector")
    rec.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
