"""Search over a matrix sharded across devices merges to the unsharded answer (CPU shards stand in for GPUs)."""

from __future__ import annotations

import faiss
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


def _cpu_stand_in_for_all_gpus(n_gpus: int, kept: list):
    """``faiss.index_cpu_to_all_gpus`` as FAISS's multi-GPU cloner builds it, with CPU indexes for the GPUs:
    with ``co.shard`` a Flat index is cut into contiguous row ranges answered with successive row numbers
    (``IndexShards(successive_ids=True)``), an IVF index's lists split by id modulo the GPU count (shard_type
    1); without, every GPU holds the whole index."""

    def clone(index, co=None, ngpu=-1):
        assert co is not None and co.shard, "several GPUs: the index must be sharded, not replicated"
        ivf = faiss.try_extract_index_ivf(index)
        shards = faiss.IndexShards(index.d, True, ivf is None)
        for s in range(n_gpus):
            if ivf is None:  # a bare IndexFlat: rows ntotal * s / n .. ntotal * (s + 1) / n
                part = faiss.IndexFlat(index.d, index.metric_type)
                lo, hi = index.ntotal * s // n_gpus, index.ntotal * (s + 1) // n_gpus
                part.add(index.reconstruct_n(lo, hi - lo))
            else:
                part = faiss.clone_index(ivf)
                part.reset()
                ivf.copy_subset_to(part, faiss.InvertedLists.SUBSET_TYPE_ID_MOD, n_gpus, s)
            kept.append(part)
            shards.add_shard(part)
        assert shards.ntotal == index.ntotal
        kept.append(shards)
        return shards

    return clone


def test_faiss_shards_only_over_several_gpus(monkeypatch):
    """The multi-GPU path of FaissBackend, run on CPU shards: the sharded Flat index answers exactly like
    exact search (its row numbers mapped back to ids), the sharded IVF index like the CPU index at the
    same tuned nprobe."""
    from index import backends

    assert gpu_cloner_options(0) is None and gpu_cloner_options(1) is None
    assert gpu_cloner_options(4).shard is True
    x, q = unit(3000, 32, seed=4), unit(25, 32, seed=5)
    ids = np.arange(3000, dtype=np.int64) * 7 + 3
    flat, _ = build_vector_index(x, ids, "flat", progress=False)
    ivf, info = build_vector_index(x, ids, "IVF32,Flat", n_queries=200, progress=False)
    kept: list = []
    monkeypatch.setattr(backends, "gpu_available", lambda: True)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 3)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", _cpu_stand_in_for_all_gpus(3, kept))
    monkeypatch.setattr(faiss, "GpuParameterSpace", faiss.ParameterSpace)

    sharded = FaissBackend(flat, {}, gpu=True)
    assert isinstance(sharded.gpu, faiss.IndexShards) and sharded.gpu.count() == 3
    s, i = sharded.search(q, 10)
    exact = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(i, ids[exact])
    np.testing.assert_allclose(s, np.take_along_axis(q @ x.T, exact, 1), atol=1e-5)

    nprobe = info.params["nprobe"]
    assert 1 < nprobe < 32
    on_cpu, on_shards = FaissBackend(ivf, info.params), FaissBackend(ivf, info.params, gpu=True)
    assert isinstance(on_shards.gpu, faiss.IndexShards) and on_shards.gpu.ntotal == 3000
    s_cpu, i_cpu = on_cpu.search(q, 10)
    s, i = on_shards.search(q, 10)
    np.testing.assert_array_equal(i, i_cpu)
    np.testing.assert_allclose(s, s_cpu, atol=1e-5)
    assert set(i.ravel()) <= set(ids)
