"""Building and updating an index folder from a checkpoint: memory bank or embedded images.

``build`` exports the checkpoint's memory bank (row i = the training image ``paths[i]``,
no image is decoded) or embeds any folder / archive with the checkpoint's encoder. ``add``
embeds more images into an existing folder; ``remove`` deletes entries by relative path
(or folder). Every path of an entry is relative to the manifest's ``root``; when added
images live outside it, the root moves up to the common parent folder and existing paths
get the corresponding prefix, so one root still serves every entry.
"""

from __future__ import annotations

import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import faiss
import numpy as np
import torch
from tqdm import tqdm

from instdisc.conventions import labels_and_splits, unwrap
from instdisc.data import DataError, decode_all, resolve_source
from instdisc.fsutil import sha256_file
from instdisc.images import ImageError, ImageInfo, is_image_name, nchw, probe
from instdisc.ingest import REPORT_NAME, IngestReport, facts_from, write_reports
from instdisc.photometa import PhotoMeta, try_photo_meta
from instdisc.runtime import pick_device, use_bf16
from instdisc.scan import ScanResult, scan_folder
from instdisc.trained import Checkpoint
from instdisc.whitening import Whitening, fit_whitening

from .auto import DEFAULT_MEMORY_BUDGET, DEFAULT_TARGET_RECALL, FLAT_MAX_VECTORS, RECALL_QUERIES, build_vector_index
from .embedding import WHITENING_KEY, IndexEmbedder, sides_for, whitened_vectors, whitening_of
from .errors import IndexDirError
from .faiss_util import apply_knobs, create_index, index_ids, normalise
from .layout import (
    commit,
    file_names,
    load_checkpoint,
    locked,
    new_generation,
    open_dir,
    verified_checkpoint,
    write_index_file,
)
from .manifest import BACKENDS, MANIFEST, EmbeddingInfo, IndexInfo, Manifest, Update, now
from .store import Row, update_db, write_db

__all__ = ["BuildOptions", "Collected", "add", "build", "labels_and_splits", "open_source", "remove"]

DECODE_CHUNK = 1024
WHITEN_MIN_PER_DIM = 2  # --whiten: gallery vectors per dimension, so no axis is fitted on noise alone
INGEST_SPLIT = "images"  # the key of an index build's one entry in ingest.json


@dataclass
class BuildOptions:
    """Knobs of a build (the script's flags map one to one)."""

    index_type: str = "auto"
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    target_recall: float = DEFAULT_TARGET_RECALL
    flat_max: int = FLAT_MAX_VECTORS
    prefer_hnsw: bool = False
    recall_queries: int = RECALL_QUERIES
    device: str | None = None  # torch device for embedding (default: the GPU when present)
    precision: str = "auto"
    batch_size: int = 256
    progress: bool = True
    seed: int = 0
    # how images become vectors (index/embedding.py); None: the checkpoint's own recipe (TrainConfig.index_scales /
    # index_whiten, e.g. the photo preset's 1x + 1.5x, whitened)
    scales: tuple[float, ...] | None = None  # whole-image sides as multiples of the checkpoint's, vectors averaged
    whiten: bool | None = None  # PCA-whiten the vectors, fitted on this gallery
    # where the vectors live: "faiss" (files in INDEX_DIR) or "milvus" (a collection; index/milvus_backend.py)
    backend: str = "faiss"
    milvus_uri: str | None = None  # Milvus Lite file (.db) or server URI; None: INDEX_DIR/milvus.db
    collection: str = "instdisc"  # Milvus: the name (alias) the index is known by at the server


@dataclass
class Collected:
    """Vectors and their metadata, relative to ``root``, before ids are assigned."""

    root: Path
    vectors: np.ndarray
    paths: list[str]
    labels: list[str | None]
    splits: list[str | None]
    skipped: list[tuple[str, str]]
    found: int | None = None  # image files the scan found (None: nothing was scanned, e.g. a memory bank)
    refused: list[tuple[str, str]] = field(default_factory=list)  # links the scan did not follow


# ---------------------------------------------------------------- checkpoint and files


class FileInfo(NamedTuple):
    """What indexing reads once from an original file (None where it cannot be read)."""

    head: ImageInfo | None  # header facts
    sha256: str | None
    photo: PhotoMeta | None = None  # date taken, camera, sizes (instdisc.photometa)


def file_info(path: Path) -> FileInfo:
    """Header facts, sha256 and photo facts of an original file; Nones where it cannot be read."""
    try:
        digest = sha256_file(path)
    except OSError:
        return FileInfo(None, None)
    photo = try_photo_meta(path)
    try:
        return FileInfo(probe(path), digest, photo)
    except ImageError:  # header unreadable: the decoder reports it when it matters
        return FileInfo(None, digest, photo)


def file_infos(root: Path, paths: list[str], progress: bool) -> list[FileInfo]:
    # PIL's header warnings silenced here, in the calling thread, not inside the workers: the filters are
    # process-wide and catch_warnings() in several threads at once can leave them silenced for good
    # (which once swallowed --add's list of unreadable files)
    with warnings.catch_warnings(), ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        warnings.simplefilter("ignore")
        it = pool.map(lambda p: file_info(root / p), paths, chunksize=64)
        return list(tqdm(it, total=len(paths), desc="hash files", unit="file", disable=not progress, leave=False))


def entry_row(id: int, path: str, label: str | None, split: str | None, info: FileInfo) -> Row:
    head, digest, ph = info
    return Row(int(id), path, label, split, head.width if head else None, head.height if head else None, digest,
               *((ph.file_bytes, ph.mtime_ns, ph.taken, ph.taken_from, ph.camera_make, ph.camera_model, ph.camera)
                 if ph else ()))


def open_source(path: str | os.PathLike) -> tuple[Path, list[str]]:
    """(folder, sorted relative image paths) of an image file, a folder or an archive."""
    root, found = scan_source(path)
    return root, found.paths


def scan_source(path: str | os.PathLike) -> tuple[Path, ScanResult]:
    """(folder, scan) of an image file, a folder or an archive (an archive's top folder looked into)."""
    p = Path(path).expanduser()
    if p.is_file() and is_image_name(p.name):
        return p.parent.resolve(), ScanResult([p.name])
    root = resolve_source(p)
    if p.is_file():
        root = unwrap(root)
    found = scan_folder(root)
    if not found.paths:
        raise DataError(f"{root}: no image files found"
                        + (f"; {len(found.refused)} links not followed" if found.refused else ""))
    return root.resolve(), found


# ---------------------------------------------------------------- vectors


def embed_files(
    embedder: IndexEmbedder, root: Path, paths: list[str], progress: bool,
) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
    """Decode (in parallel, chunk by chunk so memory stays bounded) and embed, *before* any whitening
    (a new index fits its whitening on these; callers apply :meth:`IndexEmbedder.whiten`);
    unreadable files are skipped."""
    vecs, kept, skipped = [], [], []
    bar = tqdm(total=len(paths), desc="embed", unit="img", disable=not progress)
    for i in range(0, len(paths), DECODE_CHUNK):
        chunk = paths[i : i + DECODE_CHUNK]
        imgs, ok, bad = decode_all(root, chunk, embedder.input_size, progress=False)
        skipped.extend(bad)
        if len(ok):
            vecs.append(embedder.unwhitened(nchw(imgs)).numpy())
            kept.extend(ok)
        bar.update(len(chunk))
    bar.close()
    if skipped:
        listing = "\n".join(f"  {p}: {why}" for p, why in skipped[:20])
        warnings.warn(f"skipped {len(skipped)} unreadable image file(s) under {root}:\n{listing}", stacklevel=2)
    out = np.concatenate(vecs) if vecs else np.zeros((0, embedder.encoder.low_dim), np.float32)
    return normalise(out), kept, skipped


def placed_embedder(ckpt: Checkpoint, options: BuildOptions, sides: tuple[int, ...],
                    whitening: Whitening | None = None) -> IndexEmbedder:
    """The checkpoint's encoder on the options' device (bf16 where the chip has it), embedding at ``sides``."""
    device = pick_device(options.device)
    return IndexEmbedder(ckpt.encoder().to(device), sides, whitening, device, use_bf16(device, options.precision),
                         options.batch_size)


def build_sides(ckpt: Checkpoint, options: BuildOptions) -> tuple[int, ...]:
    """The whole-image sides a new index embeds at (``options.scales``, else the checkpoint's recipe, x its side)."""
    scales = options.scales if options.scales is not None else ckpt.config.index_scales
    return sides_for(ckpt.architecture.image_size, scales)


def needs_images(ckpt: Checkpoint, options: BuildOptions) -> bool:
    """Whether the index's sides differ from the memory bank's one side (so images must be re-embedded)."""
    return build_sides(ckpt, options) != (ckpt.architecture.image_size,)


def training_folder(ckpt: Checkpoint, sides: tuple[int, ...]) -> Path:
    """The folder the checkpoint was trained on (to re-embed instead of exporting its bank); ValueError if gone."""
    root = Path(ckpt.files.root)
    if not root.is_dir():
        raise ValueError(f"this index embeds at {list(sides)} px, which needs the images, "
                         f"and the training folder {root} is not here: pass --images FOLDER (or --scales 1)")
    return root


def gallery_whitening(vectors: np.ndarray, ckpt: Checkpoint, options: BuildOptions) -> Whitening | None:
    """The whitening a new index fits on its gallery's (N, d) unwhitened vectors, or None: ``options.whiten``
    (ValueError if the gallery is too small), else the checkpoint's recipe (skipped with a warning then)."""
    wanted = options.whiten if options.whiten is not None else ckpt.config.index_whiten
    if not wanted:
        return None
    n, d = vectors.shape
    if n < WHITEN_MIN_PER_DIM * d:
        why = (f"whitening fits {d} axes on the gallery: it needs at least {WHITEN_MIN_PER_DIM * d} images, "
               f"this one has {n}")
        if options.whiten:
            raise ValueError(f"--whiten: {why}")
        warnings.warn(f"not whitened although the checkpoint's recipe asks for it: {why}", stacklevel=3)
        return None
    return fit_whitening(torch.as_tensor(vectors))


def from_memory_bank(ckpt: Checkpoint, options: BuildOptions | None = None) -> Collected:
    """The bank rows with the training paths and labels they belong to (nothing is decoded)."""
    options = options or BuildOptions()
    if needs_images(ckpt, options):
        raise ValueError(f"the memory bank holds embeddings at {ckpt.architecture.image_size} px only: embedding at "
                         f"{list(build_sides(ckpt, options))} px needs the images (pass --images, e.g. the training "
                         f"folder {ckpt.files.root})")
    files = ckpt.files
    bank = ckpt.bank().float().numpy()
    if bank.shape[0] != len(files.paths):
        raise IndexDirError(f"checkpoint bank has {bank.shape[0]} rows but lists {len(files.paths)} training paths")
    n = len(files.paths)
    return Collected(files.root, normalise(bank), list(files.paths), files.label_names(), ["train"] * n, [])


def from_images(ckpt: Checkpoint, images: str | os.PathLike, options: BuildOptions) -> Collected:
    root, found = scan_source(images)
    rels = found.paths
    embedder = placed_embedder(ckpt, options, build_sides(ckpt, options))
    vecs, kept, skipped = embed_files(embedder, root, rels, options.progress)
    if not kept:
        raise DataError(f"{root}: none of the {len(rels)} image files could be decoded")
    labels, splits = labels_and_splits(kept)
    return Collected(root, vecs, kept, labels, splits, skipped, len(rels), found.refused)


def _infos(root: Path, paths: list[str], progress: bool) -> list[FileInfo]:
    if not root.is_dir():
        warnings.warn(f"image root {root} is not here: widths, heights and hashes are left empty", stacklevel=3)
        return [FileInfo(None, None)] * len(paths)
    return file_infos(root, paths, progress)


# ---------------------------------------------------------------- build


def build(
    checkpoint: str | os.PathLike, out_dir: str | os.PathLike, images: str | os.PathLike | None = None,
    options: BuildOptions | None = None, overwrite: bool = False,
) -> Manifest:
    """Build INDEX_DIR from the memory bank (``images=None``) or from embedded images; return the manifest.

    A bank holds one side; an index embedding at other sides (``options.scales`` or the checkpoint's
    recipe) re-embeds the checkpoint's training folder instead when ``images`` is None."""
    options = options or BuildOptions()
    out = Path(out_dir)
    check_new(out, overwrite)
    ckpt = load_checkpoint(checkpoint)
    if images is None and ckpt.encoder_only:  # no bank and no training folder: only images can be indexed
        ckpt.bank()  # raises the CheckpointError that says to pass --images
    if images is None and needs_images(ckpt, options):  # the bank holds one side: re-embed the training folder
        images = training_folder(ckpt, build_sides(ckpt, options))
    col = from_memory_bank(ckpt, options) if images is None else from_images(ckpt, images, options)
    return write_new(out, col, ckpt, "memory_bank" if images is None else "embedded", options)


def check_new(out: Path, overwrite: bool) -> None:
    """Refuse to replace an existing index unless asked to (before any expensive work)."""
    if (out / MANIFEST).exists() and not overwrite:
        raise IndexDirError(f"{out} already holds an index: pass --overwrite to rebuild it, "
                            "or --add / --remove to update it")


def write_new(out: Path, col: Collected, ckpt: Checkpoint, source: str, options: BuildOptions) -> Manifest:
    """Index ``col``'s (unwhitened) vectors (ids 0..n-1 in its order), whitened first if the options
    ask, write the files and commit; return the manifest."""
    n = len(col.paths)
    ids = np.arange(n, dtype=np.int64)
    sides = build_sides(ckpt, options)
    vectors, embedding, db_info = col.vectors, EmbeddingInfo(list(sides)), {}
    whitening = gallery_whitening(col.vectors, ckpt, options)
    if whitening is not None:
        vectors = whitened_vectors(col.vectors, whitening)
        db_info[WHITENING_KEY] = whitening.to_json()
        embedding = EmbeddingInfo(list(sides), Whitening.digest(db_info[WHITENING_KEY]), n)
    if options.backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {list(BACKENDS)}, got {options.backend!r}")
    if options.backend == "milvus":
        from .milvus_build import build_collection

        infos = _infos(col.root, col.paths, options.progress)
        rows = [entry_row(i, p, lab, sp, info) for i, p, lab, sp, info in zip(ids, col.paths, col.labels, col.splits,
                                                                           infos, strict=True)]

        def make_manifest(info: IndexInfo) -> Manifest:
            m = Manifest.new(ckpt=ckpt, source=source, root=col.root, dim=vectors.shape[1], index_info=info,
                             count=n, next_id=n, embedding=embedding)
            m.skipped = [list(s) for s in col.skipped[:100]]
            return m

        manifest = build_collection(out, vectors, rows, db_info, options, make_manifest)
        if col.found is not None:
            write_reports(out / REPORT_NAME, {INGEST_SPLIT: ingest_report(col, infos, max(sides))})
        return manifest
    index, info = build_vector_index(
        vectors, ids, options.index_type, options.memory_budget, options.target_recall, options.flat_max,
        options.prefer_hnsw, options.recall_queries, progress=options.progress, seed=options.seed)
    infos = _infos(col.root, col.paths, options.progress)
    rows = [entry_row(i, p, lab, sp, info) for i, p, lab, sp, info in zip(ids, col.paths, col.labels, col.splits, infos,
                                                                       strict=True)]
    manifest = Manifest.new(ckpt=ckpt, source=source, root=col.root, dim=vectors.shape[1], index_info=info,
                            count=n, next_id=n, embedding=embedding)
    manifest.skipped = [list(s) for s in col.skipped[:100]]
    with locked(out):
        gen = new_generation()
        names = file_names(gen)
        write_index_file(out / names["index"], index)
        write_db(out / names["db"], rows, {"generation": gen, **db_info})
        commit(out, manifest, gen)
        if col.found is not None:
            write_reports(out / REPORT_NAME, {INGEST_SPLIT: ingest_report(col, infos, max(sides))})
    return manifest


def ingest_report(col: Collected, infos: list[FileInfo], image_size: int) -> IngestReport:
    """What the build found under the images' root (written as INDEX_DIR/ingest.json)."""
    facts = facts_from(col.paths, [i.head for i in infos], [i.sha256 for i in infos])
    return IngestReport(str(col.root), int(col.found or 0), len(col.paths), image_size, facts, list(col.skipped),
                        list(col.refused))


def read_ingest_report(index_dir: str | os.PathLike) -> IngestReport | None:
    """The build's ingest report, or None when the index was not built from image files."""
    p = Path(index_dir) / REPORT_NAME
    if not p.is_file():
        return None
    return IngestReport.from_dict(json.loads(p.read_text())["splits"][INGEST_SPLIT])


# ---------------------------------------------------------------- updates


def remove_from_index(index: faiss.Index, ids: np.ndarray, manifest: Manifest) -> faiss.Index:
    """Remove ids in place, or rebuild from the stored vectors where the type cannot (HNSW)."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if len(ids) == 0:
        return index
    sel = faiss.IDSelectorBatch(ids)
    try:
        removed = index.remove_ids(sel)
    except RuntimeError:
        held = index_ids(index)
        if held is None:
            raise IndexDirError("this index type supports neither removal nor listing its ids: rebuild it") from None
        keep = np.setdiff1d(held, ids)
        try:
            vecs = index.reconstruct_batch(keep) if len(keep) else np.zeros((0, index.d), np.float32)
        except RuntimeError as e:
            raise IndexDirError(f"cannot remove from this index type ({e}); rebuild it instead") from e
        new = create_index(manifest.index.factory, index.d)
        if not new.is_trained:
            raise IndexDirError("cannot remove from this index type; rebuild it instead") from None
        if len(keep):
            new.add_with_ids(np.ascontiguousarray(vecs, dtype=np.float32), keep)
        apply_knobs(new, manifest.index.params)
        return new
    if removed != len(ids):
        raise IndexDirError(f"index and metadata disagree: removed {removed} of {len(ids)} ids")
    return index


def write_update(d: Path, loaded_db: Path, index: faiss.Index, manifest: Manifest, *, remove_ids=(), add=(),
                 path_prefix: str = "") -> str:
    """A new generation of an index folder: the index file, the metadata database updated from the loaded one,
    then the manifest committed last; returns the generation."""
    gen = new_generation()
    names = file_names(gen)
    write_index_file(d / names["index"], index)
    update_db(loaded_db, d / names["db"], remove_ids=remove_ids, add=add, path_prefix=path_prefix,
              info={"generation": gen})
    manifest.count = int(index.ntotal)
    commit(d, manifest, gen)
    return gen


def relative_entry_path(path: str, root: Path) -> str:
    """A user-given path (relative to the root, or absolute inside it) as a stored relative path."""
    p = Path(path)
    if p.is_absolute():
        try:
            p = Path(os.path.normpath(p)).relative_to(root)
        except ValueError:
            raise ValueError(f"{path} is outside the index root {root}") from None
    rel = PurePosixPath(p.as_posix())
    if ".." in rel.parts:
        raise ValueError(f"{path}: '..' is not allowed in an entry path")
    return rel.as_posix().lstrip("/") if str(rel) != "." else ""


def entry_ids(store, root: Path, paths: list[str]) -> np.ndarray:
    """The sorted ids ``paths`` (relative to ``root``, or absolute inside it; folders included) name in
    ``store`` (a metadata store with ``ids_for_path``); ValueError naming the paths it does not hold."""
    ids, missing = [], []
    for p in paths:
        rel = relative_entry_path(p, root)
        found = store.ids_for_path(rel) if rel else []
        (ids.extend(found) if found else missing.append(p))
    if missing:
        raise ValueError(f"not in the index (paths are relative to {root}): {', '.join(missing)}")
    return np.unique(np.array(ids, dtype=np.int64))


def backend_of(index_dir: Path) -> str:
    """The committed manifest's backend (IndexDirError as opening would give when there is none)."""
    return Manifest.read(index_dir).backend


def remove(index_dir: str | os.PathLike, paths: list[str]) -> Manifest:
    """Delete the entries with these relative paths (a folder removes everything under it)."""
    d = Path(index_dir)
    if backend_of(d) == "milvus":
        from . import milvus_build

        return milvus_build.remove(d, paths, lambda coll, m, ps: entry_ids(coll, Path(m.root), ps))
    with locked(d):
        loaded = open_dir(d)
        try:
            m = loaded.manifest
            ids_arr = entry_ids(loaded.store, Path(m.root), paths)
            index = remove_from_index(loaded.index, ids_arr, m)
            m.updates.append(Update("remove", now(), count=len(ids_arr), paths=list(paths)[:20]))
            write_update(d, loaded.store.path, index, m, remove_ids=ids_arr.tolist())
        finally:
            loaded.store.close()
    return m


@dataclass
class AddPlan:
    """What an --add changes: new rows and their vectors, the entries they replace, the root move."""

    root: Path  # the index root afterwards
    prefix: str  # prepended to every existing path when the root moves up ("" otherwise)
    vectors: np.ndarray
    rows: list[Row]
    replaced: list[int]
    update: Update


def plan_add(d: Path, m: Manifest, store, path: str | os.PathLike, checkpoint: str | os.PathLike | None,
             options: BuildOptions, label: str | None, split: str | None, may_move_root: bool = True
             ) -> AddPlan | None:
    """Scan ``path``, skip files indexed unchanged, embed the rest; None when nothing is new. ``store``: the
    metadata (``path_hashes``, ``info``). ``may_move_root=False`` refuses a source outside the root before
    anything is embedded."""
    ckpt = verified_checkpoint(m, checkpoint)
    src_root, rels = open_source(path)
    old_root = Path(m.root)
    new_root = Path(os.path.commonpath([old_root, src_root]))
    if new_root == Path(new_root.anchor):
        raise IndexDirError(f"{src_root} and the index root {old_root} share no folder but {new_root}: "
                            f"move the images under {old_root} (or a sibling folder) first")
    if new_root != old_root and not may_move_root:
        raise IndexDirError(f"{src_root} is outside the index root {old_root}: adding it would rewrite every "
                            "entry's path in the Milvus collection; move the images under the root, or rebuild "
                            "with --overwrite from a folder holding both")
    prefix = "" if new_root == old_root else old_root.relative_to(new_root).as_posix() + "/"
    full = [(src_root / r).relative_to(new_root).as_posix() for r in rels]
    labels, splits = labels_and_splits(rels)
    if label is not None:
        labels = [label] * len(rels)
    if split is not None:
        splits = [split] * len(rels)
    existing = {prefix + p: v for p, v in store.path_hashes().items()}
    infos = file_infos(src_root, rels, options.progress)
    todo = [i for i in range(len(rels)) if full[i] not in existing or existing[full[i]][1] != infos[i].sha256]
    unchanged = len(rels) - len(todo)
    if not todo:  # all already indexed and unchanged
        return None
    embedder = placed_embedder(ckpt, options, m.sides, whitening_of(m, store.info, str(d)))
    if embedder.dim != m.dim:
        raise IndexDirError(f"encoder gives {embedder.dim}-d vectors, the index holds {m.dim}-d")
    vecs, kept, unreadable = embed_files(embedder, src_root, [rels[i] for i in todo], options.progress)
    vecs = embedder.whiten(vecs)
    pos = {r: i for i, r in enumerate(rels)}
    kept_i = [pos[r] for r in kept]
    replaced = [existing[full[i]][0] for i in kept_i if full[i] in existing]
    ids = np.arange(m.next_id, m.next_id + len(kept_i), dtype=np.int64)
    rows = [entry_row(int(ids[j]), full[i], labels[i], splits[i], infos[i]) for j, i in enumerate(kept_i)]
    update = Update(
        "add", now(), source=str(src_root), added=len(kept_i) - len(replaced), replaced=len(replaced),
        unchanged=unchanged, skipped=len(todo) - len(kept_i), root_prefix=prefix,
        unreadable=[[(src_root / r).relative_to(new_root).as_posix(), why] for r, why in unreadable[:100]])
    return AddPlan(new_root, prefix, vecs, rows, replaced, update)


def add(
    index_dir: str | os.PathLike, path: str | os.PathLike, checkpoint: str | os.PathLike | None = None,
    options: BuildOptions | None = None, label: str | None = None, split: str | None = None,
) -> Manifest:
    """Embed the images at ``path`` and append them; files already indexed are skipped if unchanged
    and replaced if their content changed."""
    options = options or BuildOptions()
    d = Path(index_dir)
    if backend_of(d) == "milvus":
        return _add_milvus(d, path, checkpoint, options, label, split)
    with locked(d):
        loaded = open_dir(d)
        try:
            m = loaded.manifest
            plan = plan_add(d, m, loaded.store, path, checkpoint, options, label, split)
            if plan is None:
                return m
            index = remove_from_index(loaded.index, np.array(plan.replaced, dtype=np.int64), m)
            if plan.rows:
                index.add_with_ids(plan.vectors, np.array([r.id for r in plan.rows], dtype=np.int64))
            m.next_id += len(plan.rows)
            m.root = str(plan.root)
            m.updates.append(plan.update)
            write_update(d, loaded.store.path, index, m, remove_ids=plan.replaced, add=plan.rows,
                          path_prefix=plan.prefix)
        finally:
            loaded.store.close()
    return m


def _add_milvus(d: Path, path: str | os.PathLike, checkpoint: str | os.PathLike | None, options: BuildOptions,
                label: str | None, split: str | None) -> Manifest:
    """--add for a Milvus-backed index: rows inserted in place, committed by the manifest's next_id."""
    from . import milvus_build

    with locked(d):
        m, coll = milvus_build.opened_for_update(d)
        try:
            plan = plan_add(d, m, coll, path, checkpoint, options, label, split, may_move_root=False)
            if plan is None:
                return m
            return milvus_build.add_rows(d, m, coll, plan.rows, plan.vectors, plan.replaced, plan.update)
        finally:
            coll.close()
