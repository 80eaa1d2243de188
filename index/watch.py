"""``build_index.py --sync FOLDER --out INDEX_DIR --watch``: keep syncing while the folder changes.

File-system events (the ``watchdog`` package: inotify on Linux) only say *that* something
changed; what changed is always worked out by :func:`index.sync.sync`, so a missed or
duplicated event costs nothing but a sync. Events are debounced: a sync starts once the folder
has been quiet for ``debounce_s`` (or ``max_delay_s`` after the first event of a long copy), so a
copy of a thousand photos becomes a few batches instead of a thousand syncs. Events that
arrive during a sync start the next batch. A stop request (Ctrl-C, SIGTERM) lets the running
sync commit and then stops; a sync cut short any other way leaves the previous generation
serving, like any update.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from instdisc.images import is_image_name

from .sync import SyncReport

DEBOUNCE_S = 2.0  # quiet time after the last event before a batch is synced
MAX_DELAY_S = 15.0  # a batch starts at the latest this long after its first event, even if events keep coming
POLL_S = 0.2


@dataclass
class WatchStats:
    """What a watch did: one report per sync (the first one catches up with changes made while not watching)."""

    reports: list[SyncReport] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # syncs that failed (the folder is retried on the next event)
    events: int = 0  # relevant file-system events seen


class _Changes(FileSystemEventHandler):
    """Records when relevant events arrived: image files and folders, outside ``ignored`` (the index folder)."""

    def __init__(self, ignored: Path | None) -> None:
        self.ignored = str(ignored.resolve()) + os.sep if ignored else None
        self.lock = threading.Lock()
        self.first: float | None = None
        self.last: float | None = None
        self.count = 0

    def _relevant(self, path: str | bytes, is_dir: bool) -> bool:
        p = os.fsdecode(path)
        if self.ignored and (p + os.sep).startswith(self.ignored):
            return False
        if os.path.basename(p).startswith("."):  # hidden: skipped by the scan as well
            return False
        return is_dir or is_image_name(p)

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write") or (event.is_directory and event.event_type == "modified"):
            return
        paths = [event.src_path] + ([event.dest_path] if getattr(event, "dest_path", "") else [])
        if not any(self._relevant(p, event.is_directory) for p in paths):
            return
        now = time.monotonic()
        with self.lock:
            self.first = self.first if self.first is not None else now
            self.last = now
            self.count += 1

    def take_if_due(self, debounce_s: float, max_delay_s: float) -> bool:
        """True (and forget the pending events) when a batch should be synced now."""
        now = time.monotonic()
        with self.lock:
            if self.first is None or self.last is None:
                return False
            if now - self.last < debounce_s and now - self.first < max_delay_s:
                return False
            self.first = self.last = None
            return True


def watch(
    folder: str | os.PathLike, index_dir: str | os.PathLike, sync_once: Callable[[], SyncReport],
    stop: threading.Event, debounce_s: float = DEBOUNCE_S, max_delay_s: float = MAX_DELAY_S,
    on_report: Callable[[SyncReport], None] | None = None, on_error: Callable[[str], None] | None = None,
) -> WatchStats:
    """Sync once, then again after each debounced batch of events, until ``stop`` is set. A failed sync is
    reported through ``on_error`` and the watch goes on (the next event retries)."""
    if debounce_s < 0 or max_delay_s < debounce_s:
        raise ValueError(f"need 0 <= debounce ({debounce_s}) <= max delay ({max_delay_s})")
    root = Path(folder).expanduser().resolve()
    changes = _Changes(Path(index_dir))
    observer = Observer()
    observer.schedule(changes, str(root), recursive=True)
    observer.start()  # before the first sync, so nothing changed during it is missed
    stats = WatchStats()

    def one_sync() -> None:
        try:
            stats.reports.append(sync_once())
        except (OSError, ValueError, RuntimeError) as e:  # e.g. an empty folder, a file vanishing mid-read
            stats.errors.append(f"{type(e).__name__}: {e}")
            if on_error:
                on_error(stats.errors[-1])
            return
        if on_report:
            on_report(stats.reports[-1])

    try:
        one_sync()
        while not stop.is_set():
            if changes.take_if_due(debounce_s, max_delay_s):
                one_sync()
            else:
                stop.wait(POLL_S)
    finally:
        observer.stop()
        observer.join(timeout=10)
        stats.events = changes.count
    return stats


def watch_until_signalled(folder: str | os.PathLike, index_dir: str | os.PathLike,
                          sync_once: Callable[[], SyncReport], debounce_s: float | None = None) -> WatchStats:
    """:func:`watch` for a terminal: the first Ctrl-C or SIGTERM stops it once the running sync has committed,
    a second one interrupts that sync (which leaves the previous generation serving)."""
    stop = threading.Event()

    def on_signal(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        print("stopping after the running sync (again to interrupt it)", file=sys.stderr, flush=True)
        stop.set()

    debounce = DEBOUNCE_S if debounce_s is None else debounce_s
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"watching {Path(folder).resolve()} (Ctrl-C to stop)", flush=True)
        stats = watch(folder, index_dir, sync_once, stop, debounce, max(MAX_DELAY_S, debounce),
                      on_error=lambda e: print(f"error: {e} (retried on the next change)", file=sys.stderr,
                                               flush=True))
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    print(f"stopped: {len(stats.reports)} syncs, {stats.events} file events", flush=True)
    return stats
