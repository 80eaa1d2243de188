"""Embedding a large gallery on several processes: one shard file each, merged into one index.

The gallery's sorted file list is cut into contiguous shards (``instdisc.distributed.shard_range``);
each process embeds its shard with the checkpoint's encoder and writes
``SHARD_DIR/shard-<i>-of-<n>.npz`` atomically (vectors, kept paths, skipped files and what they
were made from). The merge checks that all n shards are there and come from the same checkpoint
and the same file list, concatenates them in shard order -- the order a single process would
have embedded the files in, so ids, paths and labels are the single-process build's -- and
builds the index as ``build`` does.

    # one machine with N GPUs: torchrun runs the shards, rank 0 merges (scripts/build_index.py)
    torchrun --nproc_per_node=N scripts/build_index.py --checkpoint C --out INDEX --images PATH
    # any scheduler (a job array, machines sharing a filesystem): one job per shard, then the merge
    python scripts/build_index.py --checkpoint C --out INDEX --images PATH --shards N --shard-id I
    python scripts/build_index.py --checkpoint C --out INDEX --merge-shards N
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np

from instdisc.distributed import shard_range
from instdisc.fsutil import atomic_write_bytes

from .build import (
    BuildOptions,
    Collected,
    build_sides,
    check_new,
    embed_files,
    labels_and_splits,
    open_source,
    placed_embedder,
    write_new,
)
from .errors import IndexDirError
from .layout import load_checkpoint
from .manifest import Manifest

FORMAT = "instdisc-embedding-shard"
VERSION = 1
SHARD_DIR = "shards"  # under INDEX_DIR unless given; removed after a successful merge


def default_shard_dir(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / SHARD_DIR


def shard_path(shard_dir: str | os.PathLike, shard: int, shards: int) -> Path:
    return Path(shard_dir) / f"shard-{shard:05d}-of-{shards:05d}.npz"


def files_digest(paths: list[str]) -> str:
    """Hash of the whole sorted file list: shards of different listings must not be merged."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.encode() + b"\n")
    return h.hexdigest()


def embed_shard(
    checkpoint: str | os.PathLike, images: str | os.PathLike, shard_dir: str | os.PathLike, shard: int, shards: int,
    options: BuildOptions | None = None,
) -> Path:
    """Embed shard ``shard`` of ``shards`` of the gallery at ``images``; write its file and return the path."""
    options = options or BuildOptions()
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    shard_range(0, shard, shards)  # a bad shard id fails before the checkpoint is read
    ckpt = load_checkpoint(checkpoint)
    root, rels = open_source(images)
    lo, hi = shard_range(len(rels), shard, shards)
    sides = build_sides(ckpt, options)
    embedder = placed_embedder(ckpt, options, sides)
    vecs, kept, skipped = embed_files(embedder, root, rels[lo:hi], options.progress)  # unwhitened: the merge fits it
    meta = {"format": FORMAT, "version": VERSION, "shard": shard, "shards": shards, "range": [lo, hi],
            "root": str(root), "files": len(rels), "files_sha256": files_digest(rels), "checkpoint_sha256": ckpt.sha256,
            "dim": int(embedder.encoder.low_dim), "sides": list(sides)}
    buf = io.BytesIO()
    np.savez(buf, vectors=vecs.astype(np.float32), paths=np.array(kept, dtype=str),
             skipped=np.array(skipped, dtype=str).reshape(-1, 2), meta=np.array(json.dumps(meta)))
    path = shard_path(shard_dir, shard, shards)
    atomic_write_bytes(path, buf.getvalue())
    return path


def read_shard(path: Path) -> tuple[dict, np.ndarray, list[str], list[tuple[str, str]]]:
    """(meta, vectors, kept paths, skipped) of one shard file, with a clear error if it is not one."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            vecs, paths, skipped = z["vectors"], [str(p) for p in z["paths"]], [tuple(s) for s in z["skipped"]]
    except FileNotFoundError:
        raise IndexDirError(f"{path}: shard missing (run its --shard-id, or wait for it to finish)") from None
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        raise IndexDirError(f"{path}: not a readable embedding shard ({e})") from e
    if meta.get("format") != FORMAT or meta.get("version", 0) > VERSION:
        raise IndexDirError(f"{path}: not an embedding shard of this version")
    if vecs.shape != (len(paths), meta["dim"]):
        raise IndexDirError(f"{path}: {vecs.shape[0]} vectors for {len(paths)} paths")
    return meta, vecs, paths, skipped  # type: ignore[return-value]


def merge_shards(shard_dir: str | os.PathLike, shards: int, checkpoint_sha256: str,
                 sides: tuple[int, ...] | None = None) -> Collected:
    """All ``shards`` shard files as one collection, in file order; refuses mixed or missing shards, and
    shards embedded at other sides than ``sides`` (the merge's ``--scales``)."""
    metas, vecs, paths, skipped = [], [], [], []
    for i in range(shards):
        path = shard_path(shard_dir, i, shards)
        meta, v, p, s = read_shard(path)
        if meta["checkpoint_sha256"] != checkpoint_sha256:
            raise IndexDirError(f"{path} was embedded with another checkpoint (sha256 "
                                f"{meta['checkpoint_sha256'][:12]}..., this one {checkpoint_sha256[:12]}...)")
        if metas and any(meta[k] != metas[0][k] for k in ("root", "files", "files_sha256", "dim")):
            raise IndexDirError(f"{path} was cut from another file list or folder than shard 0 "
                                f"({meta['root']}, {meta['files']} files vs {metas[0]['root']}, {metas[0]['files']})")
        shard_sides = tuple(meta.get("sides") or ())
        if sides is not None and shard_sides and shard_sides != tuple(sides):
            raise IndexDirError(f"{path} was embedded at {list(shard_sides)} px, this merge asks for {list(sides)} px "
                                "(give the merge the --scales the shards were embedded with)")
        if (meta["shard"], meta["shards"]) != (i, shards):
            raise IndexDirError(f"{path} holds shard {meta['shard']} of {meta['shards']}, expected {i} of {shards}")
        metas.append(meta)
        vecs.append(v)
        paths.extend(p)
        skipped.extend(s)
    if not paths:
        raise IndexDirError(f"none of the {metas[0]['files']} image files in the shards could be decoded")
    labels, splits = labels_and_splits(paths)
    return Collected(Path(metas[0]["root"]), np.concatenate(vecs), paths, labels, splits, skipped)


def build_from_shards(
    checkpoint: str | os.PathLike, out_dir: str | os.PathLike, shards: int, shard_dir: str | os.PathLike | None = None,
    options: BuildOptions | None = None, overwrite: bool = False, keep_shards: bool = False,
) -> Manifest:
    """Merge the shard files and build INDEX_DIR from them; return the manifest."""
    options = options or BuildOptions()
    out = Path(out_dir)
    shard_dir = Path(shard_dir) if shard_dir is not None else default_shard_dir(out)
    check_new(out, overwrite)
    ckpt = load_checkpoint(checkpoint)
    col = merge_shards(shard_dir, shards, ckpt.sha256, build_sides(ckpt, options))
    manifest = write_new(out, col, ckpt, "embedded", options)
    if not keep_shards:
        for i in range(shards):
            shard_path(shard_dir, i, shards).unlink(missing_ok=True)
        if shard_dir.is_dir() and not any(shard_dir.iterdir()):
            shutil.rmtree(shard_dir)
    return manifest
