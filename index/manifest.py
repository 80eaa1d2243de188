"""manifest.json: what an index folder holds and what produced it, in one small readable file.

The manifest is written last, atomically: it is the commit record naming the index and
metadata files of the current generation. Anything a consumer must trust (the checkpoint's
hash, dimension, metric, count, the index parameters and the recall measured for them) is
here, so a mismatch is detected instead of returning silently wrong neighbours.

:class:`Manifest` is the typed contract: read and validated once (:meth:`Manifest.read`),
attributes instead of string keys, written back with the same JSON layout (:meth:`Manifest.write`).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from instdisc.fsutil import atomic_write_text
from instdisc.trained import Architecture, Checkpoint

from .errors import IndexDirError

FORMAT = "instdisc-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
REQUIRED = ("format", "format_version", "generation", "count", "next_id", "dim", "metric",
            "normalisation", "index", "root", "checkpoint", "source")
BACKENDS = ("faiss", "milvus")  # where the vectors live: FAISS + SQLite files in INDEX_DIR, or a Milvus collection
FILE_KEYS = ("index", "index_bytes", "db", "db_bytes")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _known(cls, d: dict) -> dict:
    """The keys of ``d`` that are fields of dataclass ``cls``."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


@dataclass
class DataFiles:
    """The current generation's two data files and their sizes (truncation check)."""

    index: str
    index_bytes: int
    db: str
    db_bytes: int


@dataclass
class MilvusRecord:
    """Where a Milvus-backed index lives. Credentials are never recorded: they come from the environment."""

    uri: str  # a Milvus Lite file (absolute path ending in .db) or http(s)://host:port, without user or token
    collection: str  # the name the index is known by: an alias of ``serving`` where the server has aliases
    serving: str  # the collection of the current generation (the manifest is the pointer readers follow)
    alias: bool  # whether ``collection`` was set as an alias of ``serving``
    index_type: str  # the Milvus index: FLAT, IVF_FLAT, IVF_SQ8, IVF_PQ or HNSW
    info_file: str = ""  # INDEX_DIR file with the index's extra settings (the whitening), "" when none


@dataclass
class CheckpointRecord:
    """Which checkpoint made the vectors (its hash is checked whenever the index is opened)."""

    path: str
    sha256: str
    epoch: int = 0


@dataclass
class IndexInfo:
    """The FAISS index: what was asked, what was chosen and why, and the recall measured for it."""

    type: str = "flat"
    requested: str = "auto"
    factory: str = "Flat"
    faiss_class: str = ""
    reason: str = ""
    estimated_bytes: int = 0
    memory_budget: int = 0
    params: dict[str, int] = field(default_factory=dict)  # the tuned search knob (nprobe / efSearch)
    recall_at_10: float = 1.0
    recall_k: int = 10
    target_recall: float = 0.95
    target_reached: bool = True
    recall_queries: int = 0
    recall_query_kind: str = "none (exact index)"  # "held out of the index while measured" for tuned ones
    tuning: list[dict] = field(default_factory=list)  # knob value -> recall, ms per query
    train_vectors: int = 0
    build_seconds: float = 0.0
    tune_seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> IndexInfo:
        return cls(**_known(cls, d))


@dataclass
class EmbeddingInfo:
    """How images become the index's vectors beyond the checkpoint's encoder (``index/embedding.py``)."""

    sides: list[int] = field(default_factory=list)  # whole-image sides averaged over; []: the checkpoint's side
    whitening_sha256: str = ""  # "": not whitened; else the hash of the whitening kept in the metadata database
    whitening_fitted_on: int = 0  # how many vectors it was fitted on (the gallery at build time)

    @classmethod
    def from_dict(cls, d: dict) -> EmbeddingInfo:
        return cls(**_known(cls, d))


@dataclass
class Update:
    """One --add / --remove / --sync applied to the index (kept in the manifest as its history)."""

    op: str  # add | remove | sync
    time: str
    count: int | None = None  # remove: entries deleted
    paths: list[str] | None = None  # remove: what was asked (first 20)
    source: str | None = None  # add: the folder added
    added: int | None = None
    replaced: int | None = None
    unchanged: int | None = None
    skipped: int | None = None
    root_prefix: str | None = None
    unreadable: list[list[str]] | None = None  # add: [path, why] of files that could not be decoded
    moved: int | None = None  # sync: entries that kept their vector under a new path (not re-embedded)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict) -> Update:
        return cls(**_known(cls, d))


@dataclass
class Manifest:
    """The typed manifest (see the module doc). ``generation``/``files`` are None until committed."""

    source: str  # memory_bank | embedded
    root: str  # absolute image root; every stored path is relative to it
    count: int
    next_id: int
    dim: int
    index: IndexInfo
    checkpoint: CheckpointRecord
    architecture: Architecture | None
    temperature: float | None = None  # the training temperature (weighted kNN uses it)
    knn_top1: float | None = None  # the training monitor's last kNN top-1
    updates: list[Update] = field(default_factory=list)
    skipped: list[list[str]] | None = None  # [path, why] of unreadable files at build time (first 100)
    embedding: EmbeddingInfo = field(default_factory=EmbeddingInfo)
    generation: str | None = None
    files: DataFiles | None = None  # FAISS backend: the generation's two data files
    backend: str = "faiss"  # one of BACKENDS
    milvus: MilvusRecord | None = None  # Milvus backend: server, collection and index
    created: str = ""
    updated: str = ""
    normalisation: str = "l2"
    metric: str = "inner_product"
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    # ------------------------------------------------------------ construction

    @classmethod
    def new(cls, *, ckpt: Checkpoint, source: str, root: str | os.PathLike, dim: int, index_info: IndexInfo,
            count: int, next_id: int, embedding: EmbeddingInfo | None = None) -> Manifest:
        """A manifest for a freshly built index (generation and files are filled in at commit)."""
        t = now()
        return cls(source=source, root=str(Path(root).resolve()), count=int(count), next_id=int(next_id),
                   dim=int(dim), index=index_info,
                   checkpoint=CheckpointRecord(str(ckpt.path), ckpt.sha256, ckpt.epoch),
                   architecture=ckpt.architecture, temperature=ckpt.temperature, knn_top1=ckpt.knn_top1,
                   embedding=embedding or EmbeddingInfo(), created=t, updated=t)

    @property
    def image_size(self) -> int:
        if self.architecture is None:
            raise IndexDirError("the manifest records no architecture (an index from an older version): rebuild it")
        return self.architecture.image_size

    @property
    def sides(self) -> tuple[int, ...]:
        """The whole-image sides the vectors average over, largest first (the checkpoint's side by default)."""
        return tuple(self.embedding.sides) or (self.image_size,)

    # ------------------------------------------------------------ JSON

    def to_dict(self) -> dict:
        """The JSON layout of manifest.json (key order kept as earlier versions wrote it)."""
        d: dict[str, Any] = {
            "format": self.format, "format_version": self.format_version, "created": self.created,
            "updated": self.updated, "generation": self.generation, "files": asdict(self.files) if self.files else {},
            "source": self.source, "root": self.root, "count": self.count, "next_id": self.next_id, "dim": self.dim,
            "normalisation": self.normalisation, "metric": self.metric, "index": self.index.to_dict(),
            "checkpoint": asdict(self.checkpoint),
            "architecture": self.architecture.to_dict() if self.architecture else None,
            "temperature": self.temperature, "knn_top1": self.knn_top1,
            "updates": [u.to_dict() for u in self.updates], "embedding": asdict(self.embedding),
        }
        if self.skipped is not None:
            d["skipped"] = self.skipped
        if self.backend != "faiss":  # FAISS manifests keep the layout they always had
            d["backend"] = self.backend
            d["milvus"] = asdict(self.milvus) if self.milvus else None
        return d

    @classmethod
    def from_dict(cls, m: dict, where: str = MANIFEST) -> Manifest:
        """Validate and convert a parsed manifest; IndexDirError naming what is wrong."""
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise IndexDirError(f"{where}: not an instdisc index manifest")
        if int(m.get("format_version", 0)) > FORMAT_VERSION:
            raise IndexDirError(f"{where}: format version {m['format_version']} is newer than this code "
                                f"({FORMAT_VERSION})")
        backend = m.get("backend", "faiss")
        if backend not in BACKENDS:
            raise IndexDirError(f"{where}: unknown backend {backend!r} (this code knows {list(BACKENDS)})")
        missing = [k for k in REQUIRED if k not in m]
        if backend == "faiss":
            missing += [f"files.{k}" for k in FILE_KEYS if k not in (m.get("files") or {})]
        elif not isinstance(m.get("milvus"), dict):
            missing.append("milvus")
        if missing:
            raise IndexDirError(f"{where}: manifest lacks {missing}")
        try:
            return cls(
                source=str(m["source"]), root=str(m["root"]), count=int(m["count"]), next_id=int(m["next_id"]),
                dim=int(m["dim"]), index=IndexInfo.from_dict(m["index"]),
                checkpoint=CheckpointRecord(**_known(CheckpointRecord, m["checkpoint"])),
                architecture=Architecture.from_dict(m["architecture"]) if m.get("architecture") else None,
                temperature=m.get("temperature"), knn_top1=m.get("knn_top1"),
                updates=[Update.from_dict(u) for u in m.get("updates") or []], skipped=m.get("skipped"),
                embedding=EmbeddingInfo.from_dict(m.get("embedding") or {}),
                generation=m["generation"],
                files=DataFiles(**_known(DataFiles, m["files"])) if backend == "faiss" else None,
                backend=backend,
                milvus=MilvusRecord(**_known(MilvusRecord, m["milvus"])) if backend != "faiss" else None,
                created=m.get("created", ""), updated=m.get("updated", ""), normalisation=m["normalisation"],
                metric=m["metric"], format=m["format"], format_version=int(m["format_version"]))
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise IndexDirError(f"{where}: malformed manifest ({type(e).__name__}: {e})") from e

    @classmethod
    def read(cls, index_dir: str | os.PathLike) -> Manifest:
        d = Path(index_dir)
        if not d.is_dir():
            raise IndexDirError(f"{d}: no such index folder (build one with scripts/build_index.py)")
        path = d / MANIFEST
        if not path.is_file():
            raise IndexDirError(f"{d}: not an index folder, {MANIFEST} is missing (build one with "
                                "scripts/build_index.py)")
        try:
            m = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise IndexDirError(f"{path}: corrupt manifest ({e})") from e
        return cls.from_dict(m, str(path))

    def write(self, index_dir: str | os.PathLike) -> None:
        atomic_write_text(Path(index_dir) / MANIFEST, json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")


def read_manifest(index_dir: str | os.PathLike) -> Manifest:
    return Manifest.read(index_dir)
