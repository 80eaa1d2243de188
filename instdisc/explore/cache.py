"""Exploration results cached next to the index, keyed on the index's generation.

Every build, ``--add`` and ``--remove`` commits a new generation (see index/layout.py), so a
result stored under ``INDEX_DIR/explore/<generation>/`` can never describe other vectors: no
hook in the index writers is needed, and results of older generations are deleted the next
time anything is stored. Within a generation, each job's file name carries a digest of its
parameters (k, seed, featuriser, ...), so a different request never reads another's result.

A result is a dataclass: its array fields go to ``<stem>.npz``, the rest to ``<stem>.json``,
each written atomically, the JSON last (it is the commit record of the entry).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from instdisc.fsutil import atomic_write_bytes, atomic_write_text

FOLDER = "explore"
VERSION = 4  # bump when a cached dataclass changes shape

T = TypeVar("T")
log = logging.getLogger(__name__)


def digest(params: dict) -> str:
    return hashlib.sha256(json.dumps({"v": VERSION, **params}, sort_keys=True).encode()).hexdigest()[:16]


def _plain(value):
    """JSON for a dataclass nested in a result (the similar tier's groups); the class rebuilds it on load."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"cannot store {type(value).__name__} in the cache")


def save(stem: Path, obj, params: dict) -> None:
    """Write dataclass ``obj`` as ``stem.npz`` (arrays) + ``stem.json`` (the rest and ``params``)."""
    values = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    arrays = {k: v for k, v in values.items() if isinstance(v, np.ndarray)}
    rest = {k: v for k, v in values.items() if k not in arrays}
    if arrays:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(stem.with_suffix(".npz"), buf.getvalue())
    atomic_write_text(stem.with_suffix(".json"), json.dumps(
        {"params": params, "arrays": sorted(arrays), "fields": rest}, indent=1, default=_plain) + "\n")


def load(stem: Path, cls: type[T]) -> T | None:
    """The dataclass stored at ``stem``, or None if absent or unreadable (then it is recomputed)."""
    try:
        meta = json.loads(stem.with_suffix(".json").read_text(encoding="utf-8"))
        fields = dict(meta["fields"])
        if meta["arrays"]:
            with np.load(stem.with_suffix(".npz")) as z:
                fields.update({k: z[k] for k in meta["arrays"]})
        return cls(**fields)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("ignoring a damaged cache entry %s: %s", stem, e)
        return None


class ResultCache:
    """The results of one index generation, on disk and in memory (the app asks for the kNN graph on
    every slider move); ``generation=None`` (a collection that is not an index) keeps them in memory only."""

    def __init__(self, index_dir: str | Path, generation: str | None) -> None:
        self.root = Path(index_dir) / FOLDER
        self.generation = generation
        self.dir = self.root / generation if generation else None
        self._memory: dict[str, object] = {}

    def stem(self, job: str, params: dict) -> Path | None:
        return self.dir / f"{job}-{digest(params)}" if self.dir else None

    def fetch(self, job: str, params: dict, cls: type[T], compute: Callable[[], T]) -> T:
        """The cached result of ``job`` with ``params``, computing and storing it if there is none."""
        key = f"{job}-{digest(params)}"
        if key in self._memory:
            return self._memory[key]  # type: ignore[return-value]
        stem = self.stem(job, params)
        if stem is not None:
            hit = load(stem, cls)
            if hit is not None:
                self._memory[key] = hit
                return hit
        obj = compute()
        self._memory[key] = obj
        if stem is not None:
            try:
                save(stem, obj, params)
                self.prune()
            except OSError as e:  # a read-only index folder: still answer, just uncached
                log.warning("cannot cache %s in %s: %s", job, self.dir, e)
        return obj

    def prune(self) -> list[str]:
        """Delete the results of other generations (the index has moved on)."""
        gone = []
        if self.root.is_dir():
            for p in self.root.iterdir():
                if p.is_dir() and p.name != self.generation:
                    shutil.rmtree(p, ignore_errors=True)
                    gone.append(p.name)
        return gone
