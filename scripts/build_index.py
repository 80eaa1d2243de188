"""Build or update a nearest-neighbour index (FAISS + SQLite metadata) from a trained checkpoint.

    # the checkpoint's memory bank (the training images; nothing is re-embedded)
    python scripts/build_index.py --checkpoint RUN_DIR/checkpoint.pt --out INDEX_DIR
    # any folder or .tar/.tar.gz archive, embedded with the checkpoint's encoder
    python scripts/build_index.py --checkpoint RUN_DIR/checkpoint.pt --out INDEX_DIR --images PATH
    # update an existing index
    python scripts/build_index.py --out INDEX_DIR --add PATH
    python scripts/build_index.py --out INDEX_DIR --remove train/cat/0001.png train/dog
    # embed a large gallery on N GPUs / processes (each embeds a shard, rank 0 merges and builds)
    torchrun --nproc_per_node=N scripts/build_index.py --checkpoint C --out INDEX_DIR --images PATH
    # ... or as N independent jobs (job array, several machines on a shared filesystem), then merge
    python scripts/build_index.py --checkpoint C --out INDEX_DIR --images PATH --shards N --shard-id I
    python scripts/build_index.py --checkpoint C --out INDEX_DIR --merge-shards N

--index-type: auto (Flat below 1M vectors, IVF above, IVF-PQ over the memory budget; approximate
types are tuned to --target-recall), flat, ivf, ivfpq, hnsw, or any FAISS factory string
("IVF1024,Flat", "IVF4096,PQ32", "HNSW32,Flat"). See docs/index.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from index.auto import DEFAULT_TARGET_RECALL, FLAT_MAX_VECTORS, parse_bytes  # noqa: E402
from index.build import BuildOptions, add, build, check_new, open_source, remove  # noqa: E402
from index.errors import IndexDirError  # noqa: E402
from index.manifest import read_manifest  # noqa: E402
from index.shards import build_from_shards, default_shard_dir, embed_shard  # noqa: E402
from instdisc import distributed  # noqa: E402
from instdisc.checkpoint import CheckpointError  # noqa: E402
from instdisc.data import DataError  # noqa: E402
from instdisc.images import ImageError  # noqa: E402


def summary(m: dict) -> str:
    ix = m["index"]
    params = ", ".join(f"{k}={v}" for k, v in ix.get("params", {}).items()) or "exact"
    lines = [
        f"index: {m['count']} entries, {ix.get('type')} ({ix.get('factory')}; {params}), "
        f"recall@{ix.get('recall_k', 10)} {ix.get('recall_at_10')}"
        + ("" if ix.get("target_reached", True) else f" (target {ix.get('target_recall')} NOT reached)"),
        f"source: {m['source']}, root: {m['root']}",
        f"checkpoint: {m['checkpoint']['path']} (epoch {m['checkpoint']['epoch']}, "
        f"kNN top-1 {m.get('knn_top1')})",
    ]
    if ix.get("reason"):
        lines.append(f"why: {ix['reason']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="RUN_DIR/checkpoint.pt (or RUN_DIR); for --add, defaults to the recorded one")
    p.add_argument("--out", required=True, help="index folder (INDEX_DIR)")
    p.add_argument("--images", help="folder or archive to embed instead of exporting the memory bank")
    p.add_argument("--index-type", default="auto", help="auto | flat | ivf | ivfpq | hnsw | FAISS factory string")
    p.add_argument("--memory-budget", default="8G", help="index memory budget for auto (e.g. 512M, 8G)")
    p.add_argument("--target-recall", type=float, default=DEFAULT_TARGET_RECALL,
                   help="recall@10 vs exact search that tuning must reach")
    p.add_argument("--flat-max", type=int, default=FLAT_MAX_VECTORS, help="auto uses exact Flat below this count")
    p.add_argument("--hnsw", action="store_true", help="auto: prefer HNSW over IVF above --flat-max")
    p.add_argument("--recall-queries", type=int, default=1000, help="held-out queries used to measure recall")
    p.add_argument("--overwrite", action="store_true", help="rebuild an existing INDEX_DIR")
    p.add_argument("--add", metavar="PATH", help="embed the images at PATH and append them to INDEX_DIR")
    p.add_argument("--label", help="--add: label for every added image (default: from class folders)")
    p.add_argument("--split", help="--add: split name for every added image")
    p.add_argument("--remove", nargs="+", metavar="PATH", help="delete entries (relative paths or folders)")
    p.add_argument("--device", default=None, help="torch device for embedding (default: the GPU when present)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("sharded embedding (torchrun does this by itself with --images)")
    g.add_argument("--shards", type=int, help="with --shard-id: embed one shard of --images into a shard file")
    g.add_argument("--shard-id", type=int, help="which shard, 0 .. --shards - 1")
    g.add_argument("--merge-shards", type=int, metavar="N", help="build INDEX_DIR from the N shard files")
    g.add_argument("--shard-dir", help="where shard files go (default: INDEX_DIR/shards, removed after the merge)")
    g.add_argument("--keep-shards", action="store_true", help="keep the shard files after the merge")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        opts = BuildOptions(
            index_type=args.index_type, memory_budget=parse_bytes(args.memory_budget),
            target_recall=args.target_recall, flat_max=args.flat_max, prefer_hnsw=args.hnsw,
            recall_queries=args.recall_queries, device=args.device, batch_size=args.batch_size,
            progress=not args.no_progress)
        if (args.shards is None) != (args.shard_id is None):
            raise ValueError("--shards and --shard-id go together")
        ctx = distributed.env_context()
        if ctx.world > 1 and args.images and not (args.add or args.remove or args.shards or args.merge_shards):
            return _torchrun_build(args, opts)
        if args.shards is not None:
            if not (args.checkpoint and args.images):
                raise ValueError("--shards/--shard-id need --checkpoint and --images")
            path = embed_shard(args.checkpoint, args.images, args.shard_dir or default_shard_dir(args.out),
                               args.shard_id, args.shards, opts)
            print(f"written: {path}")
            return 0
        if args.merge_shards is not None:
            if not args.checkpoint:
                raise ValueError("--merge-shards needs the --checkpoint the shards were embedded with")
            m = build_from_shards(args.checkpoint, args.out, args.merge_shards, args.shard_dir, opts,
                                  args.overwrite, args.keep_shards)
        elif args.add or args.remove:
            if args.images:
                raise ValueError("--images builds a new index; use --add PATH to extend an existing one")
            m = None
            if args.remove:
                m = remove(args.out, args.remove)
                print(f"removed {m['updates'][-1]['count']} entries")
            if args.add:
                gen_before = read_manifest(args.out)["generation"]
                m = add(args.out, args.add, args.checkpoint, opts, label=args.label, split=args.split)
                if m["generation"] == gen_before:
                    print("nothing to add: the images are already indexed and unchanged")
                else:
                    last = m["updates"][-1]
                    print(f"added {last['added']}, replaced {last['replaced']}, unchanged {last['unchanged']}, "
                          f"unreadable {last['skipped']}")
        else:
            if not args.checkpoint:
                raise ValueError("--checkpoint is required to build an index")
            m = build(args.checkpoint, args.out, args.images, opts, overwrite=args.overwrite)
    except (IndexDirError, CheckpointError, DataError, ImageError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary(m))
    print(f"written: {Path(args.out).resolve()}")
    return 0


def _torchrun_build(args: argparse.Namespace, opts: BuildOptions) -> int:
    """Under torchrun: rank r embeds shard r on its own device; after a barrier rank 0 merges and builds."""
    if not args.checkpoint:
        raise ValueError("--checkpoint is required to build an index")
    check_new(Path(args.out), args.overwrite)  # before any rank spends time embedding
    ctx, device = distributed.init(args.device)
    try:
        opts.device = str(device)
        opts.progress = opts.progress and ctx.is_main
        shard_dir = args.shard_dir or default_shard_dir(args.out)
        with distributed.main_first():  # one archive extraction per node
            open_source(args.images)
        embed_shard(args.checkpoint, args.images, shard_dir, ctx.rank, ctx.world, opts)
        distributed.barrier()
        if not ctx.is_main:
            return 0
        m = build_from_shards(args.checkpoint, args.out, ctx.world, shard_dir, opts, args.overwrite, args.keep_shards)
    finally:
        distributed.cleanup()
    print(summary(m))
    print(f"written: {Path(args.out).resolve()} (embedded by {ctx.world} processes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
