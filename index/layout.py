"""The index folder on disk: generation-named files, an atomic commit, and checked loading.

INDEX_DIR holds ``manifest.json``, ``index-<generation>.faiss`` and
``meta-<generation>.sqlite``. A build or update writes the two data files of a new
generation (each atomically), then replaces the manifest, which names them; only then are
the previous generation's files deleted. A crash at any point leaves the old manifest
pointing at the old, complete files, so the three files can never be mixed up. Writers take
an exclusive lock on ``.lock`` so two updates cannot interleave.

Loading checks everything that could make results silently wrong: the files exist and
have the recorded sizes (truncation), FAISS and SQLite can read them, dimension, counts,
generation and the set of ids agree, and the checkpoint's hash is the recorded one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from instdisc.checkpoint import CheckpointError
from instdisc.fsutil import atomic_write
from instdisc.trained import Checkpoint

from .errors import IndexDirError
from .faiss_util import index_ids
from .manifest import MANIFEST, DataFiles, Manifest, now
from .store import MetadataStore

LOCK = ".lock"
GENERATION = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{0,63}")  # what new_generation() makes; no '/' or '..'


def new_generation() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def file_names(generation: str) -> dict[str, str]:
    return {"index": f"index-{generation}.faiss", "db": f"meta-{generation}.sqlite"}


@contextlib.contextmanager
def locked(index_dir: str | os.PathLike) -> Iterator[None]:
    """Exclusive writer lock on the folder (blocks until a concurrent build/update finishes)."""
    d = Path(index_dir)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            remove_orphans(d)  # whatever a writer killed before us left behind
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_index_file(path: str | os.PathLike, index: faiss.Index) -> int:
    """Serialise a CPU index atomically; return its size in bytes."""
    atomic_write(path, lambda tmp: faiss.write_index(index, tmp))
    return Path(path).stat().st_size


def commit(index_dir: str | os.PathLike, manifest: Manifest, generation: str) -> None:
    """Make ``generation`` current: write the manifest naming its files, then drop older files."""
    d = Path(index_dir)
    names = file_names(generation)
    manifest.generation = generation
    manifest.files = DataFiles(names["index"], (d / names["index"]).stat().st_size,
                               names["db"], (d / names["db"]).stat().st_size)
    manifest.updated = now()
    manifest.write(d)
    remove_orphans(d, keep=set(names.values()))


def _is_data_file(name: str) -> bool:
    return (name.startswith("index-") and name.endswith(".faiss")) or (
        name.startswith("meta-") and name.endswith(".sqlite"))


def remove_orphans(index_dir: str | os.PathLike, keep: set[str] | None = None) -> list[str]:
    """Delete temp files and the data files the manifest does not name (older generations, or a
    generation whose writer was killed before committing it). Writers call it under the lock.

    ``keep``: the current generation's file names (default: read from the manifest). With a
    manifest that cannot be read, only temp files go: its data files may still be wanted.
    """
    d = Path(index_dir)
    orphan_data = True
    if keep is None:
        keep = set()  # no manifest: nothing was ever committed here
        if (d / MANIFEST).exists():
            try:
                files = Manifest.read(d).files
                keep = {files.index, files.db} if files else set()
            except IndexDirError:
                orphan_data = False
    removed = []
    for p in d.iterdir():
        temp = p.name.endswith((".tmp", ".tmp-journal"))
        if temp or (orphan_data and _is_data_file(p.name) and p.name not in keep):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p.name)
    return removed


@dataclass
class Loaded:
    dir: Path
    manifest: Manifest
    index: faiss.Index
    store: MetadataStore


def _check_file(d: Path, name: str, expected: int, what: str) -> Path:
    p = d / name
    if not p.is_file():
        raise IndexDirError(f"{p}: {what} file missing (the folder is incomplete; rebuild it with "
                            "scripts/build_index.py)")
    size = p.stat().st_size
    if size != expected:
        state = "truncated" if size < expected else "modified"
        raise IndexDirError(f"{p}: {what} file is {state} ({size} bytes, the manifest records {expected})")
    return p


def _check_file_names(d: Path, m: Manifest) -> None:
    """The manifest may only name this generation's two files in this folder (an edited manifest
    pointing at ``../../elsewhere`` is refused before anything is opened)."""
    gen = m.generation
    if not isinstance(gen, str) or not GENERATION.fullmatch(gen):
        raise IndexDirError(f"{d / MANIFEST}: invalid generation {gen!r} (the manifest was edited or damaged)")
    expected = file_names(gen)
    for key in ("index", "db"):
        named = getattr(m.files, key)
        if named != expected[key]:
            raise IndexDirError(f"{d / MANIFEST}: files.{key} is {named!r}, expected {expected[key]!r} "
                                "(the manifest was edited or damaged)")


def read_index_file(path: Path, mmap: bool = False) -> faiss.Index:
    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP if mmap else 0)
    except RuntimeError as e:
        raise IndexDirError(f"{path}: unreadable FAISS index ({str(e).splitlines()[-1][:200]})") from e


def open_dir(index_dir: str | os.PathLike, mmap: bool = False, _retry: bool = True) -> Loaded:
    """Manifest + FAISS index + metadata of the current generation, cross-checked."""
    d = Path(index_dir)
    m = Manifest.read(d)
    if m.backend != "faiss":
        raise IndexDirError(f"{d}: a {m.backend} index (its vectors live in a {m.backend} collection, not in files "
                            "here): open it with index.SearchIndex.open")
    _check_file_names(d, m)
    files = m.files
    try:
        ipath = _check_file(d, files.index, files.index_bytes, "index")
        dpath = _check_file(d, files.db, files.db_bytes, "metadata")
    except IndexDirError:
        # a writer may have committed a new generation between our manifest read and now
        if _retry and Manifest.read(d).generation != m.generation:
            return open_dir(d, mmap, _retry=False)
        raise
    index = read_index_file(ipath, mmap)
    store = MetadataStore(dpath)
    try:
        _cross_check(d, m, index, store)
    except IndexDirError:
        store.close()
        raise
    return Loaded(d, m, index, store)


def _cross_check(d: Path, m: Manifest, index: faiss.Index, store: MetadataStore) -> None:
    if index.d != m.dim:
        raise IndexDirError(f"{d}: index dimension {index.d} != manifest dim {m.dim}")
    if index.ntotal != m.count:
        raise IndexDirError(f"{d}: index holds {index.ntotal} vectors, the manifest records {m.count}")
    gen = store.info.get("generation")
    if gen != m.generation:
        raise IndexDirError(f"{d}: metadata generation {gen} does not match the manifest's {m.generation}")
    if len(store) != m.count:
        raise IndexDirError(f"{d}: metadata has {len(store)} rows, the manifest records {m.count}")
    ids = index_ids(index)
    if ids is not None and not np.array_equal(ids, store.ids()):
        raise IndexDirError(f"{d}: the index's ids and the metadata's ids differ")


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """:meth:`Checkpoint.load` (hashed over exactly the bytes loaded), its problems as :class:`IndexDirError`
    so callers have one exception to catch."""
    try:
        return Checkpoint.load(path)
    except CheckpointError as e:
        raise IndexDirError(str(e)) from e


def verified_checkpoint(manifest: Manifest, checkpoint: str | os.PathLike | None = None) -> Checkpoint:
    """The checkpoint to embed with -- the one given or the one recorded -- loaded and hash-checked."""
    p = Path(checkpoint) if checkpoint is not None else Path(manifest.checkpoint.path)
    if p.is_dir():
        p = p / "checkpoint.pt"
    if not p.is_file():
        how = "given" if checkpoint is not None else "manifest's recorded"
        raise IndexDirError(f"{p}: the {how} checkpoint is missing (pass the checkpoint the index was built from)")
    ckpt = load_checkpoint(p)
    expected = manifest.checkpoint.sha256
    if ckpt.sha256 != expected:
        raise IndexDirError(
            f"{p}: checkpoint sha256 {ckpt.sha256[:12]}... differs from the one this index was built from "
            f"({expected[:12]}...): its embeddings would not match the index. Pass the original checkpoint "
            "or rebuild the index.")
    arch = ckpt.architecture
    if arch.low_dim != manifest.dim:
        raise IndexDirError(f"{p}: the encoder gives {arch.low_dim}-d vectors but the index holds "
                            f"{manifest.dim}-d ones (the manifest or index file was edited or damaged)")
    if manifest.architecture is not None and manifest.architecture != arch:
        raise IndexDirError(f"{p}: the manifest records architecture {manifest.architecture.to_dict()}, the "
                            f"checkpoint is {arch.to_dict()} (the manifest was edited or damaged)")
    return ckpt
