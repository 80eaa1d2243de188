"""SQLite metadata: one row per indexed image, keyed by the FAISS id.

A real database rather than a JSON list so that a million rows load lazily, filters (label,
folder prefix) are index lookups, and the app can fetch just the rows of a result page.
Files are never modified in place: a new version is written to a temporary file (from
scratch or as a copy of the old one), closed, and renamed, so a reader never sees a
half-written database.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import astuple, dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from instdisc.fsutil import atomic_write

from .errors import IndexDirError

SCHEMA = """
CREATE TABLE items (
    id INTEGER PRIMARY KEY,      -- the FAISS id
    path TEXT NOT NULL UNIQUE,   -- POSIX path relative to the manifest's root
    label TEXT,                  -- class name, NULL when unknown
    split TEXT,                  -- train / test / ... or NULL
    width INTEGER,               -- of the original file, NULL if it could not be read
    height INTEGER,
    sha256 TEXT,                 -- of the file's bytes
    file_bytes INTEGER,          -- size and modification time when indexed (sync compares them first)
    mtime_ns INTEGER,
    taken TEXT,                  -- date taken, local ISO time (EXIF, else the file's time)
    taken_from TEXT,             -- 'exif' or 'file'
    camera_make TEXT,
    camera_model TEXT,
    camera TEXT                  -- make and model as one name ('Apple iPhone 13'), for the filter
);
CREATE INDEX items_label ON items(label);
CREATE INDEX items_taken ON items(taken);
CREATE INDEX items_camera ON items(camera);
CREATE TABLE info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
BASE_COLUMNS = ("id", "path", "label", "split", "width", "height", "sha256")  # what every database has
PHOTO_COLUMNS = ("file_bytes", "mtime_ns", "taken", "taken_from", "camera_make", "camera_model", "camera")
COLUMNS = BASE_COLUMNS + PHOTO_COLUMNS


@dataclass
class Row:
    """One entry's metadata; the photo facts are None in databases written before they were recorded."""

    id: int
    path: str
    label: str | None = None
    split: str | None = None
    width: int | None = None
    height: int | None = None
    sha256: str | None = None
    file_bytes: int | None = None
    mtime_ns: int | None = None
    taken: str | None = None
    taken_from: str | None = None
    camera_make: str | None = None
    camera_model: str | None = None
    camera: str | None = None


@dataclass(frozen=True)
class Filters:
    """What a search may return: label, folder prefix, date-taken range (inclusive ISO bounds), camera name.
    Hashable, so concurrent queries with equal filters share one search."""

    label: str | None = None
    folder: str | None = None
    taken_from: str | None = None
    taken_to: str | None = None
    camera: str | None = None

    def __bool__(self) -> bool:
        return any(v not in (None, "") for v in astuple(self))


def normalise_folder(folder: str) -> str:
    """'a/b/' or '/a/b' -> 'a/b'; '' -> ''. Refuses '..' so a filter cannot look outside."""
    f = folder.replace("\\", "/").strip().strip("/")
    if any(part == ".." for part in PurePosixPath(f).parts):
        raise ValueError(f"folder filter may not contain '..': {folder!r}")
    return "" if f in ("", ".") else f


def _prefix_range(folder: str) -> tuple[str, str]:
    """Paths under ``folder`` are exactly those in [folder + '/', folder + '0') ('0' follows '/')."""
    return folder + "/", folder + "0"


# ---------------------------------------------------------------- writing


def _insert(con: sqlite3.Connection, rows: Iterable[Row]) -> None:
    con.executemany(f"INSERT INTO items ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                    (astuple(r) for r in rows))


def _add_photo_columns(con: sqlite3.Connection) -> None:
    """Bring a database written before the photo facts were recorded up to :data:`SCHEMA` (NULLs)."""
    have = {r[1] for r in con.execute("PRAGMA table_info(items)")}
    for col in PHOTO_COLUMNS:
        if col not in have:
            kind = "INTEGER" if col in ("file_bytes", "mtime_ns") else "TEXT"
            con.execute(f"ALTER TABLE items ADD COLUMN {col} {kind}")
    con.execute("CREATE INDEX IF NOT EXISTS items_taken ON items(taken)")
    con.execute("CREATE INDEX IF NOT EXISTS items_camera ON items(camera)")


def _set_info(con: sqlite3.Connection, info: dict[str, str]) -> None:
    con.executemany("INSERT OR REPLACE INTO info (key, value) VALUES (?, ?)", [(k, str(v)) for k, v in info.items()])


def write_db(path: str | os.PathLike, rows: Iterable[Row], info: dict[str, str]) -> None:
    """A new database at ``path`` holding ``rows``, written atomically."""

    def write(tmp: str) -> None:
        con = sqlite3.connect(tmp)
        try:
            con.executescript(SCHEMA)
            _insert(con, rows)
            _set_info(con, info)
            con.commit()
        finally:
            con.close()

    try:
        atomic_write(path, write)
    except sqlite3.IntegrityError as e:
        raise IndexDirError(f"duplicate id or path in the metadata: {e}") from e


def update_db(
    src: str | os.PathLike, dst: str | os.PathLike, *, remove_ids: Iterable[int] = (), add: Iterable[Row] = (),
    path_prefix: str = "", info: dict[str, str] | None = None,
) -> None:
    """Copy ``src`` to a new database ``dst`` (atomically) with rows removed, re-rooted and added.

    ``path_prefix`` is prepended to every existing path (the root moved up to a parent folder).
    """

    def write(tmp: str) -> None:
        old = sqlite3.connect(_ro_uri(src), uri=True)
        con = sqlite3.connect(tmp)
        try:
            old.backup(con)
            _add_photo_columns(con)
            ids = [(int(i),) for i in remove_ids]
            if ids:
                con.executemany("DELETE FROM items WHERE id = ?", ids)
            if path_prefix:
                con.execute("UPDATE items SET path = ? || path", (path_prefix,))
            _insert(con, add)
            if info:
                _set_info(con, info)
            con.commit()
        finally:
            con.close()
            old.close()

    try:
        atomic_write(dst, write)
    except sqlite3.IntegrityError as e:
        raise IndexDirError(f"duplicate id or path in the metadata: {e}") from e


# ---------------------------------------------------------------- reading


def _ro_uri(path: str | os.PathLike) -> str:
    return Path(path).absolute().as_uri() + "?mode=ro"


class MetadataStore:
    """Read-only access to one metadata database; safe to share between threads."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise IndexDirError(f"{self.path}: metadata database missing")
        self._lock = threading.Lock()
        try:
            self._con = sqlite3.connect(_ro_uri(self.path), uri=True, check_same_thread=False)
            self._count = self._one("SELECT count(*) FROM items")
            self._info = dict(self._con.execute("SELECT key, value FROM info").fetchall())
            have = {r[1] for r in self._con.execute("PRAGMA table_info(items)")}
        except sqlite3.DatabaseError as e:
            raise IndexDirError(f"{self.path}: unreadable metadata database ({e})") from e
        self._labels: list[str] | None = None
        self._cameras: list[str] | None = None
        # an older database lacks the photo columns: read them as NULL
        self._select = ", ".join(c if c in have else f"NULL AS {c}" for c in COLUMNS)
        self.has_photo_facts = all(c in have for c in PHOTO_COLUMNS)

    def _one(self, sql: str, args: tuple = ()) -> int:
        return int(self._con.execute(sql, args).fetchone()[0])

    def _query(self, sql: str, args: tuple | list = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._con.execute(sql, args).fetchall()
            except sqlite3.DatabaseError as e:
                raise IndexDirError(f"{self.path}: metadata database error ({e})") from e

    def close(self) -> None:
        self._con.close()

    def __len__(self) -> int:
        return self._count

    @property
    def info(self) -> dict[str, str]:
        return dict(self._info)

    def ids(self) -> np.ndarray:
        """All ids, sorted."""
        return np.array([r[0] for r in self._query("SELECT id FROM items ORDER BY id")], dtype=np.int64)

    def labels(self) -> list[str]:
        if self._labels is None:
            rows = self._query("SELECT DISTINCT label FROM items WHERE label IS NOT NULL ORDER BY label")
            self._labels = [r[0] for r in rows]
        return list(self._labels)

    def get(self, ids: Iterable[int]) -> dict[int, Row]:
        """Rows by id (missing ids are absent from the result)."""
        ids = [int(i) for i in ids]
        out: dict[int, Row] = {}
        for i in range(0, len(ids), 900):  # stay under SQLite's bound-parameter limit
            chunk = ids[i : i + 900]
            sql = f"SELECT {self._select} FROM items WHERE id IN ({', '.join('?' * len(chunk))})"
            for r in self._query(sql, chunk):
                out[r[0]] = Row(*r)
        return out

    def rows(self) -> list[Row]:
        return [Row(*r) for r in self._query(f"SELECT {self._select} FROM items ORDER BY id")]

    def cameras(self) -> list[str]:
        """Distinct camera names, sorted (for the camera filter)."""
        if self._cameras is None:
            rows = self._query("SELECT DISTINCT camera FROM items WHERE camera IS NOT NULL ORDER BY camera") \
                if self.has_photo_facts else []
            self._cameras = [r[0] for r in rows]
        return list(self._cameras)

    def ids_matching(self, label: str | None = None, folder: str | None = None,
                     filters: Filters | None = None) -> np.ndarray | None:
        """Sorted ids passing the filters (``label``/``folder`` or a :class:`Filters`), or None when there is
        no filter. Entries without a date or camera never pass a date or camera filter."""
        f_ = filters or Filters(label, folder)
        where, args = [], []
        if f_.label is not None and f_.label != "":
            where.append("label = ?")
            args.append(f_.label)
        f = normalise_folder(f_.folder) if f_.folder else ""
        if f:
            where.append("path >= ? AND path < ?")
            args.extend(_prefix_range(f))
        photo = [(f_.taken_from, "taken >= ?"), (f_.taken_to, "taken <= ?"), (f_.camera, "camera = ?")]
        for value, cond in photo:
            if value:
                where.append(cond if self.has_photo_facts else "0")
                if self.has_photo_facts:
                    args.append(value)
        if not where:
            return None
        rows = self._query(f"SELECT id FROM items WHERE {' AND '.join(where)} ORDER BY id", args)
        return np.array([r[0] for r in rows], dtype=np.int64)

    def ids_for_path(self, path: str) -> list[int]:
        """The entry with this exact relative path, or every entry under it if it is a folder."""
        exact = self._query("SELECT id FROM items WHERE path = ?", (path,))
        if exact:
            return [exact[0][0]]
        f = normalise_folder(path)
        if not f:
            return []
        return [r[0] for r in self._query("SELECT id FROM items WHERE path >= ? AND path < ?", _prefix_range(f))]

    def file_states(self) -> dict[str, tuple[int, str | None, int | None, int | None]]:
        """path -> (id, sha256, file_bytes, mtime_ns) for every entry (what a sync compares with the folder)."""
        if not self.has_photo_facts:
            return {p: (i, h, None, None) for i, p, h in self._query("SELECT id, path, sha256 FROM items")}
        return {p: (i, h, n, t) for i, p, h, n, t in self._query("SELECT id, path, sha256, file_bytes, mtime_ns "
                                                                 "FROM items")}

    def path_hashes(self) -> dict[str, tuple[int, str | None]]:
        """path -> (id, sha256) for every entry (used to skip or replace files on --add)."""
        return {p: (i, h) for i, p, h in self._query("SELECT id, path, sha256 FROM items")}
