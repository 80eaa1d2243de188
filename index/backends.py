"""Where a search runs: FAISS on the CPU, FAISS on GPUs, or torch on a CUDA GPU.

The machines this project uses often have CUDA torch but a FAISS build without GPU support,
so exact (Flat) search there is a chunked matmul + top-k in torch (``instdisc.knn``), which
is what FAISS's GPU Flat index does anyway. Every backend answers the same question --
top-k ids and inner products, optionally restricted to a set of allowed ids -- and pads
missing results with id -1 / score -inf.

Several GPUs: FAISS shards the index over all of them (``index_cpu_to_all_gpus`` with
``GpuMultipleClonerOptions.shard``: each GPU holds 1/G of the vectors and ``IndexShards``
merges the per-GPU top-k), so the collection that fits grows with the GPU count; the torch
fallback does the same by hand (:func:`sharded_topk`). Neither path has run on multi-GPU
hardware in this project; the merge itself is tested on CPU shards.

Filtered search uses FAISS ``IDSelector``s, not over-fetching, so a filter that keeps few
entries still yields k results: for IVF / HNSW the search knob is raised until every query
has min(k, allowed) hits, then the allowed vectors are scored exactly where the index can
reconstruct them.
"""

from __future__ import annotations

import warnings

import faiss
import numpy as np
import torch

from instdisc.knn import topk_cosine

from .faiss_util import core, gpu_available, index_ids, index_kind, search_params

GPU_MAX_K = 2048  # FAISS GPU top-k limit; larger k goes to the CPU


def merge_topk(parts: list[tuple[torch.Tensor, torch.Tensor]], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge per-shard (scores, global rows), each (Q, k_s) best first, into the overall top-k."""
    scores = torch.cat([s.float() for s, _ in parts], 1)
    rows = torch.cat([r for _, r in parts], 1)
    best, pos = scores.topk(min(k, scores.shape[1]), dim=1)
    return best, rows.gather(1, pos)


def sharded_topk(
    queries: torch.Tensor, shards: list[torch.Tensor], offsets: list[int], k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k inner products over a matrix split into row shards (one per device), on the CPU.

    Shard s holds rows ``offsets[s] ..``; each shard's top-k is computed where it lives and the
    per-shard lists are merged, which gives the unsharded answer (up to the order of ties).
    """
    parts = []
    for shard, offset in zip(shards, offsets, strict=True):
        if shard.shape[0]:
            s, r = topk_cosine(queries, shard, k)
            parts.append((s, r + offset))
    if not parts:
        return torch.zeros(queries.shape[0], 0), torch.zeros(queries.shape[0], 0, dtype=torch.long)
    return merge_topk(parts, k)


def gpu_cloner_options(num_gpus: int) -> faiss.GpuMultipleClonerOptions | None:
    """Shard over several GPUs (capacity grows with their number); a single GPU takes a plain copy."""
    if num_gpus <= 1:
        return None
    co = faiss.GpuMultipleClonerOptions()
    co.shard = True
    return co


def _pad(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    b, have = ids.shape
    s = np.full((b, k), -np.inf, np.float32)
    i = np.full((b, k), -1, np.int64)
    s[:, : min(have, k)], i[:, : min(have, k)] = scores[:, :k], ids[:, :k]
    s[i < 0] = -np.inf  # FAISS marks missing results with -FLT_MAX for inner product
    return s, i


class FaissBackend:
    """FAISS CPU index, plus a GPU copy for unfiltered searches when a FAISS GPU is present."""

    def __init__(self, index: faiss.Index, knobs: dict, gpu: bool = False) -> None:
        self.cpu = index
        self.knobs = dict(knobs)
        self.kind = index_kind(index)
        self.gpu: faiss.Index | None = None
        self.gpu_ids: np.ndarray | None = None
        self.name = "cpu"
        if gpu:
            self._to_gpu()
            self.name = "faiss-gpu"

    def _to_gpu(self) -> None:
        if not gpu_available():
            raise RuntimeError("FAISS sees no GPU")
        co = gpu_cloner_options(faiss.get_num_gpus())
        if self.kind == "flat":  # clone the bare flat storage; map rows to ids ourselves
            wrapper = faiss.downcast_index(self.cpu)
            # sharded Flat answers with row numbers over all shards (IndexShards' successive ids)
            self.gpu = faiss.index_cpu_to_all_gpus(core(self.cpu), co=co)
            self.gpu_ids = faiss.vector_to_array(wrapper.id_map).astype(np.int64)
        elif self.kind == "ivf" and isinstance(faiss.downcast_index(self.cpu), faiss.IndexIVF):
            self.gpu = faiss.index_cpu_to_all_gpus(self.cpu, co=co)
            if "nprobe" in self.knobs:
                faiss.GpuParameterSpace().set_index_parameter(self.gpu, "nprobe", int(self.knobs["nprobe"]))
        else:
            raise RuntimeError(f"{type(faiss.downcast_index(self.cpu)).__name__} has no FAISS GPU version")

    def search(self, q: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        if allowed is None and self.gpu is not None and k <= GPU_MAX_K:
            try:
                d, i = self.gpu.search(q, k)
                if self.gpu_ids is not None:
                    i = np.where(i >= 0, self.gpu_ids[np.clip(i, 0, None)], -1)
                return _pad(d, i, k)
            except RuntimeError as e:  # out of GPU memory, ...: the CPU copy answers
                warnings.warn(f"FAISS GPU search failed ({str(e).splitlines()[0]}); using the CPU", stacklevel=2)
        return self._search_cpu(q, k, allowed)

    def _search_cpu(self, q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        want = min(k, self.cpu.ntotal if allowed is None else len(allowed))
        sel = None if allowed is None else faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
        knobs = dict(self.knobs)
        while True:  # approximate indexes can come back short (few lists probed, graph beam too narrow)
            d, i = self.cpu.search(q, k, params=search_params(self.cpu, knobs, sel))
            if ((i >= 0).sum(1) >= want).all() or not self._escalate(knobs):
                break
        short = (i >= 0).sum(1) < want
        if short.any():
            pool = index_ids(self.cpu) if allowed is None else np.ascontiguousarray(allowed, dtype=np.int64)
            try:
                vecs = self.cpu.reconstruct_batch(pool)
            except (RuntimeError, TypeError):  # compressed or unmapped codes: keep what the index found
                return _pad(d, i, k)
            s = q[short] @ vecs.T
            top = np.argsort(-s, axis=1, kind="stable")[:, :k]
            d[short, : top.shape[1]] = np.take_along_axis(s, top, 1)
            i[short, : top.shape[1]] = pool[top]
        return _pad(d, i, k)

    def _escalate(self, knobs: dict) -> bool:
        """Widen the search (more lists / a wider beam); False once it cannot grow further."""
        if self.kind == "ivf":
            nlist = faiss.try_extract_index_ivf(self.cpu).nlist
            cur = int(knobs.get("nprobe", faiss.try_extract_index_ivf(self.cpu).nprobe))
            if cur >= nlist:
                return False
            knobs["nprobe"] = min(nlist, cur * 4)
            return True
        if self.kind == "hnsw":
            cur = int(knobs.get("efSearch", core(self.cpu).hnsw.efSearch))
            if cur >= 16384:
                return False
            knobs["efSearch"] = cur * 4
            return True
        return False


def torch_devices(device: torch.device | str) -> list[torch.device]:
    """Every visible GPU for a bare ``cuda`` (the matrix is sharded over them), else the one device."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.device_count() > 1:
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return [device]


class TorchFlatBackend:
    """Exact search as chunked matmul + top-k on torch devices (CUDA when FAISS has no GPU).

    With several devices the rows are split into contiguous shards, one per device, and the
    per-shard top-k lists are merged (:func:`sharded_topk`).
    """

    name = "torch-cuda"

    def __init__(self, index: faiss.Index, device: torch.device | str = "cuda",
                 devices: list[torch.device | str] | None = None) -> None:
        if index_kind(index) != "flat":
            raise ValueError("the torch backend serves exact (Flat) indexes only")
        self.devices = [torch.device(d) for d in devices] if devices else torch_devices(device)
        self.device = self.devices[0]
        wrapper = faiss.downcast_index(index)
        flat = core(index)
        n = flat.ntotal
        vecs = torch.from_numpy(np.ascontiguousarray(flat.reconstruct_n(0, n) if n else np.zeros((0, index.d),
                                                                                                 np.float32)))
        g = len(self.devices)
        self.offsets = [n * s // g for s in range(g)]
        self.shards = [vecs[n * s // g : n * (s + 1) // g].to(d) for s, d in enumerate(self.devices)]
        self.ids = faiss.vector_to_array(wrapper.id_map).astype(np.int64) if n else np.zeros(0, np.int64)
        self._order = np.argsort(self.ids, kind="stable")
        self._sorted = self.ids[self._order]

    def search(self, q: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        qt = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32))
        if allowed is None:
            s, rows = sharded_topk(qt, self.shards, self.offsets, k)
            return _pad(s.numpy(), self.ids[rows.numpy()], k)
        pos = np.searchsorted(self._sorted, allowed)
        ok = pos < len(self._sorted)
        ok[ok] = self._sorted[pos[ok]] == allowed[ok]
        rows = np.sort(self._order[pos[ok]])
        # the allowed rows of each shard, gathered on that shard's device
        bounds = np.searchsorted(rows, [*self.offsets, len(self.ids)])
        picked = [rows[bounds[s] : bounds[s + 1]] for s in range(len(self.shards))]
        subs = [shard.index_select(0, torch.from_numpy(r - off).to(shard.device))
                for shard, r, off in zip(self.shards, picked, self.offsets, strict=True)]
        starts = np.cumsum([0] + [len(r) for r in picked])[:-1].tolist()
        s, sub_rows = sharded_topk(qt, subs, starts, k)
        return _pad(s.numpy(), self.ids[rows[sub_rows.numpy()]] if len(rows) else sub_rows.numpy(), k)
