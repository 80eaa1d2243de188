"""Atomic writes: temp file in the same folder, fsync, rename, fsync the folder.

A reader (or a restart after kill -9) sees either the old file or the new one, never a
half-written one.

Fault injection (tests and ``scripts/measure_reliability.py`` only): with the environment variable
``INSTDISC_FAULT_KILL=GLOB:PHASE[:N]`` set, the N-th (default first) atomic write of a file
whose name matches ``GLOB`` kills its own process with SIGKILL -- ``mid``: after half of the
temp file is written, ``before-rename``: with the temp file complete and fsynced but not yet
renamed, ``after-rename``: right after the rename, before anything that follows it. Unset,
it costs one dictionary look-up per write.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path

FAULT_ENV = "INSTDISC_FAULT_KILL"
FAULT_PHASES = ("mid", "before-rename", "after-rename")
_fault_counts: dict[str, int] = {}


def _fault(path: Path, phase: str, tmp: str | None = None) -> None:
    """SIGKILL this process if ``$INSTDISC_FAULT_KILL`` asks for this write and phase (see the module doc)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    pattern, want, *nth = spec.split(":")
    if want not in FAULT_PHASES:
        raise ValueError(f"{FAULT_ENV}={spec!r}: phase must be one of {FAULT_PHASES}")
    if want != phase or not fnmatch.fnmatch(path.name, pattern):
        return
    seen = _fault_counts[spec] = _fault_counts.get(spec, 0) + 1
    if seen != (int(nth[0]) if nth else 1):
        return
    if phase == "mid" and tmp is not None:
        os.truncate(tmp, os.path.getsize(tmp) // 2)  # what a write cut short leaves behind
    os.kill(os.getpid(), signal.SIGKILL)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mode_for(path: Path) -> int:
    """The replaced file's permissions, or those of a new file under the process's umask."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        pass
    try:
        with open("/proc/self/status") as f:  # reading the umask without os.umask's set-and-restore race
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    return 0o644


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then move the result onto ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _mode_for(path))  # mkstemp makes 0600; keep what a plain open() would give
        _fault(path, "mid", tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _fault(path, "before-rename")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fault(path, "after-rename")
    _fsync_dir(path.parent)


def stale_temps(path: str | os.PathLike) -> list[Path]:
    """Temp files an interrupted :func:`atomic_write` of ``path`` left behind (never read, safe to delete
    when no other process is writing ``path``)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def sha256_file(path: str | os.PathLike) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
