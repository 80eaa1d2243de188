"""Test helper: tamper with a copied index folder on disk the way an attacker with write access could,
through the index package's public file formats (no private members of an opened index)."""

from __future__ import annotations

from pathlib import Path

from index.manifest import Manifest
from index.store import MetadataStore, write_db


def set_stored_path(index_dir: Path, row: int, path: str) -> None:
    """Rewrite row ``row`` of the metadata database to point at ``path``, recording the new file size in the
    manifest so the folder still opens (only the stored path is wrong)."""
    m = Manifest.read(index_dir)
    db = index_dir / m.files.db
    store = MetadataStore(db)
    rows, info = store.rows(), store.info
    store.close()
    rows[row].path = path
    write_db(db, rows, info)
    m.files.db_bytes = db.stat().st_size
    m.write(index_dir)
