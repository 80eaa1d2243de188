"""``build_index.py --sync FOLDER --watch``: a real watcher process (watchdog on inotify) picks up files copied
into the folder in debounced batches, an index opened with ``follow=True`` (as the app opens it) serves them
without a restart, and SIGINT stops the watcher cleanly."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from index.search import SearchIndex
from index.watch import _Changes, watch
from reliability.corpus import write_ordinary

ROOT = Path(__file__).resolve().parents[1]


def _wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_watch_picks_up_copied_files_in_batches_and_stops_on_ctrl_c(tmp_path: Path):
    f = tmp_path / "photos"
    write_ordinary(f, 8)
    idx = tmp_path / "idx"
    log = open(tmp_path / "watch.log", "w+")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([sys.executable, "scripts/build_index.py", "--sync", str(f), "--out", str(idx), "--watch",
                             "--debounce", "1", "--index-type", "flat", "--no-progress"], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(lambda: (idx / "sync.json").exists(), 240, "the first sync (a build)")
        app = SearchIndex.open(idx, device="cpu", follow=True)
        assert len(app) == 8
        staging = tmp_path / "staging"
        write_ordinary(staging, 30, folders=("new",))
        for p in sorted(staging.rglob("*.png")):  # a copy that takes a while: 30 files over ~1.5 s
            (f / "new").mkdir(exist_ok=True)
            shutil.copy(p, f / "new" / p.name)
            time.sleep(0.05)
        copied = time.monotonic()
        _wait_for(lambda: app.refresh() or len(app) == 38, 120, "the copied files to be searchable")
        took = time.monotonic() - copied
        assert sorted(p for p in app.paths() if p.startswith("new/")) == sorted(
            f"new/{p.name}" for p in staging.rglob("*.png"))
        hit = app.search_images([staging / "new" / "img0020.png"], 1)[0][0]
        assert hit.path == "new/img0020.png" and hit.score > 0.999
        app.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        log.seek(0)
        out = log.read()
        log.close()
    syncs = out.count("\nsync ") + out.startswith("sync ")
    assert "stopped:" in out, out
    assert 2 <= syncs <= 4, out  # the first sync, then the 30 files in one or a few debounced batches
    report = json.loads((idx / "sync.json").read_text())
    assert report["count"] == 38
    print(f"30 files searchable {took:.1f} s after the copy ended; {syncs} syncs")


def test_debounce_waits_for_quiet_and_caps_the_wait(tmp_path: Path):
    c = _Changes(None)

    class Ev:
        event_type, is_directory, src_path, dest_path = "created", False, str(tmp_path / "x.jpg"), ""

    assert not c.take_if_due(0.3, 1.0)  # nothing happened
    c.on_any_event(Ev())
    assert not c.take_if_due(0.3, 1.0)  # not quiet yet
    time.sleep(0.35)
    assert c.take_if_due(0.3, 1.0) and not c.take_if_due(0.3, 1.0)  # one batch, then forgotten
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.2:  # events keep coming: the batch still starts after max_delay
        c.on_any_event(Ev())
        if c.take_if_due(0.3, 1.0):
            break
        time.sleep(0.05)
    assert 0.9 < time.monotonic() - t0 < 1.2
    Ev.src_path = str(tmp_path / "notes.txt")  # not an image: ignored
    c.on_any_event(Ev())
    time.sleep(0.35)
    assert not c.take_if_due(0.3, 1.0)


def test_a_failing_sync_does_not_end_the_watch(tmp_path: Path):
    stop = threading.Event()
    calls = []

    def sync_once():
        calls.append(1)
        stop.set()
        raise ValueError("empty folder")

    stats = watch(tmp_path, tmp_path / "idx", sync_once, stop, 0.1, 1.0)
    assert calls == [1] and stats.errors == ["ValueError: empty folder"] and stats.reports == []
    with pytest.raises(ValueError, match="debounce"):
        watch(tmp_path, tmp_path / "idx", sync_once, stop, 2.0, 1.0)
