"""Batch retrieval evaluation of an index: kNN accuracy, mAP, near-duplicates, ANN recall, speed.

    # CIFAR-10: the test split queried against the index of the training split
    python scripts/evaluate.py --index indexes/cifar10 \\
        --queries ../shared/datasets/cifar10-jpeg.tar.gz --out reports/cifar10 --near-dup-samples 500

--queries is a labelled folder (class per sub-folder) or a .tar/.tar.gz archive of one; a split
collection (train/ + test/ or val/) is queried with its evaluation split. Writes
OUT/report.json (every number and the configuration; knn_top1 = weighted kNN top-1 at k=200),
OUT/report.md (tables) and PNG figures. See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from index.errors import IndexDirError
from instdisc.checkpoint import CheckpointError
from instdisc.data import DataError
from instdisc.evaluation.run import BASELINES, EvalOptions, evaluate
from instdisc.images import ImageError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", required=True, help="index folder (INDEX_DIR, built by scripts/build_index.py)")
    p.add_argument("--queries", required=True, help="labelled folder or archive of query images")
    p.add_argument("--out", required=True, help="report folder (REPORT_DIR)")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 20, 200], help="k of the weighted kNN (200 always added)")
    p.add_argument("--pr-ks", type=int, nargs="+", default=[1, 10, 100], help="k of precision@k / recall@k")
    p.add_argument("--limit", type=int, default=None, help="evaluate a seeded random subset of N queries")
    p.add_argument("--baselines", nargs="*", default=list(BASELINES), choices=BASELINES,
                   help="baselines to compute (none: pass the flag without values)")
    p.add_argument("--near-dup-samples", type=int, default=500, help="gallery images queried with edited copies")
    p.add_argument("--latency-queries", type=int, default=200, help="single-query vector searches timed")
    p.add_argument("--e2e-queries", type=int, default=50, help="single image -> result searches timed")
    p.add_argument("--grid-queries", type=int, default=8, help="query rows of the retrieval grid figure")
    p.add_argument("--imagenet-size", type=int, default=None,
                   help="input size of the ImageNet baseline (default 224 on a GPU, 64+ on the CPU)")
    p.add_argument("--device", default=None, help="torch device for embedding (default: the GPU when present)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--faiss-threads", type=int, default=None,
                   help="OpenMP threads for FAISS searches (default: FAISS's own, all cores)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be >= 1")
    opts = EvalOptions(
        ks=tuple(args.ks), pr_ks=tuple(args.pr_ks), limit=args.limit, baselines=tuple(args.baselines),
        near_dup_samples=args.near_dup_samples, latency_queries=args.latency_queries, e2e_queries=args.e2e_queries,
        grid_queries=args.grid_queries, imagenet_size=args.imagenet_size, device=args.device,
        faiss_threads=args.faiss_threads, precision=args.precision, batch_size=args.batch_size, seed=args.seed,
        progress=not args.no_progress)
    try:
        r = evaluate(args.index, args.queries, args.out, opts)
    except (IndexDirError, CheckpointError, DataError, ImageError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    if r["knn_top1"] is not None:
        print(f"weighted kNN top-1 (k={r['knn_k']}): {100 * r['knn_top1']:.2f} %   mAP: {100 * r['map']:.2f} %")
    nd = r["near_duplicate"].get("methods", {}).get("ours")
    if nd:
        print(f"near-duplicate top-1 / top-10: {100 * nd['top1']:.1f} / {100 * nd['top10']:.1f} %")
    print(f"ANN recall@{r['ann']['k']}: {r['ann']['recall']:.4f}   "
          f"batched search: {r['speed']['batched_vectors']['qps']:.0f} queries/s")
    for n in r["notes"]:
        print(f"note: {n}")
    print(f"written: {out / 'report.json'}, {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
