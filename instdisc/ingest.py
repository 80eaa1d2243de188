"""What ingesting a collection found: formats, unreadable files, refused links, duplicate files.

Real folders are odd: PNGs named .jpg, 16-bit TIFF scans, CMYK JPEGs, the same photo saved
twice, symlink loops. Nothing is silently dropped: training (``RUN_DIR/ingest.json``) and
index building (``INDEX_DIR/ingest.json``) write this report and print its summary.
Duplicates (identical bytes) are kept -- each file is its own instance and its own index
entry, since deleting a user's rows behind their back loses more than it saves -- but listed.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .fsutil import atomic_write_text, sha256_file
from .images import ImageError, ImageInfo, probe

REPORT_NAME = "ingest.json"
SHOWN = 10  # entries of each list printed in the summary (the JSON has them all)


@dataclass(frozen=True)
class FileFacts:
    """Per-collection facts gathered from the decoded files (cached with the decoded images)."""

    formats: dict[str, int]  # PIL format -> files (JPEG, PNG, WEBP, GIF, TIFF, BMP, ...)
    modes: dict[str, int]  # stored pixel mode -> files (RGB, L, P, RGBA, CMYK, I;16, ...)
    animated: int  # files with more than one frame (the first one is used)
    duplicates: list[list[str]]  # groups of byte-identical files, every one kept

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FileFacts:
        return cls(dict(d["formats"]), dict(d["modes"]), int(d["animated"]), [list(g) for g in d["duplicates"]])


@dataclass
class IngestReport:
    """One split's ingest: what was found under ``root`` and what became of it."""

    root: str
    found: int  # image files the scan found
    decoded: int  # rows of the collection
    store_size: int  # side of the decoded images
    facts: FileFacts
    skipped: list[tuple[str, str]] = field(default_factory=list)  # unreadable files (path, why)
    refused: list[tuple[str, str]] = field(default_factory=list)  # links not followed (path, why)
    cache: str | None = None  # the decoded-image cache file, when one is used
    cache_bytes: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> IngestReport:
        return cls(str(d["root"]), int(d["found"]), int(d["decoded"]), int(d["store_size"]),
                   FileFacts.from_dict(d["facts"]), [(str(p), str(w)) for p, w in d["skipped"]],
                   [(str(p), str(w)) for p, w in d["refused"]], d.get("cache"), int(d.get("cache_bytes", 0)))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["skipped"] = [list(s) for s in self.skipped]
        d["refused"] = [list(s) for s in self.refused]
        return d

    def summary(self) -> str:
        """A few lines for the terminal: counts, then the first entries of each problem list."""
        fmts = ", ".join(f"{k} {v}" for k, v in sorted(self.facts.formats.items(), key=lambda kv: -kv[1]))
        lines = [f"ingest {self.root}: {self.decoded} of {self.found} image files decoded at {self.store_size} px"
                 + (f" ({fmts})" if fmts else "")]
        if self.cache:
            per = self.cache_bytes / max(1, self.decoded)
            lines.append(f"  cache {self.cache}: {self.cache_bytes / 2**20:.1f} MiB, {per:,.0f} bytes per image")
        dup_files = sum(len(g) for g in self.facts.duplicates)
        for title, items in (
            (f"{len(self.skipped)} unreadable, skipped", [f"{p}: {why}" for p, why in self.skipped]),
            (f"{len(self.refused)} links not followed", [f"{p}: {why}" for p, why in self.refused]),
            (f"{dup_files} files in {len(self.facts.duplicates)} groups of identical bytes (all kept)",
             [" = ".join(g) for g in self.facts.duplicates]),
        ):
            if items:
                lines.append(f"  {title}:")
                lines.extend(f"    {x}" for x in items[:SHOWN])
                if len(items) > SHOWN:
                    lines.append(f"    ... and {len(items) - SHOWN} more (see {REPORT_NAME})")
        return "\n".join(lines)


def write_reports(path: str | os.PathLike, reports: dict[str, IngestReport], extra: dict | None = None) -> None:
    """``{split: report}`` (plus ``extra``, e.g. the chosen resolution) as one JSON file, atomically."""
    body = {**(extra or {}), "splits": {k: r.to_dict() for k, r in reports.items()}}
    atomic_write_text(path, json.dumps(body, indent=1) + "\n")


def _hash(path: Path) -> str | None:
    try:
        return sha256_file(path)
    except OSError:
        return None


def facts_from(paths: list[str], infos: list[ImageInfo | None], digests: list[str | None]) -> FileFacts:
    """Facts from per-file headers and content hashes (None where unknown or not needed)."""
    ok = [i for i in infos if i is not None]
    by_hash: dict[str, list[str]] = {}
    for p, h in zip(paths, digests, strict=True):
        if h is not None:
            by_hash.setdefault(h, []).append(p)
    return FileFacts(dict(sorted(Counter(i.format for i in ok).items())),
                     dict(sorted(Counter(i.mode for i in ok).items())), sum(i.frames > 1 for i in ok),
                     sorted(sorted(g) for g in by_hash.values() if len(g) > 1))


def _probe(path: Path) -> ImageInfo | None:
    try:
        return probe(path)
    except ImageError:
        return None


def gather_facts(root: Path, paths: list[str], workers: int | None = None) -> FileFacts:
    """Formats and modes from every file's header; duplicates by hashing only files that share a size."""
    sizes: dict[int, int] = {}
    for p in paths:
        with contextlib.suppress(OSError):
            n = (root / p).stat().st_size
            sizes[n] = sizes.get(n, 0) + 1

    def one(p: str) -> tuple[ImageInfo | None, str | None]:
        try:
            shared = sizes.get((root / p).stat().st_size, 0) > 1
        except OSError:
            return None, None
        return _probe(root / p), _hash(root / p) if shared else None

    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
        got = list(pool.map(one, paths))
    return facts_from(paths, [g[0] for g in got], [g[1] for g in got])
