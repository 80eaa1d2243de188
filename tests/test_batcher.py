"""index.batcher.QueryBatcher: batched answers equal one-by-one search, queries are really gathered into
batches (one forward pass each), mixed parameters are grouped, a failing group fails only its callers."""

from __future__ import annotations

import threading
from pathlib import Path

import faiss
import numpy as np
import pytest

from index.batcher import Query, QueryBatcher, set_search_threads
from index.search import SearchIndex


@pytest.fixture(scope="module")
def idx(shapes_index: Path):
    with SearchIndex.open(shapes_index, device="cpu") as si:
        yield si


@pytest.fixture(scope="module")
def pixels(idx: SearchIndex, shapes_root: Path) -> np.ndarray:
    files = sorted((shapes_root / "test").rglob("*.png"))[::6][:16]
    return idx.prepare([str(f) for f in files])


def one_by_one(idx: SearchIndex, pixels: np.ndarray, k: int, label=None, folder=None):
    return [idx.search_vectors(idx.embed_prepared(p[None]), k, label=label, folder=folder)[0] for p in pixels]


def test_batched_answers_equal_one_by_one_search(idx: SearchIndex, pixels: np.ndarray):
    b = QueryBatcher(idx, max_batch=8, max_wait_ms=1000)  # waits until 8 are queued: two full batches
    try:
        answers = b.search([Query(p, 10) for p in pixels])
    finally:
        b.close()
    assert (b.stats.batches, b.stats.queries, b.stats.largest) == (2, 16, 8)
    assert all(a.batch_size == 8 for a in answers)
    alone = one_by_one(idx, pixels, 10)
    for a, ref in zip(answers, alone, strict=True):
        assert [h.id for h in a.hits] == [h.id for h in ref]
        np.testing.assert_allclose([h.score for h in a.hits], [h.score for h in ref], atol=2e-3)
        assert a.vector.shape == (idx.dim,) and abs(float(np.linalg.norm(a.vector)) - 1) < 1e-5


def test_concurrent_callers_share_batches(idx: SearchIndex, pixels: np.ndarray):
    b = QueryBatcher(idx, max_batch=64, max_wait_ms=300)
    start = threading.Barrier(len(pixels))
    got: dict[int, list[int]] = {}

    def caller(i: int) -> None:
        start.wait()
        got[i] = [h.id for h in b.search([Query(pixels[i], 5)])[0].hits]

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(len(pixels))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    b.close()
    assert b.stats.queries == len(pixels) and b.stats.batches < len(pixels) // 2  # gathered, not one by one
    assert [got[i] for i in range(len(pixels))] == [[h.id for h in r] for r in one_by_one(idx, pixels, 5)]


def test_mixed_parameters_are_grouped_and_a_bad_filter_fails_only_its_caller(idx: SearchIndex, pixels: np.ndarray):
    b = QueryBatcher(idx, max_batch=4, max_wait_ms=1000)
    futures = b.submit([Query(pixels[0], 3), Query(pixels[1], 7, label="circle"),
                        Query(pixels[2], 5, folder="train/square"), Query(pixels[3], 5, folder="../etc")])
    a0, a1, a2 = (f.result() for f in futures[:3])
    with pytest.raises(ValueError, match=r"\.\."):
        futures[3].result()
    b.close()
    assert b.stats.batches == 1  # one forward pass for all four
    assert len(a0.hits) == 3 and [h.id for h in a0.hits] == [h.id for h in one_by_one(idx, pixels[:1], 3)[0]]
    assert len(a1.hits) == 7 and {h.label for h in a1.hits} == {"circle"}
    assert [h.id for h in a1.hits] == [h.id for h in one_by_one(idx, pixels[1:2], 7, label="circle")[0]]
    assert len(a2.hits) == 5 and all(h.path.startswith("train/square/") for h in a2.hits)


def test_arguments_close_and_thread_counts(idx: SearchIndex, pixels: np.ndarray):
    with pytest.raises(ValueError, match="max_batch"):
        QueryBatcher(idx, max_batch=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        QueryBatcher(idx, max_wait_ms=-1)
    before = faiss.omp_get_max_threads()
    try:
        faiss.omp_set_num_threads(1)
        b = QueryBatcher(idx)
        assert b.faiss_threads == 1  # the worker thread adopts its creator's FAISS setting
    finally:
        faiss.omp_set_num_threads(before)
    assert len(b.search([Query(pixels[0], 2)])[0].hits) == 2
    b.close()
    with pytest.raises(RuntimeError, match="closed"):
        b.submit([Query(pixels[0], 2)])
    with pytest.raises(ValueError, match="threads"):
        set_search_threads(0)
