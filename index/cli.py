"""``scripts/build_index.py``: the flags, and which of the five modes they ask for.

The script builds or updates an index folder in exactly one of these modes, chosen by
:func:`mode_of` from the flags (contradictory combinations are refused by name):

* ``build``: ``--checkpoint C --out D [--images PATH]`` -- a new index from the memory bank or
  from embedded images (under torchrun with ``--images``, ``torchrun`` instead);
* ``update``: ``--out D --add PATH`` and/or ``--remove PATH...`` -- change an existing index;
* ``sync``: ``--out D --sync FOLDER [--watch]`` -- make the index mirror a folder (:mod:`index.sync`),
  and with ``--watch`` keep doing so as the folder changes (:mod:`index.watch`);
* ``shard``: ``--checkpoint C --images PATH --shards N --shard-id I`` -- embed one shard to a file;
* ``merge``: ``--checkpoint C --out D --merge-shards N`` -- build from the N shard files;
* ``torchrun``: ``build`` with ``--images`` launched by torchrun -- every rank embeds its shard,
  rank 0 merges.

Each mode is one function here that calls the library (:mod:`index.build`, :mod:`index.shards`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from instdisc import bundled, distributed
from instdisc.checkpoint import CheckpointError
from instdisc.data import DataError
from instdisc.images import ImageError
from instdisc.resolution import sample_sizes

from .auto import DEFAULT_TARGET_RECALL, FLAT_MAX_VECTORS, parse_bytes
from .build import BuildOptions, add, build, check_new, open_source, remove, scan_source
from .errors import IndexDirError
from .manifest import BACKENDS, MANIFEST, Manifest
from .shards import build_from_shards, default_shard_dir, embed_shard

MODES = ("build", "update", "sync", "shard", "merge", "torchrun")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="build_index.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint",
                   help="RUN_DIR/checkpoint.pt (or RUN_DIR), or 'general' for the bundled encoder (the default with "
                        "--images); for --add, defaults to the recorded one")
    p.add_argument("--out", required=True, help="index folder (INDEX_DIR)")
    p.add_argument("--images", help="folder or archive to embed instead of exporting the memory bank")
    p.add_argument("--index-type", default="auto",
                   help="auto | flat | ivf | ivfsq | ivfpq | hnsw | FAISS factory string")
    p.add_argument("--memory-budget", default="8G", help="index memory budget for auto (e.g. 512M, 8G)")
    p.add_argument("--target-recall", type=float, default=DEFAULT_TARGET_RECALL,
                   help="recall@10 vs exact search that tuning must reach")
    p.add_argument("--flat-max", type=int, default=FLAT_MAX_VECTORS, help="auto uses exact Flat below this count")
    p.add_argument("--hnsw", action="store_true", help="auto: prefer HNSW over IVF above --flat-max")
    p.add_argument("--recall-queries", type=int, default=BuildOptions.recall_queries,
                   help="fresh queries (held out of the index while measured) that tuning uses")
    p.add_argument("--overwrite", action="store_true", help="rebuild an existing INDEX_DIR")
    m = p.add_argument_group("where the vectors live (docs/index.md, docs/scaling.md)")
    m.add_argument("--backend", choices=BACKENDS, default=BuildOptions.backend,
                   help="faiss: index + SQLite files in INDEX_DIR; milvus: a Milvus collection (INDEX_DIR keeps the "
                        "manifest). --add/--remove follow the index's recorded backend")
    m.add_argument("--milvus-uri", default=None,
                   help="a Milvus Lite file (e.g. ./collection.db; default INDEX_DIR/milvus.db) or a server "
                        "(http://host:19530); credentials only from the environment variable MILVUS_TOKEN")
    m.add_argument("--collection", default=BuildOptions.collection,
                   help="Milvus collection name (an alias of the current generation's collection)")
    p.add_argument("--add", metavar="PATH", help="embed the images at PATH and append them to INDEX_DIR")
    p.add_argument("--label", help="--add: label for every added image (default: from class folders)")
    p.add_argument("--split", help="--add: split name for every added image")
    p.add_argument("--remove", nargs="+", metavar="PATH", help="delete entries (relative paths or folders)")
    p.add_argument("--sync", metavar="FOLDER",
                   help="make INDEX_DIR mirror FOLDER: embed new and changed files, remove deleted ones, give moved "
                        "or renamed ones their new path without re-embedding (builds the index if there is none)")
    p.add_argument("--watch", action="store_true", help="--sync: keep syncing as FOLDER changes, until Ctrl-C")
    p.add_argument("--debounce", type=float, default=None, metavar="S",
                   help="--watch: seconds of quiet after the last change before a batch is synced (default 2)")
    p.add_argument("--device", default=None, help="torch device for embedding (default: the GPU when present)")
    p.add_argument("--batch-size", type=int, default=BuildOptions.batch_size)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--no-progress", action="store_true")
    e = p.add_argument_group("how images become vectors (index/embedding.py; fixed when the index is built)")
    e.add_argument("--scales", nargs="+", type=float, default=None, metavar="S",
                   help="embed whole images at S x the checkpoint's side and average the vectors (e.g. 1 1.5); "
                        "default: the checkpoint's recipe (1 1.5 for cpu-photos-fast, else 1). Without --images, "
                        "sides the memory bank lacks re-embed the training folder")
    e.add_argument("--whiten", action=argparse.BooleanOptionalAction, default=None,
                   help="PCA-whiten the vectors: fitted on this gallery, kept with the index, applied to queries "
                        "and --add too (default: the checkpoint's recipe: on for cpu-photos-fast)")
    g = p.add_argument_group("sharded embedding (torchrun does this by itself with --images)")
    g.add_argument("--shards", type=int, help="with --shard-id: embed one shard of --images into a shard file")
    g.add_argument("--shard-id", type=int, help="which shard, 0 .. --shards - 1")
    g.add_argument("--merge-shards", type=int, metavar="N", help="build INDEX_DIR from the N shard files")
    g.add_argument("--shard-dir", help="where shard files go (default: INDEX_DIR/shards, removed after the merge)")
    g.add_argument("--keep-shards", action="store_true", help="keep the shard files after the merge")
    return p


def mode_of(args: argparse.Namespace, world_size: int = 1) -> str:
    """Which of :data:`MODES` the flags ask for; ValueError naming the flags that do not fit together."""
    if (args.shards is None) != (args.shard_id is None):
        raise ValueError("--shards and --shard-id go together")
    if args.shards is not None:
        if not (args.checkpoint and args.images):
            raise ValueError("--shards/--shard-id need --checkpoint and --images")
        return "shard"
    if args.watch and not args.sync:
        raise ValueError("--watch goes with --sync FOLDER")
    if args.sync:
        if args.images or args.add or args.remove or args.merge_shards is not None:
            raise ValueError("--sync FOLDER is an update mode of its own: drop --images, --add, --remove and "
                             "--merge-shards")
        return "sync"
    if args.merge_shards is not None:
        if not args.checkpoint:
            raise ValueError("--merge-shards needs the --checkpoint the shards were embedded with")
        return "merge"
    if args.add or args.remove:
        if args.backend != BuildOptions.backend or args.milvus_uri or args.collection != BuildOptions.collection:
            raise ValueError("--backend, --milvus-uri and --collection are fixed when an index is built: --add and "
                             "--remove use the ones its manifest records")
        if args.images:
            raise ValueError("--images builds a new index; use --add PATH to extend an existing one")
        if args.whiten is not None or args.scales is not None:
            raise ValueError("--scales and --whiten are fixed when an index is built: --add embeds as the index "
                             "already does (rebuild with --overwrite to change them)")
        return "update"
    if not args.checkpoint and not args.images:
        raise ValueError("--checkpoint is required to export a memory bank (or pass --images FOLDER to embed a "
                         "folder, with the bundled encoder unless --checkpoint says otherwise)")
    return "torchrun" if world_size > 1 and args.images else "build"


def resolve_checkpoint(args: argparse.Namespace) -> None:
    """``--checkpoint general`` (or none, with --images, when building) -> the bundled encoder that fits the
    folder's image sizes, said with its reason; a bundled name -> that encoder, verified."""
    if args.checkpoint is None and args.sync and not (Path(args.out) / MANIFEST).exists():
        args.checkpoint = bundled.NAME  # --sync into a new index: built with the bundled encoder
    if args.checkpoint is None and args.images and not (args.add or args.remove):
        args.checkpoint = bundled.NAME
    if args.checkpoint == bundled.NAME:
        sample = None
        if args.images or args.sync:
            root, found = scan_source(args.images or args.sync)
            sample = sample_sizes(root, found.paths)
        choice = bundled.choose(sample)
        print(f"embedding with {choice.reason} ({choice.path})", file=sys.stderr)
        args.checkpoint = str(choice.path)
    elif args.checkpoint is not None:
        args.checkpoint = str(bundled.resolve(args.checkpoint))


def summary(m: Manifest) -> str:
    """What the script prints after a build or an update."""
    ix = m.index
    params = ", ".join(f"{k}={v}" for k, v in ix.params.items()) or "exact"
    measured = f" on {ix.recall_queries} queries {ix.recall_query_kind}" if ix.recall_queries else ""
    lines = [
        f"index: {m.count} entries, {ix.type} ({ix.factory}; {params}), recall@{ix.recall_k} {ix.recall_at_10}"
        + ("" if ix.target_reached else f" (target {ix.target_recall} NOT reached)") + measured,
        f"source: {m.source}, root: {m.root}",
        f"checkpoint: {m.checkpoint.path} (epoch {m.checkpoint.epoch}, kNN top-1 {m.knn_top1})",
    ]
    if ix.reason:
        lines.append(f"why: {ix.reason}")
    if m.milvus is not None:
        lines.append(f"milvus: {m.milvus.uri}, collection {m.milvus.collection} -> {m.milvus.serving}"
                     + ("" if m.milvus.alias else " (no alias: readers follow the manifest)"))
    e = m.embedding
    lines.append(f"embedding: whole images at {' + '.join(f'{s} px' for s in m.sides)}"
                 + (", averaged" if len(m.sides) > 1 else "")
                 + (f", PCA-whitened (fitted on {e.whitening_fitted_on} vectors)" if e.whitening_sha256 else ""))
    return "\n".join(lines)


def options_of(args: argparse.Namespace) -> BuildOptions:
    return BuildOptions(
        index_type=args.index_type, memory_budget=parse_bytes(args.memory_budget),
        target_recall=args.target_recall, flat_max=args.flat_max, prefer_hnsw=args.hnsw,
        recall_queries=args.recall_queries, device=args.device, batch_size=args.batch_size,
        progress=not args.no_progress, scales=tuple(args.scales) if args.scales else None, whiten=args.whiten,
        backend=args.backend, milvus_uri=args.milvus_uri, collection=args.collection)


# ---------------------------------------------------------------- the modes


def run_build(args: argparse.Namespace, opts: BuildOptions) -> Manifest:
    return build(args.checkpoint, args.out, args.images, opts, overwrite=args.overwrite)


def run_update(args: argparse.Namespace, opts: BuildOptions) -> Manifest:
    """--remove, then --add (either or both)."""
    m = None
    if args.remove:
        m = remove(args.out, args.remove)
        print(f"removed {m.updates[-1].count} entries")
    if args.add:
        gen_before = Manifest.read(args.out).generation
        m = add(args.out, args.add, args.checkpoint, opts, label=args.label, split=args.split)
        if m.generation == gen_before:
            print("nothing to add: the images are already indexed and unchanged")
        else:
            last = m.updates[-1]
            print(f"added {last.added}, replaced {last.replaced}, unchanged {last.unchanged}, "
                  f"unreadable {last.skipped}")
    assert m is not None  # mode_of guarantees --add or --remove
    return m


def run_sync(args: argparse.Namespace, opts: BuildOptions) -> Manifest:
    """--sync FOLDER once, or with --watch until Ctrl-C / SIGTERM (the running sync commits first)."""
    from .sync import REPORT, sync
    from .watch import watch_until_signalled

    existing = Manifest.read(args.out) if (Path(args.out) / MANIFEST).exists() else None
    if opts.backend == "milvus" or (existing is not None and existing.backend == "milvus"):
        raise ValueError("--sync and --watch work on FAISS index folders only, not on the milvus backend yet: "
                         "use --add / --remove there")

    def once():
        report = sync(args.out, args.sync, args.checkpoint, opts)
        print(report.summary() + f"\n  report: {Path(args.out) / REPORT}", flush=True)
        return report

    if args.watch:
        watch_until_signalled(args.sync, args.out, once, args.debounce)
    else:
        once()
    return Manifest.read(args.out)


def run_shard(args: argparse.Namespace, opts: BuildOptions) -> None:
    path = embed_shard(args.checkpoint, args.images, args.shard_dir or default_shard_dir(args.out),
                       args.shard_id, args.shards, opts)
    print(f"written: {path}")


def run_merge(args: argparse.Namespace, opts: BuildOptions) -> Manifest:
    return build_from_shards(args.checkpoint, args.out, args.merge_shards, args.shard_dir, opts,
                             args.overwrite, args.keep_shards)


def run_torchrun(args: argparse.Namespace, opts: BuildOptions) -> Manifest | None:
    """Under torchrun: rank r embeds shard r on its own device; after a barrier rank 0 merges and builds.

    Returns the manifest on rank 0, None on the other ranks."""
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
            return None
        return build_from_shards(args.checkpoint, args.out, ctx.world, shard_dir, opts, args.overwrite,
                                 args.keep_shards)
    finally:
        distributed.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    world = distributed.env_context().world
    try:
        opts = options_of(args)
        mode = mode_of(args, world)
        resolve_checkpoint(args)
        if mode == "shard":
            run_shard(args, opts)
            return 0
        m = {"build": run_build, "update": run_update, "sync": run_sync, "merge": run_merge,
             "torchrun": run_torchrun}[mode](args, opts)
    except (IndexDirError, CheckpointError, DataError, ImageError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if m is None:  # a torchrun rank other than 0
        return 0
    print(summary(m))
    print(f"written: {Path(args.out).resolve()}" + (f" (embedded by {world} processes)" if mode == "torchrun" else ""))
    return 0
