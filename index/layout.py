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

from instdisc.checkpoint import CheckpointError, load
from instdisc.fsutil import atomic_write, sha256_file

from .auto import index_ids
from .errors import IndexDirError
from .manifest import MANIFEST, architecture, now, read_manifest, write_manifest
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


def commit(index_dir: str | os.PathLike, manifest: dict, generation: str) -> None:
    """Make ``generation`` current: write the manifest naming its files, then drop older files."""
    d = Path(index_dir)
    names = file_names(generation)
    manifest["generation"] = generation
    manifest["files"] = {
        "index": names["index"], "index_bytes": (d / names["index"]).stat().st_size,
        "db": names["db"], "db_bytes": (d / names["db"]).stat().st_size,
    }
    manifest["updated"] = now()
    write_manifest(d, manifest)
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
                files = read_manifest(d)["files"]
                keep = {files["index"], files["db"]}
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
    manifest: dict
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


def _check_file_names(d: Path, m: dict) -> None:
    """The manifest may only name this generation's two files in this folder (an edited manifest
    pointing at ``../../elsewhere`` is refused before anything is opened)."""
    gen = m["generation"]
    if not isinstance(gen, str) or not GENERATION.fullmatch(gen):
        raise IndexDirError(f"{d / MANIFEST}: invalid generation {gen!r} (the manifest was edited or damaged)")
    expected = file_names(gen)
    for key in ("index", "db"):
        if m["files"][key] != expected[key]:
            raise IndexDirError(f"{d / MANIFEST}: files.{key} is {m['files'][key]!r}, expected {expected[key]!r} "
                                "(the manifest was edited or damaged)")


def read_index_file(path: Path, mmap: bool = False) -> faiss.Index:
    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP if mmap else 0)
    except RuntimeError as e:
        raise IndexDirError(f"{path}: unreadable FAISS index ({str(e).splitlines()[-1][:200]})") from e


def open_dir(index_dir: str | os.PathLike, mmap: bool = False, _retry: bool = True) -> Loaded:
    """Manifest + FAISS index + metadata of the current generation, cross-checked."""
    d = Path(index_dir)
    m = read_manifest(d)
    files = m["files"]
    _check_file_names(d, m)
    try:
        ipath = _check_file(d, files["index"], int(files["index_bytes"]), "index")
        dpath = _check_file(d, files["db"], int(files["db_bytes"]), "metadata")
    except IndexDirError:
        # a writer may have committed a new generation between our manifest read and now
        if _retry and read_manifest(d)["generation"] != m["generation"]:
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


def _cross_check(d: Path, m: dict, index: faiss.Index, store: MetadataStore) -> None:
    if index.d != int(m["dim"]):
        raise IndexDirError(f"{d}: index dimension {index.d} != manifest dim {m['dim']}")
    if index.ntotal != int(m["count"]):
        raise IndexDirError(f"{d}: index holds {index.ntotal} vectors, the manifest records {m['count']}")
    gen = store.info.get("generation")
    if gen != m["generation"]:
        raise IndexDirError(f"{d}: metadata generation {gen} does not match the manifest's {m['generation']}")
    if len(store) != int(m["count"]):
        raise IndexDirError(f"{d}: metadata has {len(store)} rows, the manifest records {m['count']}")
    ids = index_ids(index)
    if ids is not None and not np.array_equal(ids, store.ids()):
        raise IndexDirError(f"{d}: the index's ids and the metadata's ids differ")


def load_checkpoint(path: str | os.PathLike) -> tuple[Path, dict, str]:
    """(path, checkpoint, sha256), the hash taken of exactly the bytes loaded.

    A training run replaces checkpoint.pt every epoch; hashing before and after the load and
    retrying on a change keeps the recorded hash honest. Checkpoint problems become
    :class:`IndexDirError` so callers have one exception to catch.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "checkpoint.pt"
    for _ in range(3):
        try:
            before = sha256_file(p)
            ckpt = load(p)
            after = sha256_file(p)
        except FileNotFoundError:
            raise IndexDirError(f"{p}: no checkpoint there") from None
        except CheckpointError as e:
            raise IndexDirError(str(e)) from e
        if before == after:
            return p.resolve(), ckpt, before
    raise IndexDirError(f"{p}: the checkpoint keeps changing while being read (a training run is writing it); "
                        "copy it and use the copy")


def verified_checkpoint(manifest: dict, checkpoint: str | os.PathLike | None = None) -> tuple[Path, dict]:
    """The checkpoint to embed with -- the one given or the one recorded -- loaded and hash-checked."""
    p = Path(checkpoint) if checkpoint is not None else Path(manifest["checkpoint"]["path"])
    if p.is_dir():
        p = p / "checkpoint.pt"
    if not p.is_file():
        how = "given" if checkpoint is not None else "manifest's recorded"
        raise IndexDirError(f"{p}: the {how} checkpoint is missing (pass the checkpoint the index was built from)")
    path, ckpt, actual = load_checkpoint(p)
    expected = manifest["checkpoint"]["sha256"]
    if actual != expected:
        raise IndexDirError(
            f"{p}: checkpoint sha256 {actual[:12]}... differs from the one this index was built from "
            f"({expected[:12]}...): its embeddings would not match the index. Pass the original checkpoint "
            "or rebuild the index.")
    arch = architecture(ckpt)
    if arch["low_dim"] != int(manifest["dim"]):
        raise IndexDirError(f"{p}: the encoder gives {arch['low_dim']}-d vectors but the index holds "
                            f"{manifest['dim']}-d ones (the manifest or index file was edited or damaged)")
    if manifest.get("architecture", arch) != arch:
        raise IndexDirError(f"{p}: the manifest records architecture {manifest['architecture']}, the checkpoint "
                            f"is {arch} (the manifest was edited or damaged)")
    return path, ckpt
