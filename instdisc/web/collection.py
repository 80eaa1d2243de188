"""Facts about the opened collection that the page shows or offers: labels, folders, example queries,
whether the images are tiny, and the model-and-index panel. Computed once per index and kept.

A failure behind a fallback (a broken metadata database, an unreadable example) is logged and
kept in :attr:`CollectionFacts.problems`, which the info panel lists, so a broken index never
looks like an empty one.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np

from index.search import SearchIndex

from .limits import ANY

SMALL_IMAGE = 64  # a collection whose images are at most this big is shown pixelated
MAX_EXAMPLES = 12
FOLDER_DEPTH = 2
MAX_FOLDER_CHOICES = 300
MAX_LISTED_PATHS = 250_000  # above this the folder filter is typed, not listed

log = logging.getLogger(__name__)


class CollectionFacts:
    """Labels, folders, examples, image size class and the info panel of one :class:`SearchIndex`."""

    def __init__(self, index: SearchIndex, image_size: Callable[[int], tuple[int, int]] | None = None) -> None:
        """``image_size(id) -> (w, h)``: how to measure an image whose size the metadata lacks."""
        self.index = index
        self.root = Path(index.root)
        self._image_size = image_size
        self._labels: list[str] | None = None
        self._cameras: list[str] | None = None
        self._folders: list[str] | None = None
        self._example_ids: list[int] | None = None
        self._small: bool | None = None
        self.problems: list[str] = []  # what went wrong reading the collection, shown in the info panel

    def report_problem(self, what: str, error: BaseException) -> None:
        """Log a failure behind a fallback and keep it for the info panel."""
        log.warning("%s: %s: %s", what, type(error).__name__, error, exc_info=error)
        msg = f"{what} ({type(error).__name__}: {error})"
        if msg not in self.problems:
            self.problems.append(msg)

    def labels(self) -> list[str]:
        if self._labels is None:
            try:
                self._labels = sorted(str(x) for x in (self.index.labels() or []))
            except Exception as e:  # a broken metadata database: say so instead of showing an empty filter
                self.report_problem("the label list could not be read", e)
                self._labels = []
        return self._labels

    def cameras(self) -> list[str]:
        """Camera names (make and model) of the collection's photos, for the camera filter."""
        if self._cameras is None:
            try:
                self._cameras = list(self.index.cameras())
            except Exception as e:  # the filter still accepts typed-in names
                self.report_problem("the camera list could not be read", e)
                self._cameras = []
        return self._cameras

    def all_paths(self, limit: int = MAX_LISTED_PATHS) -> list[str] | None:
        """Every stored relative path, for the folder filter (None when there are too many to list)."""
        if len(self.index) > limit:
            return None
        return self.index.paths()

    def folders(self, max_depth: int = FOLDER_DEPTH, max_choices: int = MAX_FOLDER_CHOICES) -> list[str]:
        """Folder prefixes (up to ``max_depth`` levels) that hold images, for the folder filter."""
        if self._folders is None:
            found: set[str] = set()
            try:
                for p in self.all_paths() or []:
                    parts = p.split("/")[:-1]
                    for d in range(1, min(max_depth, len(parts)) + 1):
                        found.add("/".join(parts[:d]))
                    if len(found) > max_choices:
                        break
            except Exception as e:  # the filter still accepts typed-in folders
                self.report_problem("the folder list could not be read", e)
                found = set()
            self._folders = sorted(found)[:max_choices]
        return self._folders

    def label_choices(self) -> list[str]:
        return [ANY, *self.labels()]

    def folder_choices(self) -> list[str]:
        return [ANY, *self.folders()]

    def example_ids(self, max_examples: int = MAX_EXAMPLES, seed: int = 0) -> list[int]:
        """Example queries from the collection itself: one per label (the first ``max_examples``
        labels), or a spread of images when unlabelled -- the nearest image to a fixed random
        direction, within each label, found through the public search API."""
        if self._example_ids is None:
            ids: list[int] = []
            if len(self.index):
                rng = np.random.default_rng(seed)
                labels = self.labels()[:max_examples]
                try:
                    if labels:
                        q = rng.standard_normal((1, self.index.dim)).astype(np.float32)
                        for lab in labels:
                            ids.extend(h.id for h in self.index.search_vectors(q, 1, label=lab)[0][:1])
                    else:
                        q = rng.standard_normal((max_examples, self.index.dim)).astype(np.float32)
                        for hits in self.index.search_vectors(q, 1):
                            ids.extend(h.id for h in hits[:1] if h.id not in ids)
                except Exception as e:
                    self.report_problem("no examples: searching the index for them failed", e)
                    ids = []
            self._example_ids = ids
        return self._example_ids

    def small_images(self) -> bool:
        """True when the collection's images are tiny (CIFAR): shown pixelated, many per row."""
        if self._small is None:
            sides = []
            try:
                for h in self.index.get(self.example_ids()):
                    if h.width and h.height:
                        sides.append(max(h.width, h.height))
                    elif self._image_size is not None:
                        sides.append(max(self._image_size(h.id)))
            except Exception as e:
                self.report_problem("the size of the collection's images could not be read", e)
            self._small = bool(sides) and statistics.median(sides) <= SMALL_IMAGE
        return self._small

    def info_markdown(self) -> str:
        """Model (architecture, epochs, recorded kNN accuracy) and index (type, size, device)."""
        m = self.index.manifest
        arch = m.architecture
        sides = " + ".join(f"{s}" for s in m.sides) if arch else ""
        whitened = ", whitened" if m.embedding.whitening_sha256 else ""
        details = f" (width {arch.width}, {arch.low_dim}-d features, {sides}px input{whitened})" if arch else ""
        model = f"**{arch.arch if arch else '?'}**{details} · trained {m.checkpoint.epoch} epochs"
        model += (f" · recorded kNN top-1 {m.knn_top1 * 100:.1f}%" if m.knn_top1 is not None
                  else " · kNN accuracy not recorded")
        info = m.index
        extra = []
        if info.factory != "Flat":
            extra.append(f"`{info.factory}`")
        if info.params:
            extra.append(", ".join(f"{k}={v}" for k, v in info.params.items()))
        if info.type != "flat":
            extra.append(f"recall@{info.recall_k} {info.recall_at_10:.3f}")
        itxt = info.type + (f" ({'; '.join(extra)})" if extra else "")
        device_txt = {"faiss-gpu": "GPU (FAISS)", "torch-cuda": "GPU (torch)", "cpu": "CPU"}.get(self.index.device,
                                                                                               self.index.device)
        labels = self.labels()
        lab_txt = f"{len(labels)} labels" if labels else "no labels"
        ckpt = Path(m.checkpoint.path)
        return (
            f"**Model** — {model} · checkpoint `{ckpt.parent.name}/{ckpt.name}`<br>"
            f"**Index** — {itxt}, {m.count:,} images, {lab_txt}, search on {device_txt}<br>"
            f"images under `{self.root}`"
            + "".join(f"<br>⚠️ **Problem:** {p}" for p in self.problems)
        )

