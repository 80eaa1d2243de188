"""The decoded-image cache: decode a collection once, in parallel, into a uint8 ``.npy`` on disk, then
read it memory-mapped so a collection larger than RAM trains at page-cache speed.

Layout: one ``(N, S, S, 3)`` uint8 ``.npy`` per (folder, file list with sizes and mtimes, side S)
under ``$INSTDISC_CACHE/decoded`` (``~/.cache/instdisc``), plus a JSON with the kept paths, the
unreadable files and the ingest facts. The ``.npy`` is written row by row to a temporary file
(a bounded number of decoded images in memory at any time) and renamed into place, so a killed
decode leaves no half-written cache; any change to a file's size or mtime is a new key.

Reading: :func:`open_cache` maps the file copy-on-write (torch wants writable memory; nothing
is ever written back) and returns an ``(N, 3, S, S)`` tensor view over it: indexing a batch
reads only that batch's pages. Mapped pages count in a process's RSS until the kernel drops
them, so with ``max_ram`` a :class:`RamGuard` drops them (``madvise(MADV_DONTNEED)``; the
next read faults them in again from the page cache) before the pages mapped since the last drop
could pass ``max_ram``: RSS stays bounded however large the collection is. A page fault maps
the file's cached pages around it too (Linux "fault-around", 64 KiB, which ``MADV_RANDOM`` does
not turn off), so the guard charges each row read the 64 KiB windows it can touch, not its bytes:
counting bytes let a 4 MiB cap hold 20 MiB of 12 KiB rows (tests/test_imagecache_ram.py).

:class:`StoredImages` is that tensor, marked with the side the encoder embeds at (``eval_size``):
training crops are cut from the stored side, embedding resizes to ``eval_size``
(:func:`instdisc.embed.embed`). Slices stay StoredImages; every other operation gives a
plain tensor.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .images import ImageError, fit_square, load_image

CACHE_VERSION = 1  # same bytes as before the memory-mapped reader: existing caches stay valid
DECODE_CHUNK = 512  # images decoded (and held) at a time
RAM_ENV = "INSTDISC_MAX_RAM"
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def cache_root() -> Path:
    return Path(os.environ.get("INSTDISC_CACHE", Path.home() / ".cache" / "instdisc"))


def parse_bytes(text: str) -> int:
    """'2G' -> 2147483648; also '512M', '100k' and plain bytes (ValueError with an example otherwise)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", text.lower())
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a positive size (examples: 2G, 512M, 100000)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def max_ram_from_env() -> int | None:
    """The cap set by ``$INSTDISC_MAX_RAM`` (same syntax as --max-ram), or None."""
    v = os.environ.get(RAM_ENV)
    return parse_bytes(v) if v else None


# ---------------------------------------------------------------- decoding


def decode_one(path: Path, size: int) -> np.ndarray | str:
    """One file as a (size, size, 3) uint8 square, or the reason it cannot be decoded."""
    try:
        return fit_square(load_image(path), size)
    except ImageError as e:
        return str(e)


def decode_all(
    root: Path, paths: list[str], size: int, workers: int | None = None, progress: bool = True,
    dest: str | os.PathLike | None = None,
) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
    """Decode in parallel; return (images of the readable files, their paths, skipped with why).

    The images go to an in-memory array, or with ``dest`` straight into the ``.npy`` file
    ``dest`` (then the returned array is a read-only map of it): either way only
    ``DECODE_CHUNK`` decoded images wait in memory at a time.
    """
    shape = (len(paths), size, size, 3)
    out = np.empty(shape, dtype=np.uint8) if dest is None else None
    f = open(dest, "wb") if dest is not None else None  # noqa: SIM115 (closed below)
    header = _header(shape) if f is not None else b""
    kept: list[str] = []
    skipped: list[tuple[str, str]] = []
    try:
        if f is not None:
            f.write(header)
        bar = tqdm(total=len(paths), desc=f"decode {root.name} at {size} px", disable=not progress, unit="img",
                   leave=False)
        with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
            for lo in range(0, len(paths), DECODE_CHUNK):
                chunk = paths[lo : lo + DECODE_CHUNK]
                for p, r in zip(chunk, pool.map(lambda q: decode_one(root / q, size), chunk), strict=True):
                    if isinstance(r, str):
                        skipped.append((p, r))
                        continue
                    if f is not None:
                        f.write(r.tobytes())
                    else:
                        out[len(kept)] = r  # type: ignore[index]
                    kept.append(p)
                bar.update(len(chunk))
        bar.close()
        if f is not None and len(kept) != len(paths):
            _shrink(f, header, (len(kept), size, size, 3))
    finally:
        if f is not None:
            f.close()
    if dest is None:
        return out[: len(kept)], kept, skipped  # type: ignore[index]
    return np.load(dest, mmap_mode="r"), kept, skipped


def _header(shape: tuple[int, ...]) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _shrink(f, header: bytes, shape: tuple[int, ...]) -> None:  # noqa: ANN001 (an open binary file)
    """Rewrite the header for fewer rows (numpy pads it so the row count can change in place)."""
    new = _header(shape)
    if len(new) != len(header):
        raise RuntimeError(f"npy header changed length ({len(header)} -> {len(new)}); cannot shrink in place")
    f.flush()
    f.truncate(len(new) + int(np.prod(shape)))
    f.seek(0)
    f.write(new)


# ---------------------------------------------------------------- keys


def cache_key(root: Path, paths: list[str], size: int) -> str:
    """Names, sizes and mtimes of every file plus the side: any change to a file is a new cache."""
    h = hashlib.sha256(f"v{CACHE_VERSION}|{root.resolve()}|{size}".encode())
    for p in paths:
        st = (root / p).stat()
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


# ---------------------------------------------------------------- reading


FAULT_AROUND = 64 << 10  # bytes Linux maps around a faulting file page (its default fault_around_bytes)


def resident_bound(row_bytes: int) -> int:
    """Most bytes reading one row can leave mapped: the fault-around windows its span can touch."""
    return (-(-int(row_bytes) // FAULT_AROUND) + 1) * FAULT_AROUND


class RamGuard:
    """Keeps the mapped pages of one cache file under ``cap`` bytes of RSS (see the module doc)."""

    def __init__(self, mm: mmap.mmap, cap: int) -> None:
        self.mm, self.cap = mm, int(cap)
        mm.madvise(mmap.MADV_RANDOM)  # no read-ahead beyond the fault-around window
        self.pending = 0  # upper bound of the bytes mapped since the last drop
        self.drops = 0
        self._lock = threading.Lock()

    def reading(self, rows: int, row_bytes: int) -> None:
        """Called before ``rows`` rows of the mapping are read: drop every mapped page first if the cap would pass."""
        nbytes = rows * resident_bound(row_bytes)
        with self._lock:
            if self.pending + nbytes > self.cap and self.pending:
                self.mm.madvise(mmap.MADV_DONTNEED)
                self.pending = 0
                self.drops += 1
            self.pending += nbytes


def _rows_of(index: object, n: int) -> int:
    """How many rows of an ``n``-row tensor ``tensor[index]`` reads."""
    first = index[0] if isinstance(index, tuple) and index else index
    if isinstance(first, slice):
        return len(range(*first.indices(n)))
    if isinstance(first, int):
        return 1
    if isinstance(first, torch.Tensor):
        return int(first.sum()) if first.dtype == torch.bool else first.numel()
    try:
        return len(first)  # type: ignore[arg-type]
    except TypeError:
        return n


class StoredImages(torch.Tensor):
    """(N, 3, S, S) uint8 images stored at side S for training crops, embedded at ``eval_size``.

    ``rows`` and ``row_bytes`` let the optional :class:`RamGuard` account reads without
    calling tensor methods (which would re-enter ``__torch_function__``).
    """

    eval_size: int
    guard: RamGuard | None
    rows: int
    row_bytes: int

    @staticmethod
    def wrap(t: torch.Tensor, eval_size: int, guard: RamGuard | None = None) -> StoredImages:
        out = t.as_subclass(StoredImages)
        out.eval_size, out.guard = int(eval_size), guard
        out.rows, out.row_bytes = int(t.shape[0]), int(np.prod(t.shape[1:])) if t.dim() > 1 else 1
        return out

    @classmethod
    def __torch_function__(cls, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None):
        src = args[0] if args and isinstance(args[0], StoredImages) else None
        indexing = src is not None and func is torch.Tensor.__getitem__
        if indexing and src.guard is not None:
            src.guard.reading(_rows_of(args[1], src.rows), src.row_bytes)
        out = torch.Tensor.__torch_function__(func, (torch.Tensor,), args, kwargs or {})  # plain outputs
        if indexing and isinstance(args[1], slice) and isinstance(out, torch.Tensor) and out.dim() == 4:
            view = out.as_subclass(torch.Tensor) if isinstance(out, StoredImages) else out
            return StoredImages.wrap(view, src.eval_size, src.guard)
        if isinstance(out, StoredImages):
            return out.as_subclass(torch.Tensor)
        return out


def mark_stored(images: torch.Tensor, eval_size: int, guard: RamGuard | None = None) -> torch.Tensor:
    """``images`` as :class:`StoredImages` when they need resizing to ``eval_size`` or guarding, else as is."""
    if guard is None and int(images.shape[-1]) == int(eval_size):
        return images.as_subclass(torch.Tensor) if isinstance(images, StoredImages) else images
    return StoredImages.wrap(images, eval_size, guard)


def open_cache(npy: Path, eval_size: int, max_ram: int | None = None) -> torch.Tensor:
    """The cache file as an (N, 3, S, S) uint8 tensor over a copy-on-write map of it (ValueError if damaged)."""
    with open(npy, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        offset = f.tell()
        if dtype != np.uint8 or fortran or len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2]:
            raise ValueError(f"{npy}: not a decoded-image cache (shape {shape}, dtype {dtype})")
        size = offset + int(np.prod(shape))
        if os.fstat(f.fileno()).st_size != size:
            raise ValueError(f"{npy}: {os.fstat(f.fileno()).st_size} bytes, expected {size}")
        if shape[0] == 0:
            return torch.zeros((0, 3, shape[1], shape[2]), dtype=torch.uint8)
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    arr = np.frombuffer(mm, dtype=np.uint8, count=int(np.prod(shape)), offset=offset).reshape(shape)
    t = torch.from_numpy(arr).permute(0, 3, 1, 2)
    guard = RamGuard(mm, max_ram) if max_ram else None
    return mark_stored(t, eval_size, guard)
