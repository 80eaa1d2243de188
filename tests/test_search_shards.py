"""Search over a matrix sharded across devices merges to the unsharded answer (CPU shards stand in for GPUs)."""

from __future__ import annotations

import numpy as np
import torch

from index.auto import build_vector_index
from index.backends import FaissBackend, TorchFlatBackend, gpu_cloner_options, merge_topk, sharded_topk
from instdisc.knn import topk_cosine


def unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_sharded_topk_equals_unsharded_topk():
    x, q = torch.from_numpy(unit(1000, 16)), torch.from_numpy(unit(30, 16, seed=1))
    ref_s, ref_i = topk_cosine(q, x, 25)
    for cuts in ([0, 1000], [0, 333, 666, 1000], [0, 10, 10, 1000], [0, 990, 1000]):  # incl. empty / tiny shards
        shards = [x[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]
        s, i = sharded_topk(q, shards, cuts[:-1], 25)
        assert torch.equal(i, ref_i), cuts
        torch.testing.assert_close(s, ref_s)


def test_merge_keeps_the_best_k_across_shards():
    a = (torch.tensor([[0.9, 0.5]]), torch.tensor([[3, 7]]))
    b = (torch.tensor([[0.95, 0.1]]), torch.tensor([[12, 15]]))
    s, i = merge_topk([a, b], 3)
    assert i.tolist() == [[12, 3, 7]]
    torch.testing.assert_close(s, torch.tensor([[0.95, 0.9, 0.5]]))
    assert merge_topk([a], 5)[1].tolist() == [[3, 7]]  # fewer than k: what there is


def test_torch_backend_on_three_shards_answers_like_faiss():
    x, q = unit(2000, 32), unit(20, 32, seed=2)
    ids = np.arange(2000, dtype=np.int64) * 5 + 1
    index, _ = build_vector_index(x, ids, "flat", progress=False)
    faiss_b = FaissBackend(index, {})
    sharded = TorchFlatBackend(index, devices=["cpu", "cpu", "cpu"])
    assert [len(s) for s in sharded.shards] == [666, 667, 667]
    s_ref, i_ref = faiss_b.search(q, 10)
    s, i = sharded.search(q, 10)
    np.testing.assert_array_equal(i, i_ref)
    np.testing.assert_allclose(s, s_ref, atol=1e-5)
    rng = np.random.default_rng(3)
    for allowed in (np.sort(rng.choice(ids, 50, replace=False)), ids[1500:1504], ids[[0, 1999]]):
        s_ref, i_ref = faiss_b.search(q, 10, allowed)
        s, i = sharded.search(q, 10, allowed)
        np.testing.assert_array_equal(i, i_ref)  # short results padded with -1 alike
        np.testing.assert_allclose(s[i >= 0], s_ref[i_ref >= 0], atol=1e-5)


def test_faiss_shards_only_over_several_gpus():
    assert gpu_cloner_options(0) is None and gpu_cloner_options(1) is None
    assert gpu_cloner_options(4).shard is True
