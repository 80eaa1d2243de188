"""General FAISS helpers for indexes of unit vectors ranked by inner product (= cosine similarity).

Shared by the write path (:mod:`index.auto`, :mod:`index.build`) and the read path
(:mod:`index.search`, :mod:`index.backends`, evaluation), so reading never imports the planner:
creating an empty index, looking through its wrappers, its kind and search knob, per-call
search parameters, the ids it holds and the vectors it stores losslessly.
"""

from __future__ import annotations

import faiss
import numpy as np

METRIC = faiss.METRIC_INNER_PRODUCT
KNOBS = {"ivf": "nprobe", "hnsw": "efSearch"}  # the search-time knob of each tunable kind


def normalise(v: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as contiguous float32 (what every index here stores and is queried with)."""
    v = np.ascontiguousarray(v, dtype=np.float32)
    n = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.maximum(n, 1e-12)


def create_index(factory: str, d: int) -> faiss.Index:
    """An empty index; non-IVF types are wrapped in IndexIDMap2 so ids survive removals."""
    index = faiss.index_factory(d, factory, METRIC)
    if faiss.try_extract_index_ivf(index) is None and not isinstance(index, faiss.IndexIDMap):
        index = faiss.index_factory(d, "IDMap2," + factory, METRIC)
    ivf = faiss.try_extract_index_ivf(index)
    ivf = faiss.downcast_index(ivf) if ivf is not None else None
    if isinstance(ivf, faiss.IndexIVFPQ):
        ivf.do_polysemous_training = False  # on by default, minutes of annealing for codes we never use that way
    return index


def core(index: faiss.Index) -> faiss.Index:
    """The index under any IDMap / pre-transform wrappers."""
    index = faiss.downcast_index(index)
    while isinstance(index, faiss.IndexIDMap | faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    return index


def index_kind(index: faiss.Index) -> str:
    """'ivf', 'hnsw', 'flat' (exact) or 'other': decides the search knob and GPU path."""
    if faiss.try_extract_index_ivf(index) is not None:
        return "ivf"
    c = core(index)
    if isinstance(c, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(c, faiss.IndexFlat) and c.metric_type == METRIC:
        return "flat"
    return "other"



def search_params(
    index: faiss.Index, knobs: dict, sel: faiss.IDSelector | None = None
) -> faiss.SearchParameters | None:
    """Per-call parameters (thread-safe; the caller must keep ``sel`` alive during the search)."""
    kind = index_kind(index)
    if kind == "ivf":
        p = faiss.SearchParametersIVF()
        p.nprobe = int(knobs.get("nprobe", faiss.try_extract_index_ivf(index).nprobe))
    elif kind == "hnsw":
        p = faiss.SearchParametersHNSW()
        p.efSearch = int(knobs.get("efSearch", core(index).hnsw.efSearch))
    elif sel is not None:
        p = faiss.SearchParameters()
    else:
        return None
    if sel is not None:
        p.sel = sel
    return p


def apply_knobs(index: faiss.Index, knobs: dict) -> None:
    """Store the tuned knob in the index itself (it is serialised with it)."""
    ps = faiss.ParameterSpace()
    for k, v in knobs.items():
        ps.set_index_parameter(index, k, v)


def index_ids(index: faiss.Index) -> np.ndarray | None:
    """All ids held by the index (sorted), or None where the type does not expose them."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap):
        return np.sort(faiss.vector_to_array(index.id_map).astype(np.int64))
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        inv = ivf.invlists
        parts = []
        for lst in range(ivf.nlist):
            size = inv.list_size(lst)
            if size:
                parts.append(faiss.rev_swig_ptr(inv.get_ids(lst), size).copy())
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
    return None


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean |found_i ∩ exact_i| / |exact_i| over queries, of ids (negative ids never count): how much
    of exact search's top-k an approximate search returns. Tuning and evaluation both measure this."""
    found, exact = np.asarray(found), np.asarray(exact)
    valid = int((exact >= 0).sum())
    if valid == 0:
        return float("nan")
    hits = sum(len(np.intersect1d(f[f >= 0], t[t >= 0])) for f, t in zip(found, exact, strict=True))
    return hits / valid


def gpu_available() -> bool:
    try:
        return faiss.get_num_gpus() > 0
    except AttributeError:  # CPU-only faiss build
        return False


def stored_vectors(index: faiss.Index, ids: np.ndarray) -> np.ndarray | None:
    """The index's own vectors in ``ids`` order (unit rows), where it stores them losslessly (Flat,
    IVF-Flat, HNSW-Flat); None for compressed ones (PQ, SQ), whose exact neighbours need the originals."""
    kind = index_kind(index)
    try:
        if kind == "flat":
            pass
        elif kind == "hnsw":
            if not isinstance(faiss.downcast_index(core(index).storage), faiss.IndexFlat):
                return None
        elif kind == "ivf":
            ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
            if type(ivf) is not faiss.IndexIVFFlat:
                return None
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # ids need not be consecutive
        else:
            return None
        vecs = index.reconstruct_batch(np.ascontiguousarray(ids, dtype=np.int64))
    except (RuntimeError, AttributeError):
        return None
    return normalise(vecs)
