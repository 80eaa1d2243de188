"""Keeping an index in step with a folder that changes: ``build_index.py --sync FOLDER --out INDEX_DIR``.

A photo folder gains files, loses them, and has them moved between albums, renamed and edited.
Re-embedding everything each time is the slow part, so the folder is compared with the index's
metadata and only what changed is touched:

* a path in both whose size and modification time equal the recorded ones is unchanged (no read);
* where they disagree (or were never recorded), the file is hashed: the same SHA-256 means only
  its time changed (the row's facts are refreshed, the vector kept), another one means the
  content changed (re-embedded, under a new id, as ``--add`` replaces a file);
* a file at a new path whose SHA-256 is that of an entry whose path is gone was moved or
  renamed: it keeps its id and vector and gets its new path, label and split -- never re-embedded;
* other new files are embedded and added; entries whose file is gone are removed.

Labels and splits are recomputed over the whole folder, as a build does, so the metadata equals
a fresh build's. The update is one new generation committed like ``--add`` (a crash leaves the
previous one serving; rerunning finishes the work). What was done and how long each part took is
returned as a :class:`SyncReport`, written to ``INDEX_DIR/sync.json``.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from instdisc.conventions import labels_and_splits
from instdisc.fsutil import atomic_write_text
from instdisc.ingest import REPORT_NAME, IngestReport, facts_from, write_reports
from instdisc.scan import scan_folder

from .build import (
    INGEST_SPLIT,
    BuildOptions,
    FileInfo,
    build,
    embed_files,
    entry_row,
    file_infos,
    placed_embedder,
    remove_from_index,
    write_update,
)
from .embedding import whitening_of
from .errors import IndexDirError
from .layout import locked, open_dir, verified_checkpoint
from .manifest import MANIFEST, Update, now
from .store import Row

REPORT = "sync.json"
LISTED = 100  # paths listed per kind in the report (the counts are complete)

Stat = tuple[int, int]  # (size in bytes, modification time in ns)
Entry = tuple[int, str | None, int | None, int | None]  # (id, sha256, size, mtime_ns) of an indexed path


@dataclass
class SyncTimes:
    """Seconds per part of a sync."""

    scan: float = 0.0  # listing the folder
    compare: float = 0.0  # stat of every file, compared with the metadata
    hash: float = 0.0  # reading files whose size or time disagree, and new files (SHA-256, header, EXIF)
    embed: float = 0.0  # decoding and embedding new and changed files
    write: float = 0.0  # the new generation's index and metadata, and the commit
    total: float = 0.0


@dataclass
class SyncPlan:
    """What the comparison decided (paths relative to the folder)."""

    unchanged: int = 0
    touched: list[tuple[int, str]] = field(default_factory=list)  # same bytes, new time: row refreshed
    moved: list[tuple[int, str, str]] = field(default_factory=list)  # (id, old path, new path)
    changed: list[tuple[int, str]] = field(default_factory=list)  # (old id, path): re-embed
    new: list[str] = field(default_factory=list)  # embed and add
    removed: list[tuple[int, str]] = field(default_factory=list)  # (id, path): file gone
    infos: dict[str, FileInfo] = field(default_factory=dict)  # what was read of the files hashed

    @property
    def embeds(self) -> list[str]:
        return sorted([p for _, p in self.changed] + self.new)


@dataclass
class SyncReport:
    """What a sync did (counts complete, path lists cut at ``LISTED``) and how long each part took."""

    folder: str
    index: str
    found: int  # image files in the folder
    count: int  # entries after the sync
    unchanged: int
    touched: int
    moved: int  # kept their vector: not re-embedded
    changed: int  # re-embedded
    added: int
    removed: int
    embedded: int  # files decoded and embedded (added + changed)
    relabelled: int  # kept entries whose label or split follows a new folder layout
    unreadable: list[tuple[str, str]]  # new or changed files that could not be decoded (path, why)
    generation_before: str | None
    generation_after: str | None
    built: bool = False  # there was no index yet: a full build
    times: SyncTimes = field(default_factory=SyncTimes)
    moved_paths: list[tuple[str, str]] = field(default_factory=list)
    added_paths: list[str] = field(default_factory=list)
    removed_paths: list[str] = field(default_factory=list)
    changed_paths: list[str] = field(default_factory=list)
    time: str = field(default_factory=now)

    @property
    def did_something(self) -> bool:
        return self.generation_after != self.generation_before

    def to_dict(self) -> dict:
        d = asdict(self)
        d["unreadable"] = [list(u) for u in self.unreadable]
        d["moved_paths"] = [list(m) for m in self.moved_paths]
        return d

    def summary(self) -> str:
        t = self.times
        what = "built" if self.built else (f"{self.added} added, {self.removed} removed, {self.moved} moved or renamed "
                                           f"(not re-embedded), {self.changed} changed (re-embedded), "
                                           f"{self.touched} touched, {self.unchanged} unchanged")
        head = f"sync {self.folder}: {what}; {len(self.unreadable)} unreadable; {self.count} entries\n"
        if self.built:
            return head + f"  time: {t.total:.2f} s (a full build)"
        return (head + f"  time: scan {t.scan:.2f} s, compare {t.compare:.2f} s, hash {t.hash:.2f} s, "
                f"embed {t.embed:.2f} s ({self.embedded} files), write {t.write:.2f} s, total {t.total:.2f} s")


# ---------------------------------------------------------------- comparing


def stat_files(root: Path, paths: list[str]) -> dict[str, Stat]:
    """(size, mtime_ns) of each path that still exists (a file deleted meanwhile is left out)."""
    out: dict[str, Stat] = {}
    for p in paths:
        try:
            st = os.stat(root / p)
        except OSError:
            continue
        out[p] = (int(st.st_size), int(st.st_mtime_ns))
    return out


def plan_sync(indexed: dict[str, Entry], found: dict[str, Stat],
              read: Callable[[list[str]], dict[str, FileInfo]]) -> SyncPlan:
    """Decide what to do; ``read(paths) -> {path: FileInfo}`` reads the files whose stat does not settle it."""
    plan = SyncPlan()
    suspects = []  # indexed paths whose size or time disagree (or were never recorded)
    for p, (size, mtime) in found.items():
        e = indexed.get(p)
        if e is None:
            continue
        if e[2] == size and e[3] == mtime and e[1] is not None:
            plan.unchanged += 1
        else:
            suspects.append(p)
    fresh = sorted(p for p in found if p not in indexed)
    gone = sorted(p for p in indexed if p not in found)
    plan.infos = read(sorted(suspects) + fresh)
    for p in sorted(suspects):
        info = plan.infos.get(p)
        if info is None or info.sha256 is None:  # vanished or unreadable while we looked: treat as gone
            gone.append(p)
            continue
        (plan.touched if info.sha256 == indexed[p][1] else plan.changed).append((indexed[p][0], p))
    by_hash: dict[str, list[str]] = defaultdict(list)
    for p in sorted(gone):
        if indexed[p][1] is not None:
            by_hash[indexed[p][1]].append(p)
    taken: set[str] = set()
    for p in fresh:
        info = plan.infos.get(p)
        olds = by_hash.get(info.sha256) if info is not None and info.sha256 else None
        if olds:
            old = olds.pop(0)
            taken.add(old)
            plan.moved.append((indexed[old][0], old, p))
        elif info is not None and info.sha256 is not None:
            plan.new.append(p)
    plan.removed = [(indexed[p][0], p) for p in sorted(gone) if p not in taken]
    return plan


# ---------------------------------------------------------------- syncing


def write_report(index_dir: str | os.PathLike, report: SyncReport) -> Path:
    p = Path(index_dir) / REPORT
    atomic_write_text(p, json.dumps(report.to_dict(), indent=1) + "\n")
    return p


def sync(
    index_dir: str | os.PathLike, folder: str | os.PathLike, checkpoint: str | os.PathLike | None = None,
    options: BuildOptions | None = None,
) -> SyncReport:
    """Make INDEX_DIR mirror FOLDER (see the module doc); build it when there is no index yet
    (``checkpoint`` then says which encoder). Writes ``INDEX_DIR/sync.json`` and returns the report."""
    options = options or BuildOptions()
    t_start = time.perf_counter()
    d, root = Path(index_dir), Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise ValueError(f"--sync {folder}: not a folder")
    if not (d / MANIFEST).exists():
        if checkpoint is None:
            raise ValueError(f"{d} holds no index yet: pass --checkpoint to build it (or 'general')")
        m = build(checkpoint, d, root, options)
        times = SyncTimes(total=time.perf_counter() - t_start)
        report = SyncReport(str(root), str(d), m.count + len(m.skipped), m.count, 0, 0, 0, 0, m.count, 0, m.count, 0,
                            [tuple(s) for s in m.skipped], None, m.generation, built=True, times=times)
        write_report(d, report)
        return report
    with locked(d):
        loaded = open_dir(d)
        try:
            report = _sync_locked(d, root, loaded, checkpoint, options, t_start)
        finally:
            loaded.store.close()
    write_report(d, report)
    return report


def _sync_locked(d: Path, root: Path, loaded, checkpoint, options: BuildOptions, t_start: float) -> SyncReport:
    m, store = loaded.manifest, loaded.store
    times = SyncTimes()
    gen_before = m.generation
    t = time.perf_counter()
    scanned = scan_folder(root)
    times.scan = time.perf_counter() - t
    t = time.perf_counter()
    found = stat_files(root, scanned.paths)
    indexed = store.file_states()
    times.compare = time.perf_counter() - t
    t = time.perf_counter()

    def read(paths: list[str]) -> dict[str, FileInfo]:
        return dict(zip(paths, file_infos(root, paths, options.progress), strict=True))

    plan = plan_sync(indexed, found, read)
    times.hash = time.perf_counter() - t

    t = time.perf_counter()
    vecs, kept, unreadable = np.zeros((0, m.dim), np.float32), [], []
    if plan.embeds:
        ckpt = verified_checkpoint(m, checkpoint)
        embedder = placed_embedder(ckpt, options, m.sides, whitening_of(m, store.info, str(d)))
        if embedder.dim != m.dim:
            raise IndexDirError(f"encoder gives {embedder.dim}-d vectors, the index holds {m.dim}-d")
        vecs, kept, unreadable = embed_files(embedder, root, plan.embeds, options.progress)
        vecs = embedder.whiten(vecs)
    times.embed = time.perf_counter() - t

    t = time.perf_counter()
    kept_set = set(kept)
    final_paths = sorted([p for p in found if p in indexed and p not in {c for _, c in plan.changed}]
                         + [p for _, p in plan.changed if p in kept_set] + [new for _, _, new in plan.moved]
                         + [p for p in plan.new if p in kept_set])
    final_paths = sorted(set(final_paths) - {p for _, p in plan.removed})
    labels, splits = labels_and_splits(final_paths)
    label_of = {p: (lab, sp) for p, lab, sp in zip(final_paths, labels, splits, strict=True)}

    rewrite: dict[int, Row] = {}  # id -> its new row (same id, vector kept)
    for id_, p in plan.touched:
        rewrite[id_] = entry_row(id_, p, *label_of[p], plan.infos[p])
    for id_, _, new in plan.moved:
        rewrite[id_] = entry_row(id_, new, *label_of[new], plan.infos[new])
    changed_ids = {i for i, _ in plan.changed}
    kept_old = [indexed[p][0] for p in final_paths if p in indexed and indexed[p][0] not in changed_ids
                and indexed[p][0] not in rewrite]
    relabelled = 0
    for id_, row in store.get(kept_old).items():
        want = label_of[row.path]
        if (row.label, row.split) != want:
            rewrite[id_] = replace(row, label=want[0], split=want[1])
            relabelled += 1
    new_ids = np.arange(m.next_id, m.next_id + len(kept), dtype=np.int64)
    new_rows = [entry_row(int(i), p, *label_of[p], plan.infos[p]) for i, p in zip(new_ids, kept, strict=True)]
    drop = sorted({i for i, _ in plan.removed} | changed_ids)
    gen_after = gen_before
    if drop or len(kept) or rewrite:
        index = remove_from_index(loaded.index, np.array(drop, dtype=np.int64), m)
        if len(kept):
            index.add_with_ids(np.ascontiguousarray(vecs, dtype=np.float32), new_ids)
        m.next_id += len(kept)
        m.root = str(root)
        changed_kept = [p for _, p in plan.changed if p in kept_set]
        added = len(kept) - len(changed_kept)
        m.updates.append(Update("sync", now(), count=len(plan.removed), source=str(root), added=added,
                                replaced=len(changed_kept), unchanged=plan.unchanged, skipped=len(unreadable),
                                moved=len(plan.moved), unreadable=[list(u) for u in unreadable[:LISTED]]))
        gen_after = write_update(d, store.path, index, m, remove_ids=drop + sorted(rewrite),
                                 add=[*rewrite.values(), *new_rows])
    times.write = time.perf_counter() - t
    infos = [plan.infos[p] for p in sorted(plan.infos)]
    facts = facts_from(sorted(plan.infos), [i.head for i in infos], [i.sha256 for i in infos])
    write_reports(d / REPORT_NAME, {INGEST_SPLIT: IngestReport(str(root), len(found), len(final_paths), max(m.sides),
                                                                facts, list(unreadable), list(scanned.refused))})
    times.total = time.perf_counter() - t_start
    changed_kept = [p for _, p in plan.changed if p in kept_set]
    return SyncReport(
        str(root), str(d), len(found), len(final_paths), plan.unchanged, len(plan.touched), len(plan.moved),
        len(changed_kept), len(kept) - len(changed_kept), len(plan.removed) + len(plan.changed) - len(changed_kept),
        len(kept), relabelled, list(unreadable), gen_before, gen_after, times=times,
        moved_paths=[(o, n) for _, o, n in plan.moved[:LISTED]],
        added_paths=[p for p in plan.new if p in kept_set][:LISTED],
        removed_paths=[p for _, p in plan.removed[:LISTED]], changed_paths=changed_kept[:LISTED])
