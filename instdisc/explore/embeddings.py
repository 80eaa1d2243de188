"""Which vectors the duplicate finder scores pairs with: the index's own, or the native copy embedding.

An index's vectors follow its checkpoint's recipe (index/embedding.py), tuned for class search: the
image at several sides averaged, often PCA-whitened on the gallery. Edited copies may be told apart
better by the encoder at its native side alone, unwhitened (``--embedding native``). Those vectors are
not in the index, so every entry is re-embedded from its image file with the index's checkpoint (in
batches, decoded in parallel) and stored in the explore cache of the index's generation: any build,
``--add`` or ``--remove`` is a new generation, so they are recomputed after an update and never describe
other files. Calibration then re-embeds its edited images the same way, so ``auto`` is calibrated on
the vectors that are grouped. Where the index's recipe already is the native one, its stored vectors
are that embedding and are used as they are.

A finder must not score some pairs with one embedding and others with another, so an entry whose file
is missing or unreadable stops the re-embedding with an error naming them (missing files before any
embedding; ``build_index.py --sync`` drops entries whose files are gone); ``--embedding index`` still
works on such an index.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from index.build import BuildOptions, build_sides, embed_files
from index.embedding import IndexEmbedder
from index.errors import UnsafePathError
from index.search import safe_join
from instdisc.images import fit_square, nchw, to_rgb

from .cache import ResultCache
from .collection import CACHED, COMPUTED, STORED, Collection, Embed, Embedding
from .errors import ExploreError

INDEX, NATIVE = "index", "native"
EMBEDDINGS = (INDEX, NATIVE)
EMBEDDING = INDEX  # the finder's default
NATIVE_RECIPE = BuildOptions(scales=(1.0,), whiten=False)  # the checkpoint's own side, not whitened
JOB = "native-vectors"  # the explore cache's entry
SHOWN = 5  # paths named in an error about unreadable files


@dataclass
class NativeVectors:
    """Every entry re-embedded at ``sides``, rows in ``ids`` order (the explore cache's entry)."""

    ids: np.ndarray  # (N,) int64
    vectors: np.ndarray  # (N, d) float32 unit rows
    sides: list[int]
    seconds: float


def parse_embedding(value: str) -> str:
    """'index' or 'native'; a clear error otherwise."""
    v = str(value).strip().lower()
    if v not in EMBEDDINGS:
        raise ExploreError(f"--embedding must be one of {', '.join(EMBEDDINGS)}, got {value!r}")
    return v


def native_embedder(si) -> IndexEmbedder:
    """The index's encoder (same device and precision as its queries) at the checkpoint's native side, unwhitened."""
    e = si.embedder
    return IndexEmbedder(e.encoder, build_sides(si.checkpoint, NATIVE_RECIPE), None, e.device, e.bf16, e.batch_size)


def image_embed(embedder: IndexEmbedder) -> Embed:
    """PIL images -> ``embedder``'s unit rows, decoded as an index decodes its files (fit to a square)."""

    def featurise(images: list[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, embedder.dim), np.float32)
        return embedder(nchw(np.stack([fit_square(to_rgb(im), embedder.input_size) for im in images])))

    return featurise


def _listing(paths: list[str]) -> str:
    more = f", and {len(paths) - SHOWN} more" if len(paths) > SHOWN else ""
    return ", ".join(paths[:SHOWN]) + more


def _checked_files(si, coll: Collection) -> Path:
    """The image root, after checking every entry's file is there (before minutes of embedding)."""
    root = Path(si.root)
    if not root.is_dir():
        raise ExploreError(f"{si.dir}: --embedding native re-embeds every image from its file, and the index's "
                           f"image folder {root} is not here; use --embedding index")
    missing = []
    for rel in coll.paths:
        try:
            if not safe_join(root, rel).is_file():
                missing.append(rel)
        except UnsafePathError:
            missing.append(rel)
    if missing:
        raise ExploreError(f"--embedding native: {len(missing)} of {len(coll)} indexed files are missing under {root} "
                           f"({_listing(missing)}); bring them back, drop them from the index (build_index.py "
                           "--sync FOLDER or --remove PATH) or use --embedding index")
    return root


def _re_embed(si, coll: Collection, embedder: IndexEmbedder, progress: bool) -> NativeVectors:
    t0 = time.perf_counter()
    root = _checked_files(si, coll)
    with warnings.catch_warnings():  # the unreadable files are named in the error below
        warnings.simplefilter("ignore")
        vectors, kept, skipped = embed_files(embedder, root, list(coll.paths), progress)
    if skipped or len(kept) != len(coll):
        raise ExploreError(f"--embedding native: {len(skipped)} of {len(coll)} indexed files cannot be decoded "
                           f"({_listing([p for p, _ in skipped])}); fix or remove them, or use --embedding index")
    return NativeVectors(coll.ids.copy(), np.ascontiguousarray(vectors, dtype=np.float32), list(embedder.sides),
                         time.perf_counter() - t0)


def with_embedding(si, coll: Collection, embedding: str, cache: ResultCache, progress: bool = True) -> Collection:
    """``coll`` (the index's, :func:`.collection.from_index`) with the vectors of ``embedding`` and a calibration
    ``embed`` that makes them: unchanged for 'index' and for an index whose recipe is native; otherwise
    every entry re-embedded (from ``cache`` when this generation already holds them)."""
    embedding = parse_embedding(embedding)
    if embedding == INDEX:
        return coll
    if si.manifest.backend != "faiss":
        raise ExploreError(f"{si.dir}: --embedding native works on FAISS index folders only, this index is "
                           f"{si.manifest.backend}-backed; use --embedding index")
    embedder = native_embedder(si)
    sides = list(embedder.sides)
    if tuple(si.manifest.sides) == embedder.sides and not si.manifest.embedding.whitening_sha256:
        return dataclasses.replace(coll, embedding=Embedding(NATIVE, sides, False, STORED))
    params = {"embedding": NATIVE, "sides": sides, "checkpoint": si.manifest.checkpoint.sha256, "n": len(coll)}
    computed = []

    def compute() -> NativeVectors:
        computed.append(True)
        return _re_embed(si, coll, embedder, progress)

    native = cache.fetch(JOB, params, NativeVectors, compute)
    if not np.array_equal(native.ids, coll.ids) or native.vectors.shape[0] != len(coll):
        raise ExploreError(f"{cache.dir}: the cached native vectors do not match the index's entries; delete that "
                           "folder and run again")
    return dataclasses.replace(coll, vectors=np.ascontiguousarray(native.vectors, dtype=np.float32),
                               embed=image_embed(embedder),
                               embedding=Embedding(NATIVE, sides, False, COMPUTED if computed else CACHED))
