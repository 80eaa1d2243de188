"""Finding a collection's image files: any nesting, hidden entries ignored, symlinks followed once.

Symlink rules (docs/training.md): a link to a file or folder inside the
collection root is followed (a linked file is a second entry for the same bytes, reported as
a duplicate); a folder reached a second time -- a link loop, or two links to one folder -- is
not walked again; a link whose target lies outside the root, or that points nowhere, is not
followed. The latter two are listed with the reason, so the ingest report says what was left
out: an index entry must never lead the app to a file outside the root it serves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError
from .images import is_image_name

LOOP = "symlink to a folder already walked (a loop, or a second link to it): not walked again"
OUTSIDE = "symlink to a target outside the collection root: not followed"
BROKEN = "broken symlink: its target does not exist"


@dataclass
class ScanResult:
    """Sorted relative POSIX image paths, and the entries left out with why."""

    paths: list[str]
    refused: list[tuple[str, str]] = field(default_factory=list)


def _inside(target: str, root: str) -> bool:
    return target == root or target.startswith(root.rstrip(os.sep) + os.sep)


def scan_folder(root: Path) -> ScanResult:
    """Every image file under ``root`` (sorted), following symlinks by the module's rules."""
    if not os.path.isdir(root):
        raise DataError(f"{root}: not a folder")
    real_root = os.path.realpath(root)
    found: list[str] = []
    refused: list[tuple[str, str]] = []
    seen: set[tuple[int, int]] = set()

    def walk(folder: str, rel: str) -> None:
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:
            refused.append((rel or ".", LOOP))
            return
        seen.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            refused.append((rel or ".", f"folder not readable ({e.strerror or e})"))
            return
        for e in entries:
            if e.name.startswith("."):
                continue
            child = f"{rel}/{e.name}" if rel else e.name
            if e.is_symlink():
                target = os.path.realpath(e.path)
                if not os.path.exists(target):
                    if is_image_name(e.name) or not os.path.splitext(e.name)[1]:
                        refused.append((child, BROKEN))
                    continue
                if not _inside(target, real_root):
                    if os.path.isdir(target) or is_image_name(e.name):
                        refused.append((child, f"{OUTSIDE} ({target})"))
                    continue
            if e.is_dir(follow_symlinks=True):
                walk(e.path, child)
            elif is_image_name(e.name):
                found.append(child)

    walk(str(root), "")
    return ScanResult(sorted(found), refused)


def scan(root: Path) -> list[str]:
    """Sorted relative POSIX paths of every image file under ``root`` (see :func:`scan_folder`)."""
    return scan_folder(root).paths
