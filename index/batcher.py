"""Micro-batching of concurrent image searches: one encoder forward and one FAISS search per batch.

Every search request of the app (the Gradio page and the REST API alike) decodes and resizes
its image in its own request thread -- in parallel, PIL releases the GIL -- and hands the
uint8 pixels to one :class:`QueryBatcher`. Its single worker thread takes whatever is queued
when it gets free (up to ``max_batch``), embeds it in one forward pass, and searches each group
of queries sharing (k, label, folder) in one FAISS call. A lone request therefore waits for
nobody (``max_wait_ms`` defaults to 0: no timer, just what has piled up meanwhile), while under
load the batch grows by itself with the queue, which is where the throughput comes from: the
per-call overhead of a 2-core forward pass and of a FAISS search is paid once per batch.

Grouping by the exact (k, label, folder) keeps the answers identical to one-by-one search
(a larger k or another filter can change what an approximate index returns for the same
vector). Torch and FAISS run one after the other in the worker thread, never at the same
time, so their two OpenMP pools do not compete for the cores; FAISS's thread count is per
calling thread, so the worker adopts the one its creator set (:func:`set_search_threads`).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict
from concurrent.futures import Future
from dataclasses import dataclass, field

import faiss
import numpy as np

from .search import Hit, SearchIndex
from .store import Filters

MAX_BATCH = 64  # queries embedded together at most (also what one forward pass comfortably holds)


def set_search_threads(n: int) -> None:
    """The CPU threads torch (query embedding) and FAISS (search) use, set together in the calling thread:
    ``1`` is fastest on a machine whose cores are busy (idle OpenMP threads spin-wait for busy cores)."""
    import torch

    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)


@dataclass(frozen=True)
class Query:
    """One image to search: its encoder input and what to search for."""

    pixels: np.ndarray  # (S, S, 3) uint8, from SearchIndex.prepare
    k: int
    label: str | None = None
    folder: str | None = None
    filters: Filters | None = None  # when given, replaces label and folder (adds date taken and camera)

    def search_filters(self) -> Filters:
        return self.filters if self.filters is not None else Filters(self.label, self.folder)


@dataclass(frozen=True)
class Answer:
    """The hits of one query, its embedding and what the batch it rode in cost."""

    hits: list[Hit]
    vector: np.ndarray = field(repr=False)  # (d,) unit float32
    embed_ms: float  # the batch's forward pass
    search_ms: float  # the FAISS search of its group
    wait_ms: float  # queued before the worker took it
    batch_size: int


@dataclass
class BatchStats:
    """Counters for tests and benchmarks: how many batches carried how many queries."""

    batches: int = 0
    queries: int = 0
    largest: int = 0


@dataclass
class _Pending:
    query: Query
    future: Future
    queued: float


class QueryBatcher:
    """Gathers concurrent :class:`Query` s into batches for one :class:`SearchIndex` (thread-safe)."""

    def __init__(self, index: SearchIndex, max_batch: int = MAX_BATCH, max_wait_ms: float = 0.0) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.index = index
        # OpenMP thread counts are per calling thread: the worker takes over its creator's FAISS setting
        self.faiss_threads = faiss.omp_get_max_threads()
        self.max_batch = int(max_batch)
        self.max_wait = max_wait_ms / 1e3
        self.stats = BatchStats()
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._closed = False

    # ------------------------------------------------------------ callers

    def submit(self, queries: list[Query]) -> list[Future]:
        """Queue ``queries``; each future resolves to an :class:`Answer` (or the search's exception)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="query-batcher", daemon=True)
                self._worker.start()
        now = time.perf_counter()
        futures = []
        for q in queries:
            f: Future = Future()
            self._queue.put(_Pending(q, f, now))
            futures.append(f)
        return futures

    def search(self, queries: list[Query]) -> list[Answer]:
        """:meth:`submit` and wait: the answers in order (the first failure is raised)."""
        return [f.result() for f in self.submit(queries)]

    def close(self) -> None:
        """Stop the worker once the queue is empty; later submits are refused."""
        with self._lock:
            self._closed = True
            worker = self._worker
        if worker is not None:
            self._queue.put(None)
            worker.join()

    # ------------------------------------------------------------ the worker

    def _gather(self, first: _Pending) -> tuple[list[_Pending], bool]:
        """``first`` plus what is queued (waiting up to ``max_wait`` for more); True when told to stop."""
        batch, stop = [first], False
        deadline = time.perf_counter() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                left = deadline - time.perf_counter()
                item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                stop = True
                break
            batch.append(item)
        return batch, stop

    def _run(self) -> None:
        faiss.omp_set_num_threads(self.faiss_threads)
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = self._gather(first)
            self._answer(batch)
            if stop:
                return

    def _answer(self, batch: list[_Pending]) -> None:
        took = time.perf_counter()
        live = [p for p in batch if p.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            t0 = time.perf_counter()
            vecs = self.index.embed_prepared(np.stack([p.query.pixels for p in live]))
            embed_ms = (time.perf_counter() - t0) * 1e3
        except Exception as e:  # noqa: BLE001 -- handed to every caller of the batch
            for p in live:
                p.future.set_exception(e)
            return
        self.stats.batches += 1
        self.stats.queries += len(live)
        self.stats.largest = max(self.stats.largest, len(live))
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, p in enumerate(live):
            groups[(p.query.k, p.query.search_filters())].append(i)
        for (k, filters), rows in groups.items():
            try:
                t1 = time.perf_counter()
                hits = self.index.search_vectors(vecs[rows], k, filters=filters)
                search_ms = (time.perf_counter() - t1) * 1e3
            except Exception as e:  # noqa: BLE001 -- e.g. a folder filter with '..': this group's callers
                for i in rows:
                    live[i].future.set_exception(e)
                continue
            for i, h in zip(rows, hits, strict=True):
                p = live[i]
                p.future.set_result(Answer(h, vecs[i], embed_ms, search_ms, (took - p.queued) * 1e3, len(live)))
