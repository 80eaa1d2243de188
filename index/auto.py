"""Vectors -> a trained, tuned FAISS index: choose the type, train it, tune its search knob.

Every index here ranks unit vectors by inner product (= cosine similarity), the metric the
memory bank was trained with. ``auto`` follows autofaiss's rules of thumb:

* exact ``Flat`` while the collection is below ``flat_max`` vectors (1M) and fits the
  memory budget -- exact search on 1M x 128 is still tens of milliseconds;
* above that ``IVF{nlist},Flat`` with ``nlist`` ~ 4 sqrt(N) (a power of two), or HNSW when
  asked for (faster queries, slower builds, removal rebuilds the graph);
* under a memory budget the raw vectors do not fit (``--memory-budget 2G``), compressed codes
  that still reach the recall target: ``IVF{nlist},SQ8`` (one byte per dimension, a quarter of
  the raw size; 8-bit scalar quantisation loses little rank order on unit vectors, so tuning
  nprobe recovers the target), and only when even that does not fit ``IVF{nlist},PQ{m}``, whose
  recall the codes cap (the manifest then records the target as missed).

Approximate indexes are then tuned: ``nprobe`` (IVF) or ``efSearch`` (HNSW) is raised until
recall@10 against exact search reaches the target (default 0.95). The tuning queries are
fresh: a seeded sample of the vectors is held out of the index (and of its training sample)
while it is trained, tuned and measured, and added only afterwards -- a query that is itself
an index row finds its own vector almost always, which would make the recall optimistic. The
chosen value and the recall measured are returned (:class:`index.manifest.IndexInfo`) so the
manifest records them; nobody has to guess what the index delivers.
"""

from __future__ import annotations

import math
import re
import time
import warnings
from dataclasses import asdict, dataclass, field

import faiss
import numpy as np
import torch
from tqdm import tqdm

from .faiss_util import (
    KNOBS,
    METRIC,
    apply_knobs,
    create_index,
    gpu_available,
    index_kind,
    recall_at_k,
    search_params,
)
from .manifest import IndexInfo

FLAT_MAX_VECTORS = 1_000_000
DEFAULT_MEMORY_BUDGET = 8 * 2**30
DEFAULT_TARGET_RECALL = 0.95
RECALL_K = 10
RECALL_QUERIES = 1000  # fresh queries that tuning measures recall on (at most a fifth of the vectors)
HELD_OUT = "held out of the index while measured"  # IndexInfo.recall_query_kind of a tuned index
TOO_FEW = "index rows (too few vectors to hold queries out)"
HNSW_M = 32
ALIASES = ("auto", "flat", "ivf", "ivfsq", "ivfpq", "hnsw")
ADD_CHUNK = 65_536
IDMAP_BYTES = 56  # IndexIDMap2: id array + reverse hash map entry, per vector (approx.)


# ---------------------------------------------------------------- planning


def parse_bytes(value: str | int) -> int:
    """'8G', '512M', '1.5GiB', 1000 -> bytes (binary units)."""
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kmgt]?)(i?b)?\s*", str(value).lower())
    if not m:
        raise ValueError(f"not a size: {value!r} (use e.g. 512M, 8G)")
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " "))


@dataclass
class IndexPlan:
    """What to build and why (the reason goes into the manifest)."""

    kind: str  # flat | ivf | ivfsq | ivfpq | hnsw | custom
    factory: str  # FAISS factory string, without the IDMap2 wrapper
    reason: str
    estimated_bytes: int


def nlist_for(n: int) -> int:
    """~4 sqrt(N) inverted lists as a power of two, but at least 39 training points per list."""
    p = 2 ** max(0, round(math.log2(max(1.0, 4 * math.sqrt(n)))))
    while p > 1 and p * 39 > n:
        p //= 2
    return p


def pq_nbits_for(n: int) -> int:
    """8-bit PQ codes need ~39 x 256 training points; small sets get smaller codebooks."""
    return int(min(8, max(4, math.floor(math.log2(max(16, n / 39))))))


def estimate_bytes(kind: str, n: int, d: int, nlist: int = 0, m: int = 0, hnsw_m: int = HNSW_M) -> int:
    if kind == "flat":
        return n * (4 * d + IDMAP_BYTES)
    if kind == "ivf":
        return n * (4 * d + 8) + nlist * d * 4
    if kind == "ivfsq":  # one byte per dimension + the id, centroids, per-dimension min/range
        return n * (d + 8) + nlist * d * 4 + 2 * d * 4
    if kind == "ivfpq":
        return n * (m + 8) + nlist * d * 4 + 256 * d * 4
    if kind == "hnsw":
        return n * (4 * d + int(hnsw_m * 2 * 4 * 1.1) + IDMAP_BYTES)
    raise ValueError(kind)


def _pq_m_for(n: int, d: int, nlist: int, budget: int) -> int:
    # at least 2 dimensions per sub-quantizer: 1-d codebooks cost as much to train and compress badly
    options = [m for m in (64, 48, 32, 24, 16, 8, 4, 2, 1) if d % m == 0 and m <= max(1, d // 2)]
    for m in options:
        if estimate_bytes("ivfpq", n, d, nlist, m) <= budget:
            return m
    return options[-1]


def plan_index(
    n: int,
    d: int,
    index_type: str = "auto",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    flat_max: int = FLAT_MAX_VECTORS,
    prefer_hnsw: bool = False,
) -> IndexPlan:
    """Turn ``auto``/``flat``/``ivf``/``ivfsq``/``ivfpq``/``hnsw`` or a factory string into an :class:`IndexPlan`."""
    if n < 1:
        raise ValueError("cannot build an index of 0 vectors")
    t = index_type.strip()
    kind = t.lower()
    nlist = nlist_for(n)
    flat_b = estimate_bytes("flat", n, d)
    ivf_b = estimate_bytes("ivf", n, d, nlist)
    sq_b = estimate_bytes("ivfsq", n, d, nlist)
    hnsw_b = estimate_bytes("hnsw", n, d)
    gib = 2**30

    def ivfpq(reason: str) -> IndexPlan:
        if n < 256:
            raise ValueError(f"IVF-PQ needs at least 256 vectors to train its codebooks, got {n}; use flat")
        m, nb = _pq_m_for(n, d, nlist, memory_budget), pq_nbits_for(n)
        code = f"PQ{m}" if nb == 8 else f"PQ{m}x{nb}"
        return IndexPlan("ivfpq", f"IVF{nlist},{code}", reason, estimate_bytes("ivfpq", n, d, nlist, m))

    if kind == "flat":
        return IndexPlan("flat", "Flat", "requested", flat_b)
    if kind == "ivf":
        return IndexPlan("ivf", f"IVF{nlist},Flat", "requested", ivf_b)
    if kind == "ivfsq":
        return IndexPlan("ivfsq", f"IVF{nlist},SQ8", "requested", sq_b)
    if kind == "ivfpq":
        return ivfpq("requested")
    if kind == "hnsw":
        return IndexPlan("hnsw", f"HNSW{HNSW_M},Flat", "requested", hnsw_b)
    if kind == "auto":
        if n < flat_max and flat_b <= memory_budget:
            return IndexPlan("flat", "Flat", f"{n} < {flat_max} vectors and {flat_b / gib:.2f} GiB fits the "
                             f"{memory_budget / gib:.2f} GiB budget: exact search", flat_b)
        if prefer_hnsw and hnsw_b <= memory_budget:
            return IndexPlan("hnsw", f"HNSW{HNSW_M},Flat", "HNSW preferred and it fits the memory budget", hnsw_b)
        if ivf_b <= memory_budget:
            why = f"{n} >= {flat_max} vectors" if n >= flat_max else "exact Flat exceeds the memory budget"
            return IndexPlan("ivf", f"IVF{nlist},Flat", f"{why}: IVF with nlist ~ 4 sqrt(N) = {nlist}", ivf_b)
        if sq_b <= memory_budget:
            return IndexPlan("ivfsq", f"IVF{nlist},SQ8", f"raw vectors ({ivf_b / gib:.2f} GiB) exceed the "
                             f"{memory_budget / gib:.2f} GiB budget: IVF with 8-bit scalar-quantised codes "
                             f"({sq_b / gib:.2f} GiB), nlist {nlist}", sq_b)
        return ivfpq(f"even 8-bit codes ({sq_b / gib:.2f} GiB) exceed the {memory_budget / gib:.2f} GiB budget: "
                     "compressed IVF-PQ (its codes may cap recall below the target)")
    try:
        faiss.index_factory(d, t, METRIC)
    except RuntimeError as e:
        raise ValueError(f"--index-type {t!r} is neither one of {', '.join(ALIASES)} nor a FAISS factory "
                         f"string FAISS accepts ({str(e).splitlines()[-1]})") from e
    return IndexPlan("custom", t, "FAISS factory string given", 0)


# ---------------------------------------------------------------- training and adding


def train_size(index: faiss.Index, n: int) -> int:
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return min(n, max(64 * ivf.nlist, 16_384))
    return min(n, 65_536)


def train_and_add(
    index: faiss.Index, vectors: np.ndarray, ids: np.ndarray, use_gpu: bool | None = None,
    progress: bool = True, seed: int = 0,
) -> tuple[faiss.Index, np.ndarray | None]:
    """Train (on a random sample) and add; on a FAISS GPU when present, falling back to the CPU.

    Returns the CPU index and the training rows (so tuning can hold them out).
    """
    n = len(vectors)
    rows = None
    if not index.is_trained:
        nt = train_size(index, n)
        rows = np.arange(n) if nt >= n else np.sort(np.random.default_rng(seed).choice(n, nt, replace=False))
    use_gpu = gpu_available() if use_gpu is None else use_gpu
    if use_gpu and index_kind(index) == "ivf":
        try:
            gpu = faiss.index_cpu_to_all_gpus(index)
            _train_add(gpu, vectors, ids, rows, progress)
            return faiss.index_gpu_to_cpu(gpu), rows
        except (RuntimeError, AttributeError) as e:
            warnings.warn(f"FAISS GPU build failed ({str(e).splitlines()[0]}); building on the CPU", stacklevel=2)
    _train_add(index, vectors, ids, rows, progress)
    return index, rows


def _train_add(index: faiss.Index, vectors: np.ndarray, ids: np.ndarray, rows: np.ndarray | None,
               progress: bool) -> None:
    if rows is not None:
        try:
            index.train(np.ascontiguousarray(vectors[rows]))
        except RuntimeError as e:
            raise ValueError(f"training the index failed: {str(e).splitlines()[-1]}") from e
    for i in tqdm(range(0, len(vectors), ADD_CHUNK), desc="add to index", unit="chunk", disable=not progress,
                  leave=False):
        index.add_with_ids(np.ascontiguousarray(vectors[i : i + ADD_CHUNK]), ids[i : i + ADD_CHUNK])


# ---------------------------------------------------------------- exact search and tuning


def exact_topk(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner-product top-k (scores, row numbers): on the GPU via torch when present."""
    k = min(k, len(vectors))
    if torch.cuda.is_available():
        from instdisc.knn import topk_cosine

        bank = torch.from_numpy(vectors).cuda()
        s, i = topk_cosine(torch.from_numpy(queries), bank, k)
        del bank
        return s.numpy(), i.numpy()
    return faiss.knn(np.ascontiguousarray(queries), vectors, k, metric=METRIC)


@dataclass
class TuneResult:
    params: dict
    recall: float
    target: float
    reached: bool
    k: int = RECALL_K
    queries: int = 0
    curve: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def tune(
    index: faiss.Index, vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray,
    target: float = DEFAULT_TARGET_RECALL, k: int = RECALL_K, progress: bool = True,
) -> TuneResult:
    """Raise nprobe / efSearch until recall@k of ``queries`` vs exact search over ``vectors`` (what the
    index holds, ids ``ids``) reaches ``target``; measure it.

    Pass queries that are not rows of the index (see the module doc). Exact (Flat) indexes have
    recall 1 by construction and are not measured.
    """
    kind = index_kind(index)
    if kind == "flat":
        return TuneResult({}, 1.0, target, True, k)
    k = min(k, len(vectors))
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    _, truth_rows = exact_topk(vectors, queries, k)
    truth = ids[truth_rows]

    curve: list[dict] = []
    knob = KNOBS.get(kind)

    def measure(value: int | None) -> float:
        knobs = {knob: value} if knob else {}
        t0 = time.perf_counter()
        _, found = index.search(queries, k, params=search_params(index, knobs))
        ms = (time.perf_counter() - t0) * 1000 / len(queries)
        r = recall_at_k(found, truth)
        curve.append({**knobs, "recall": round(r, 4), "ms_per_query": round(ms, 4)})
        return r

    if knob is None:  # no search-time knob (e.g. plain PQ): just report what it delivers
        r = measure(None)
        return TuneResult({}, r, target, r >= target, k, len(queries), curve)

    if kind == "ivf":
        top = faiss.try_extract_index_ivf(index).nlist
        candidates = sorted({min(2**i, top) for i in range(0, int(math.log2(top)) + 2)})
    else:
        top = 4096
        candidates = [v for v in (16, 32, 64, 128, 256, 512, 1024, 2048, 4096) if v >= k] or [k]
    results: dict[int, float] = {}
    bar = tqdm(candidates, desc=f"tune {knob}", disable=not progress, leave=False)
    prev = None
    for v in bar:
        results[v] = measure(v)
        bar.set_postfix(recall=f"{results[v]:.3f}")
        if results[v] >= target:
            break
        prev = v
    bar.close()
    hits = [v for v, r in results.items() if r >= target]
    if hits:
        hi = min(hits)
        lo = prev if prev is not None and prev < hi else None
        while lo is not None and hi - lo > max(1, lo // 8):  # bisect between the last miss and the hit
            mid = (lo + hi) // 2
            results[mid] = measure(mid)
            if results[mid] >= target:
                hi = mid
            else:
                lo = mid
        best, reached = hi, True
    else:
        peak = max(results.values())
        best = min(v for v, r in results.items() if r >= peak - 1e-3)
        reached = False
        why = ("the graph caps recall; rebuild with a larger M or efConstruction, or use IVF-Flat" if kind == "hnsw"
               else "compressed codes cap recall; raise the memory budget or use IVF-Flat")
        warnings.warn(f"recall@{k} target {target} not reached: best {peak:.3f} at {knob}={best} ({why})",
                      stacklevel=2)
    curve.sort(key=lambda c: c[knob])
    return TuneResult({knob: int(best)}, results[best], target, reached, k, len(queries), curve)


# ---------------------------------------------------------------- all together


def tuning_rows(n: int, n_queries: int, seed: int = 1) -> np.ndarray:
    """Sorted rows held out as fresh tuning queries: ``n_queries``, at most a fifth of ``n`` (none below 10 rows)."""
    q = min(n_queries, n // 5)
    if q < 2:
        return np.zeros(0, np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, q, replace=False))


def build_vector_index(
    vectors: np.ndarray,
    ids: np.ndarray | None = None,
    index_type: str = "auto",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    target_recall: float = DEFAULT_TARGET_RECALL,
    flat_max: int = FLAT_MAX_VECTORS,
    prefer_hnsw: bool = False,
    n_queries: int = RECALL_QUERIES,
    use_gpu: bool | None = None,
    progress: bool = True,
    seed: int = 0,
) -> tuple[faiss.Index, IndexInfo]:
    """Plan, create, train, add and tune; return the CPU index and what to record about it.

    Approximate indexes are trained and tuned without the held-out query rows
    (:func:`tuning_rows`), which are added once the knob is chosen (see the module doc).
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    ids = np.arange(n, dtype=np.int64) if ids is None else np.ascontiguousarray(ids, dtype=np.int64)
    plan = plan_index(n, d, index_type, memory_budget, flat_max, prefer_hnsw)
    t0 = time.perf_counter()
    index = create_index(plan.factory, d)
    approximate = index_kind(index) != "flat"
    held = tuning_rows(n, n_queries) if approximate else np.zeros(0, np.int64)
    rest = np.setdiff1d(np.arange(n), held, assume_unique=True) if len(held) else np.arange(n)
    indexed, indexed_ids = (vectors[rest], ids[rest]) if len(held) else (vectors, ids)
    index, train_rows = train_and_add(index, indexed, indexed_ids, use_gpu, progress, seed)
    t1 = time.perf_counter()
    if len(held):
        tuned, query_kind = tune(index, indexed, indexed_ids, vectors[held], target_recall, progress=progress), HELD_OUT
    else:  # exact (nothing to measure), or too few vectors to hold any out
        tuned, query_kind = tune(index, vectors, ids, vectors, target_recall, progress=progress), TOO_FEW
    if tuned.params:
        apply_knobs(index, tuned.params)
    if len(held):  # the fresh queries join the collection once the knob is chosen
        _train_add(index, vectors[held], ids[held], None, progress=False)
    t2 = time.perf_counter()
    info = IndexInfo(
        type=plan.kind if plan.kind != "custom" else index_kind(index), requested=index_type, factory=plan.factory,
        faiss_class=type(faiss.downcast_index(index)).__name__, reason=plan.reason,
        estimated_bytes=plan.estimated_bytes, memory_budget=memory_budget, params=tuned.params,
        recall_at_10=round(tuned.recall, 4), recall_k=tuned.k, target_recall=target_recall,
        target_reached=tuned.reached, recall_queries=tuned.queries,
        recall_query_kind=query_kind if tuned.queries else IndexInfo.recall_query_kind, tuning=tuned.curve,
        train_vectors=0 if train_rows is None else len(train_rows), build_seconds=round(t1 - t0, 2),
        tune_seconds=round(t2 - t1, 2))
    return index, info
