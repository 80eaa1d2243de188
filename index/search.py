"""The search API the app and the evaluation use: open an index folder, embed, search, look up.

``SearchIndex.open(dir)`` needs nothing else: the manifest records the checkpoint (path and
hash), so the encoder that made the vectors is the one that embeds the queries -- and a
different checkpoint is refused rather than silently giving meaningless neighbours.

Besides searching, it is the public read API of an index folder (``ids``, ``rows``, ``paths``,
``vectors``, ``get``, ``image_path``, ``labels``, ``manifest``, ``checkpoint``): the app,
evaluation and reliability tools read an index through it, never through its private members.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image

from instdisc.images import fit_square, load_image, nchw, to_rgb
from instdisc.runtime import use_bf16
from instdisc.trained import Checkpoint

from .backends import FaissBackend, TorchFlatBackend
from .embedding import IndexEmbedder, whitening_of
from .errors import IndexDirError, UnsafePathError
from .faiss_util import gpu_available, index_kind, normalise, stored_vectors
from .layout import open_dir, verified_checkpoint
from .manifest import MANIFEST, Manifest
from .store import Filters, Row

DEVICES = ("auto", "cpu", "cuda", "gpu", "faiss-gpu", "torch-cuda")
FOLLOW_CHECK_S = 0.5  # follow=True: how often the manifest is looked at (one stat) for a new generation


@dataclass
class Hit:
    """One search result (or metadata row, with score nan); ``path`` is relative to the index root."""

    id: int
    score: float
    path: str
    label: str | None
    split: str | None
    width: int | None
    height: int | None
    taken: str | None = None  # date taken (local ISO time; EXIF, else the file's time)
    camera: str | None = None  # make and model
    file_bytes: int | None = None
    taken_from: str | None = None  # "exif", or "file" when the date is the file's modification time

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_row(cls, row: Row, score: float = math.nan) -> Hit:
        return cls(int(row.id), float(score), row.path, row.label, row.split, row.width, row.height, row.taken,
                   row.camera, row.file_bytes, row.taken_from)


def safe_join(root: Path, rel: str) -> Path:
    """``root / rel``, refusing anything that would leave ``root`` (absolute paths, '..')."""
    p = PurePosixPath(rel)
    if not rel or "\x00" in rel or p.is_absolute() or ".." in p.parts:
        raise UnsafePathError(f"refusing stored path {rel!r}: it would escape the image root {root}")
    root = Path(os.path.normpath(root))
    full = Path(os.path.normpath(root / rel))
    if root not in full.parents:
        raise UnsafePathError(f"refusing stored path {rel!r}: it would escape the image root {root}")
    return full


def _choose_backend(index, knobs: dict, device: str) -> FaissBackend | TorchFlatBackend:
    """faiss-gpu if FAISS has a GPU, else torch-cuda for exact indexes if torch has one, else cpu."""
    import warnings

    kind = index_kind(index)
    if device == "cpu":
        return FaissBackend(index, knobs)
    if device in ("auto", "cuda", "gpu", "faiss-gpu") and gpu_available():
        try:
            return FaissBackend(index, knobs, gpu=True)
        except (RuntimeError, AttributeError) as e:
            if device == "faiss-gpu":
                raise IndexDirError(f"cannot put this index on the FAISS GPU: {e}") from e
            warnings.warn(f"FAISS GPU unavailable for this index ({e}); trying the next option", stacklevel=3)
    if device in ("auto", "cuda", "gpu", "torch-cuda") and torch.cuda.is_available() and kind == "flat":
        return TorchFlatBackend(index, "cuda")
    if device in ("faiss-gpu", "torch-cuda"):
        raise IndexDirError(f"device {device!r} is not available here (FAISS GPUs: {gpu_available()}, "
                            f"torch CUDA: {torch.cuda.is_available()}, index kind: {kind})")
    if device in ("cuda", "gpu"):
        warnings.warn(f"no GPU search for a {kind} index on this machine; searching on the CPU", stacklevel=3)
    return FaissBackend(index, knobs)


class SearchIndex:
    """An opened index folder: FAISS index + SQLite metadata + the encoder. Thread-safe for searching."""

    manifest: Manifest
    checkpoint: Checkpoint  # the (hash-verified) checkpoint whose encoder embeds the queries
    embedder: IndexEmbedder  # images -> this index's vectors (sides, whitening); the evaluation embeds with it too
    image_size: int  # the side query images are decoded at (the largest of the index's sides)
    root: Path
    device: str

    def __init__(self) -> None:  # use SearchIndex.open
        raise TypeError("use SearchIndex.open(index_dir)")

    @classmethod
    def open(
        cls, index_dir: str | os.PathLike, checkpoint: str | os.PathLike | None = None, device: str | None = None,
        mmap: bool = False, follow: bool = False,
    ) -> SearchIndex:
        """Load and cross-check manifest, metadata and FAISS index; load the (hash-verified) encoder.

        ``device``: None/'auto' (GPU when possible), 'cpu', 'cuda', 'faiss-gpu' or 'torch-cuda'.
        ``mmap``: memory-map the index file instead of reading it (large IVF indexes).
        ``follow``: switch to a newer generation (an --add, --remove or --sync committed meanwhile) by
        itself, checked at most every ``FOLLOW_CHECK_S`` on use (what the app does); otherwise the opened
        generation is served until :meth:`refresh` is called.
        """
        req = (device or "auto").lower()
        if req not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        if Manifest.read(index_dir).backend == "milvus":
            return cls._open_milvus(Path(index_dir), checkpoint, req, mmap)
        loaded = open_dir(index_dir, mmap)
        try:
            ckpt = verified_checkpoint(loaded.manifest, checkpoint)
            backend = _choose_backend(loaded.index, loaded.manifest.index.params, req)
            self = cls._assemble(loaded.dir, loaded.manifest, ckpt, loaded.store, backend, req)
            self._index = loaded.index
            self._mmap, self._follow = mmap, follow
        except BaseException:
            loaded.store.close()
            raise
        return self

    @classmethod
    def _open_milvus(cls, d: Path, checkpoint: str | os.PathLike | None, req: str, mmap: bool) -> SearchIndex:
        """A Milvus-backed index: the collection is both the metadata store and where searches run."""
        from .milvus_backend import open_index
        from .milvus_build import verify

        if mmap:
            raise IndexDirError(f"{d}: mmap memory-maps a FAISS index file; a Milvus index lives in its collection "
                                "(Milvus decides what is resident)")
        if req not in ("auto", "cpu"):
            raise IndexDirError(f"{d}: device {req!r} picks where FAISS searches; a Milvus index is searched by the "
                                "Milvus server (or Milvus Lite on the CPU): leave device unset")
        m = Manifest.read(d)
        verify(m)
        ckpt = verified_checkpoint(m, checkpoint)
        coll = open_index(d, m)
        try:
            self = cls._assemble(d, m, ckpt, coll, coll, req)
            self._index = None
        except BaseException:
            coll.close()
            raise
        return self

    @classmethod
    def _assemble(cls, d: Path, m: Manifest, ckpt: Checkpoint, store, backend, req: str) -> SearchIndex:
        self = object.__new__(cls)
        self.dir = d
        self.manifest = m
        self.checkpoint = ckpt
        self.root = Path(m.root)
        self.dim = m.dim
        self.checkpoint_path = ckpt.path
        self._store = store
        self._backend = backend
        self.device = backend.name
        enc_device = torch.device("cuda" if torch.cuda.is_available() and req != "cpu" else "cpu")
        self.embedder = IndexEmbedder(ckpt.encoder().to(enc_device), m.sides, whitening_of(m, store.info, str(d)),
                                      enc_device, use_bf16(enc_device, "auto"), batch_size=256)
        self.image_size = self.embedder.input_size
        self._embed_lock = threading.Lock()
        # following new generations (FAISS folders; a Milvus collection changes in place)
        self._swap_lock = threading.Lock()
        self._req_device, self._mmap, self._follow = req, False, False
        self._stamp, self._checked = self._manifest_stamp(), time.monotonic()
        return self

    def close(self) -> None:
        self._store.close()

    # ------------------------------------------------------------ following updates

    def _manifest_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = (self.dir / MANIFEST).stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def refresh(self) -> bool:
        """Switch to the folder's current generation if a writer committed a newer one; True if it did.

        The encoder and whitening stay (updates never change them: the checkpoint's hash is checked);
        searches already running finish on the generation they started with."""
        stamp = self._manifest_stamp()
        self._checked = time.monotonic()
        if stamp is None or stamp == self._stamp:
            return False
        with self._swap_lock:
            if stamp == self._stamp:
                return False
            loaded = open_dir(self.dir, self._mmap)
            if loaded.manifest.generation == self.manifest.generation:
                loaded.store.close()
                self._stamp = stamp
                return False
            if loaded.manifest.checkpoint.sha256 != self.manifest.checkpoint.sha256:
                loaded.store.close()
                raise IndexDirError(f"{self.dir}: the new generation was built with another checkpoint; reopen it")
            backend = _choose_backend(loaded.index, loaded.manifest.index.params, self._req_device)
            # the old store is left to the garbage collector: a search in flight may still read it
            self._index, self._store, self._backend = loaded.index, loaded.store, backend
            self.manifest, self.root = loaded.manifest, Path(loaded.manifest.root)
            self._stamp = stamp
            return True

    def _follow_updates(self) -> None:
        if self._follow and time.monotonic() - self._checked >= FOLLOW_CHECK_S:
            self.refresh()

    def __enter__(self) -> SearchIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._store)

    def __repr__(self) -> str:
        return f"SearchIndex({str(self.dir)!r}, {len(self)} entries, {self.manifest.index.type}, device={self.device})"

    # ------------------------------------------------------------ reading the collection

    def labels(self) -> list[str]:
        """Distinct labels, sorted (for the label filter)."""
        self._follow_updates()
        return self._store.labels()

    def cameras(self) -> list[str]:
        """Distinct camera names (make and model), sorted (for the camera filter)."""
        self._follow_updates()
        return self._store.cameras()

    def ids(self) -> np.ndarray:
        """Every entry's id, sorted."""
        self._follow_updates()
        return self._store.ids()

    def rows(self) -> list[Row]:
        """Every entry's metadata row (path relative to the root, label, split, size, hash), in id order."""
        self._follow_updates()
        return self._store.rows()

    def paths(self) -> list[str]:
        """Every entry's path relative to :attr:`root`, in id order."""
        self._follow_updates()
        return [r.path for r in self._store.rows()]

    def vectors(self, ids: np.ndarray | list[int]) -> np.ndarray | None:
        """The stored unit vectors of ``ids``, in that order, where the index keeps them losslessly
        (Flat, IVF-Flat, HNSW-Flat; every Milvus index, which keeps raw vectors beside its codes); None
        for compressed FAISS codes (PQ), whose exact vectors are gone."""
        if self._index is None:  # Milvus
            return self._backend.vectors(np.asarray(ids, dtype=np.int64))
        return stored_vectors(self._index, np.asarray(ids, dtype=np.int64))

    # ------------------------------------------------------------ embedding

    @staticmethod
    def _to_pil(x) -> Image.Image:
        if isinstance(x, Image.Image):
            return to_rgb(x)
        if isinstance(x, str | os.PathLike | bytes | bytearray):
            return load_image(x)
        if isinstance(x, np.ndarray):
            a = x
            if a.dtype != np.uint8:
                a = np.clip(a * (255.0 if a.max() <= 1.0 else 1.0) + 0.5, 0, 255).astype(np.uint8)
            return to_rgb(Image.fromarray(a))
        raise TypeError(f"cannot embed a {type(x).__name__}: pass PIL images, paths, bytes or uint8 arrays")

    def prepare(self, images: list) -> np.ndarray:
        """PIL images / paths / bytes / HxWx3 arrays -> (B, S, S, 3) uint8 encoder inputs (evaluation
        transform). Separate from :meth:`embed_prepared` so request threads can do it in parallel and a
        batcher runs only the forward pass."""
        if not images:
            return np.zeros((0, self.image_size, self.image_size, 3), np.uint8)
        return np.stack([fit_square(self._to_pil(x), self.image_size) for x in images])

    def embed_prepared(self, pixels: np.ndarray) -> np.ndarray:
        """(B, S, S, 3) uint8 from :meth:`prepare` -> (B, d) float32 unit rows, in one forward pass per 256."""
        if len(pixels) == 0:
            return np.zeros((0, self.dim), np.float32)
        with self._embed_lock:
            return self.embedder(nchw(pixels))

    def embed_images(self, images: list) -> np.ndarray:
        """PIL images / paths / bytes / HxWx3 arrays -> (B, d) float32 unit rows (evaluation transform)."""
        return self.embed_prepared(self.prepare(images))

    # ------------------------------------------------------------ searching

    def search_vectors(
        self, q: np.ndarray, k: int, label: str | None = None, folder: str | None = None,
        filters: Filters | None = None,
    ) -> list[list[Hit]]:
        """Top-k by cosine similarity for each query row, optionally only among entries with
        ``label`` and/or under ``folder`` (relative to the root), or passing ``filters`` (which then
        replaces both: label, folder, date-taken range, camera); k results wherever that many match."""
        self._follow_updates()
        q = np.asarray(q, dtype=np.float32)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must be (B, {self.dim}), got {q.shape}")
        k = int(k)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = normalise(q)
        if self._index is None:  # Milvus: the filters run inside the collection's search
            found = self._backend.search(q, k, filters or Filters(label, folder))
            return [[Hit.from_row(row, s) for s, row in hits] for hits in found]
        index, store, backend = self._index, self._store, self._backend  # one generation, even if one follows
        allowed = store.ids_matching(label, folder, filters)
        pool = int(index.ntotal) if allowed is None else len(allowed)
        if pool == 0 or len(q) == 0:
            return [[] for _ in range(len(q))]
        scores, ids = backend.search(q, min(k, pool), allowed)
        rows = store.get(np.unique(ids[ids >= 0]).tolist())
        out = []
        for s_row, i_row in zip(scores, ids, strict=True):
            hits = []
            for s, i in zip(s_row, i_row, strict=True):
                if i < 0:
                    continue
                if int(i) not in rows:
                    raise IndexDirError(f"{self.dir}: index returned id {int(i)} that the metadata lacks")
                hits.append(Hit.from_row(rows[int(i)], float(s)))
            out.append(hits)
        return out

    def search_images(self, images: list, k: int, label: str | None = None, folder: str | None = None,
                      filters: Filters | None = None) -> list[list[Hit]]:
        return self.search_vectors(self.embed_images(images), k, label, folder, filters)

    # ------------------------------------------------------------ metadata

    def get(self, ids: list[int]) -> list[Hit]:
        """Metadata rows in the order asked (score nan); KeyError for unknown ids."""
        self._follow_updates()
        rows = self._store.get(ids)
        missing = [int(i) for i in ids if int(i) not in rows]
        if missing:
            raise KeyError(f"no entries with ids {missing[:10]}")
        return [Hit.from_row(rows[int(i)]) for i in ids]

    def image_path(self, id: int) -> Path:
        """Absolute path of an entry's image; UnsafePathError if the stored path would escape the root."""
        self._follow_updates()
        rows = self._store.get([int(id)])
        if int(id) not in rows:
            raise KeyError(f"no entry with id {int(id)}")
        return safe_join(self.root, rows[int(id)].path)
