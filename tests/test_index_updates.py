"""``build_index.py --add`` on a file whose content changed, and the index folder's writer lock.
Real scripts in subprocesses, a real FAISS index and SQLite store, a real ``flock``."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from reliability import faults
from reliability.corpus import write_ordinary
from reliability.inputs import run_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def built(tiny_run: Path, tmp_path: Path) -> dict:
    data = tmp_path / "data"
    write_ordinary(data, 16)
    idx = tmp_path / "idx"
    r = run_script(["scripts/build_index.py", "--checkpoint", str(tiny_run / "checkpoint.pt"), "--out", str(idx),
                    "--images", str(data), "--index-type", "flat", "--no-progress"])
    assert r.returncode == 0, r.stderr[-2000:]
    return {"data": data, "idx": idx}


def _manifest(idx: Path) -> dict:
    return json.loads((idx / "manifest.json").read_text())


def test_add_replaces_a_file_whose_content_changed(built: dict):
    from index.search import SearchIndex

    data, idx = built["data"], built["idx"]
    before = faults.snapshot(idx)
    rel = "a/img0004.png"
    new = Image.new("RGB", (32, 32), (250, 20, 20))
    new.save(data / rel)  # the same path, other pixels
    r = run_script(["scripts/build_index.py", "--out", str(idx), "--add", str(data), "--no-progress"])
    assert r.returncode == 0, r.stderr[-2000:]
    last = _manifest(idx)["updates"][-1]
    assert (last["added"], last["replaced"], last["unchanged"]) == (0, 1, 15)
    after = faults.snapshot(idx)
    assert after["count"] == before["count"] == 16  # replaced, not duplicated
    with SearchIndex.open(idx, device="cpu") as s:
        hit = s.search_images([new], 1)[0][0]
        paths = sorted(s.paths())
    assert hit.path == rel and hit.score > 0.999  # the stored vector is the new content's
    assert paths == sorted(p.relative_to(data).as_posix() for p in data.rglob("*.png"))
    # a second --add of the unchanged folder changes nothing
    r = run_script(["scripts/build_index.py", "--out", str(idx), "--add", str(data), "--no-progress"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert faults.same_state(faults.snapshot(idx), after)


def _waiting_for_a_lock(pid: int) -> bool:
    """The kernel lists a process blocked in flock() as a waiter ("->") in /proc/locks."""
    return any("->" in line and f" {pid} " in f" {line} " for line in Path("/proc/locks").read_text().splitlines())


def test_a_second_writer_waits_for_the_lock(built: dict, tmp_path: Path):
    idx = built["idx"]
    more = tmp_path / "more"
    write_ordinary(more, 4, folders=("c",))
    gen = _manifest(idx)["generation"]
    with open(idx / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another writer holds the folder
        proc = subprocess.Popen([sys.executable, "scripts/build_index.py", "--out", str(idx), "--add", str(more),
                                 "--no-progress"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 240
        while not _waiting_for_a_lock(proc.pid):
            assert proc.poll() is None, "the second writer did not wait for the lock: " + proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)
        assert proc.poll() is None and _manifest(idx)["generation"] == gen  # blocked, nothing written
        files = _manifest(idx)["files"]
        assert {p.name for p in idx.iterdir()} == {"manifest.json", ".lock", "ingest.json", files["index"], files["db"]}
        fcntl.flock(lock, fcntl.LOCK_UN)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert _manifest(idx)["generation"] != gen and faults.snapshot(idx)["count"] == 20  # then it did its work
