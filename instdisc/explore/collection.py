"""What the exploration jobs read: ids, unit vectors, metadata and a way to see and re-embed images.

The jobs (duplicate grouping, calibration, clustering, the map) work on this small typed view
instead of on :class:`index.search.SearchIndex` directly, so the same code runs on a built index
and on an in-memory collection featurised some other way (the raw-pixel baseline of the
planted-duplicate evaluation).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import ExploreError

Embed = Callable[[list[Image.Image]], np.ndarray]  # PIL images -> (B, d) float32 unit rows

STORED, COMPUTED, CACHED = "stored", "computed", "cached"  # where an index collection's vectors came from


@dataclass
class Embedding:
    """How a collection's vectors were made, so a report says what its scores mean (groups.json, the summary)."""

    name: str  # "index": the index's own recipe; "native": the checkpoint at its native side (explore/embeddings.py)
    sides: list[int]  # whole-image sides embedded at (several: the unit vectors averaged)
    whitened: bool
    source: str  # STORED: the index's vectors; COMPUTED: re-embedded from the files now; CACHED: re-embedded before

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        sides = " + ".join(f"{s} px" for s in self.sides) + (", averaged" if len(self.sides) > 1 else "")
        how = {STORED: "the index's stored vectors", COMPUTED: "re-embedded from the image files (now cached)",
               CACHED: "re-embedded from the image files, read from the explore cache"}[self.source]
        same = " (the index's own recipe is native)" if self.name != "index" and self.source == STORED else ""
        return f"{self.name} embedding: {sides}, {'whitened' if self.whitened else 'not whitened'}; {how}{same}"


@dataclass
class Collection:
    """Row ``i`` of every array is one entry; ``ids`` are the index's ids (stable across updates)."""

    ids: np.ndarray  # (N,) int64
    vectors: np.ndarray  # (N, d) float32 unit rows
    paths: list[str]
    labels: list[str | None]
    splits: list[str | None]
    widths: list[int | None]
    heights: list[int | None]
    load_image: Callable[[int], Image.Image]  # row -> RGB image (for edits, sheets, thumbnails)
    embed: Embed  # re-embeds edited images the way the vectors were made (threshold calibration)
    file_path: Callable[[int], Path | None] = lambda row: None  # row -> file on disk, where there is one
    sha256: list[str | None] | None = None  # of each file's bytes, where known (exact-duplicate tier)
    embedding: Embedding | None = None  # how the vectors were made, where it is an index's (None: in-memory)

    def __post_init__(self) -> None:
        n = len(self.ids)
        if self.vectors.ndim != 2 or len(self.vectors) != n:
            raise ExploreError(f"vectors must be (N={n}, d), got {self.vectors.shape}")
        for name in ("paths", "labels", "splits", "widths", "heights", "sha256"):
            if getattr(self, name) is not None and len(getattr(self, name)) != n:
                raise ExploreError(f"{name} has {len(getattr(self, name))} entries, ids {n}")

    def __len__(self) -> int:
        return len(self.ids)

    def _stat(self, row: int) -> os.stat_result | None:
        p = self.file_path(row)
        try:
            return os.stat(p) if p is not None else None
        except OSError:
            return None

    def file_bytes(self, row: int) -> int | None:
        """Size of the entry's file (the keep/remove tie-breaker), None where it has none."""
        st = self._stat(row)
        return st.st_size if st is not None else None

    def file_mtime(self, row: int) -> float | None:
        """Modification time of the entry's file (the keep rule's third key), None where it has none."""
        st = self._stat(row)
        return st.st_mtime if st is not None else None

    def has_labels(self) -> bool:
        return any(x is not None for x in self.labels)


def from_index(si) -> Collection:
    """The collection of an opened :class:`index.search.SearchIndex` (its public read API only).

    Refused for compressed (PQ) indexes: their exact vectors are gone, and scores from codes
    would put the duplicate threshold in the wrong place."""
    rows = si.rows()
    ids = np.asarray([r.id for r in rows], dtype=np.int64)
    vectors = si.vectors(ids) if len(ids) else np.zeros((0, si.dim), np.float32)
    if vectors is None:
        raise ExploreError(f"{si.dir}: a {si.manifest.index.type} index keeps compressed codes, not the vectors; "
                           "rebuild it with --index-type flat or ivf to explore it")
    from instdisc.images import load_image

    def file_path(row: int) -> Path:
        return si.image_path(int(ids[row]))

    return Collection(
        ids=ids, vectors=np.ascontiguousarray(vectors, dtype=np.float32), paths=[r.path for r in rows],
        labels=[r.label for r in rows], splits=[r.split for r in rows], widths=[r.width for r in rows],
        heights=[r.height for r in rows], load_image=lambda row: load_image(file_path(row)),
        embed=si.embed_images, file_path=file_path, sha256=[r.sha256 for r in rows],
        embedding=Embedding("index", list(si.manifest.sides), bool(si.manifest.embedding.whitening_sha256), STORED))
