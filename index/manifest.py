"""manifest.json: what an index folder holds and what produced it, in one small readable file.

The manifest is written last, atomically: it is the commit record naming the index and
metadata files of the current generation. Anything a consumer must trust (the checkpoint's
hash, dimension, metric, count, the index parameters and the recall measured for them) is
here, so a mismatch is detected instead of returning silently wrong neighbours.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from instdisc.config import TrainConfig
from instdisc.fsutil import atomic_write_text

from .errors import IndexDirError

FORMAT = "instdisc-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
REQUIRED = ("format", "format_version", "generation", "files", "count", "next_id", "dim", "metric",
            "normalisation", "index", "root", "checkpoint", "source")
FILE_KEYS = ("index", "index_bytes", "db", "db_bytes")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def architecture(ckpt: dict) -> dict:
    """The encoder's shape, so a reader knows which network produced the vectors."""
    cfg = TrainConfig.from_dict(ckpt["config"])
    size = ckpt.get("dataset", {}).get("image_size", cfg.image_size)
    return {"arch": cfg.arch, "width": cfg.width, "cifar_stem": cfg.cifar_stem, "low_dim": cfg.low_dim,
            "image_size": int(size)}


def last_knn_top1(history: list[dict]) -> float | None:
    for row in reversed(history or []):
        if row.get("knn_top1") is not None:
            return float(row["knn_top1"])
    return None


def new_manifest(
    *, ckpt: dict, ckpt_path: str | os.PathLike, ckpt_sha256: str, source: str, root: str | os.PathLike,
    dim: int, index_info: dict, count: int, next_id: int,
) -> dict:
    """A manifest for a freshly built index (generation and files are filled in at commit)."""
    cfg = TrainConfig.from_dict(ckpt["config"])
    t = now()
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": t,
        "updated": t,
        "generation": None,
        "files": {},
        "source": source,  # memory_bank | embedded
        "root": str(Path(root).resolve()),
        "count": int(count),
        "next_id": int(next_id),
        "dim": int(dim),
        "normalisation": "l2",
        "metric": "inner_product",
        "index": index_info,
        "checkpoint": {"path": str(Path(ckpt_path).resolve()), "sha256": ckpt_sha256,
                       "epoch": int(ckpt.get("epoch", 0))},
        "architecture": architecture(ckpt),
        "temperature": float(cfg.temperature),
        "knn_top1": last_knn_top1(ckpt.get("history", [])),
        "updates": [],
    }


def read_manifest(index_dir: str | os.PathLike) -> dict:
    d = Path(index_dir)
    if not d.is_dir():
        raise IndexDirError(f"{d}: no such index folder (build one with scripts/build_index.py)")
    path = d / MANIFEST
    if not path.is_file():
        raise IndexDirError(f"{d}: not an index folder, {MANIFEST} is missing (build one with scripts/build_index.py)")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IndexDirError(f"{path}: corrupt manifest ({e})") from e
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise IndexDirError(f"{path}: not an instdisc index manifest")
    if int(m.get("format_version", 0)) > FORMAT_VERSION:
        raise IndexDirError(f"{path}: format version {m['format_version']} is newer than this code ({FORMAT_VERSION})")
    missing = [k for k in REQUIRED if k not in m]
    missing += [f"files.{k}" for k in FILE_KEYS if k not in (m.get("files") or {})]
    if missing:
        raise IndexDirError(f"{path}: manifest lacks {missing}")
    return m


def write_manifest(index_dir: str | os.PathLike, manifest: dict) -> None:
    atomic_write_text(Path(index_dir) / MANIFEST, json.dumps(manifest, indent=2, sort_keys=False) + "\n")
