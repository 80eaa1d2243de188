"""The decoded-image cache under a RAM cap: reading a cache file several times larger than the cap keeps
the file's resident pages (what the kernel counts in the process's RSS) at or under the cap; without the
cap the same reads leave the whole file resident."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.train_ram import mapped_rss
from instdisc.imagecache import open_cache, resident_bound

SIDE = 64
ROW = 3 * SIDE * SIDE  # 12 KiB a row
ROWS = 2000  # a 23 MiB cache file
CAP = 4 << 20
BATCH = 16  # 16 rows can map at most 2 MiB (two 64 KiB fault-around windows each): under the cap


def _resident_bytes(path: Path) -> int:
    """Rss of this process's mappings of ``path`` (the benchmark's /proc/PID/smaps reader)."""
    return mapped_rss(os.getpid(), str(path))


def _write_cache(path: Path) -> None:
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(ROWS, SIDE, SIDE, 3))
    arr[:] = np.random.default_rng(0).integers(0, 256, arr.shape, dtype=np.uint8)
    arr.flush()
    del arr


def _peak_while_reading(images: torch.Tensor, path: Path, watch: bool) -> tuple[int, int]:
    """Every row once in shuffled batches, as a training epoch reads them: (peak resident bytes, checksum).
    ``watch``: measure after every batch (else once at the end: residency only grows without the guard)."""
    order = torch.randperm(ROWS, generator=torch.Generator().manual_seed(0))
    peak, checksum = 0, 0
    for lo in range(0, ROWS, BATCH):
        batch = images[order[lo : lo + BATCH]]
        checksum += int(batch.sum(dtype=torch.int64))
        if watch:
            peak = max(peak, _resident_bytes(path))
    return max(peak, _resident_bytes(path)), checksum


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux /proc/self/smaps")
def test_ram_cap_bounds_the_resident_cache_for_a_file_larger_than_the_cap(tmp_path: Path) -> None:
    npy = tmp_path / "decoded.npy"
    _write_cache(npy)
    assert npy.stat().st_size > 5 * CAP
    capped = open_cache(npy, SIDE, max_ram=CAP)
    peak_capped, sum_capped = _peak_while_reading(capped, npy, watch=True)
    uncapped = open_cache(npy, SIDE)
    peak_free, sum_free = _peak_while_reading(uncapped, npy, watch=False)
    assert sum_capped == sum_free  # the cap changes residency, never what is read
    assert BATCH * resident_bound(ROW) <= CAP
    assert 0 < peak_capped <= CAP  # the guard drops before a batch could pass the cap
    assert peak_free > 0.9 * ROWS * ROW  # without it the whole file stays resident: the check can fail
    assert capped.guard.drops >= ROWS * ROW // CAP
