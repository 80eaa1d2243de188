"""Building and updating a Milvus-backed index: a new collection per build, switched to once complete.

A build writes every row into a new collection ``<name>_<generation>``, builds and tunes its
index, and only then commits: it points the alias ``<name>`` at it (where the server has
aliases; Milvus Lite and Milvus 2.x do) and writes INDEX_DIR/manifest.json naming it -- the
pointer this project's readers follow. Then the previous generation's collection is dropped.
A crash before the manifest is written leaves the previous manifest, pointing at the previous
complete collection; the next writer re-points the alias to it and drops the unfinished one.

``--add`` and ``--remove`` change the serving collection in place (a database's inserts and
deletes, not a copy of the collection): new rows get ids from the manifest's ``next_id`` on,
and readers only see ``id < next_id``, so an interrupted ``--add`` stays invisible until the
manifest commits it; the next writer deletes such leftovers before doing anything else.
"""

from __future__ import annotations

import json
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from instdisc.fsutil import atomic_write_text

from .auto import HELD_OUT, RECALL_K, TOO_FEW, exact_topk, nlist_for, tuning_rows
from .errors import IndexDirError
from .layout import locked, new_generation, remove_orphans
from .manifest import MANIFEST, IndexInfo, Manifest, MilvusRecord, Update, now
from .milvus_backend import (
    DEFAULT_LITE_FILE,
    INDEX_TYPES,
    LITE_INDEX_TYPES,
    SEARCH_KNOB,
    MilvusError,
    MilvusIndex,
    call,
    check_name,
    check_schema,
    check_uri,
    connect,
    create_collection,
    disconnect,
    index_params,
    insert_rows,
    is_lite,
    open_index,
)
from .store import Row

INFO_FILE = "milvus-info-{generation}.json"  # the index's extra settings (the whitening), one per generation


def serving_name(collection: str, generation: str) -> str:
    return f"{collection}_{generation.replace('-', '_')}"


def generation_pattern(collection: str) -> re.Pattern:
    """Names :func:`serving_name` makes for ``collection`` (what cleanup may drop, and nothing else)."""
    return re.compile(re.escape(collection) + r"_\d{8}_\d{6}_[0-9a-f]{6}")


def default_uri(out: Path) -> str:
    return str(Path(out).resolve() / DEFAULT_LITE_FILE)


# ---------------------------------------------------------------- what index to build


def plan(index_type: str, n: int, lite: bool, flat_max: int, prefer_hnsw: bool) -> tuple[str, str, dict, str]:
    """(our type name, Milvus index type, build params, why) for ``--index-type`` on ``n`` vectors."""
    if index_type == "auto":
        if n <= flat_max:
            kind, why = "flat", f"{n} vectors <= --flat-max {flat_max}: exact search"
        elif prefer_hnsw and not lite:
            kind, why = "hnsw", f"{n} vectors > --flat-max {flat_max}, --hnsw"
        else:
            kind, why = "ivf", f"{n} vectors > --flat-max {flat_max}: IVF_FLAT"
    elif index_type in INDEX_TYPES:
        kind, why = index_type, "asked for"
    else:
        raise MilvusError(f"--index-type {index_type!r}: the Milvus backend builds {['auto', *INDEX_TYPES]} "
                          "(FAISS factory strings are for the FAISS backend)")
    mtype = INDEX_TYPES[kind]
    if lite and mtype not in LITE_INDEX_TYPES:
        raise MilvusError(f"--index-type {kind}: Milvus Lite builds {list(LITE_INDEX_TYPES)} only "
                          f"({mtype} needs a Milvus server: --milvus-uri http://host:19530)")
    params: dict = {}
    if mtype.startswith("IVF"):
        params["nlist"] = nlist_for(n)
    if mtype == "IVF_PQ":
        params.update(m=16, nbits=8)
    if mtype == "HNSW":
        params.update(M=32, efConstruction=200)
    return kind, mtype, params, why


def tune(coll: MilvusIndex, vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, target: float,
         progress: bool) -> tuple[dict, float, bool, list[dict]]:
    """Raise nprobe / ef (powers of two) until recall@10 of ``queries`` against exact search over ``vectors``
    reaches ``target``: (knob, recall, reached, curve)."""
    knob = SEARCH_KNOB[coll.index_type]
    k = min(RECALL_K, len(vectors))
    truth = ids[exact_topk(vectors, queries, k)[1]]
    top = int(coll.params.get("nlist", 4096)) if knob == "nprobe" else 4096
    values = sorted({min(2**i, top) for i in range(int(np.log2(top)) + 1)} | {top})
    if knob == "ef":
        values = [v for v in values if v >= k] or [k]
    curve, best = [], None
    for v in tqdm(values, desc=f"tune {knob}", disable=not progress, leave=False):
        coll.params[knob] = v
        t0 = time.perf_counter()
        found = coll.search(queries, k)
        ms = (time.perf_counter() - t0) * 1000 / len(queries)
        got = np.full((len(queries), k), -1, np.int64)
        for i, hits in enumerate(found):
            got[i, : len(hits)] = [r.id for _, r in hits]
        recall = float(np.mean([len(set(g) & set(t)) / k for g, t in zip(got, truth, strict=True)]))
        curve.append({knob: v, "recall": round(recall, 4), "ms_per_query": round(ms, 4)})
        best = (v, recall)
        if recall >= target:
            break
    coll.params[knob] = best[0]
    if best[1] < target:
        warnings.warn(f"recall@{k} target {target} not reached: {best[1]:.3f} at {knob}={best[0]}", stacklevel=2)
    return {knob: best[0]}, best[1], best[1] >= target, curve


# ---------------------------------------------------------------- switching generations


def write_info(out: Path, generation: str, info: dict[str, str]) -> str:
    """The extra settings file of a generation (atomic); its name."""
    name = INFO_FILE.format(generation=generation)
    atomic_write_text(out / name, json.dumps(info) + "\n")
    return name


def previous(out: Path) -> Manifest | None:
    """The committed manifest, if INDEX_DIR holds a readable one."""
    try:
        return Manifest.read(out) if (out / MANIFEST).exists() else None
    except IndexDirError:
        return None


def point_alias(client, alias: str, target: str) -> bool:
    """Point ``alias`` at ``target``; False (with a warning) where the server refuses, e.g. because a
    collection of that name exists -- the manifest is then the only pointer."""
    from pymilvus.exceptions import MilvusException

    try:
        aliases = client.list_aliases().get("aliases", [])
        (client.alter_alias if alias in aliases else client.create_alias)(target, alias)
        return True
    except MilvusException as e:
        warnings.warn(f"Milvus alias {alias} not set ({getattr(e, 'message', e)}); readers follow the manifest",
                      stacklevel=2)
        return False


def clean_up(client, out: Path, collection: str, keep: str | None) -> list[str]:
    """Drop this index's generation collections other than ``keep`` and settings files of other generations
    (what an earlier build left, finished or killed); re-point the alias at ``keep`` first."""
    if keep is not None and call("listing collections", client.has_collection, keep):
        point_alias(client, collection, keep)
    pattern = generation_pattern(collection)
    dropped = []
    for name in call("listing collections", client.list_collections):
        if pattern.fullmatch(name) and name != keep:
            call(f"dropping {name}", client.drop_collection, name)
            dropped.append(name)
    m = previous(out)
    keep_info = m.milvus.info_file if m is not None and m.milvus is not None else ""
    for p in out.glob(INFO_FILE.format(generation="*")):
        if p.name != keep_info:
            p.unlink(missing_ok=True)
    return dropped


def refuse_taken(client, uri: str, collection: str) -> None:
    """A first build into ``collection`` must not take over another index's collections at the same server."""
    pattern = generation_pattern(collection)
    taken = [c for c in call("listing collections", client.list_collections) if pattern.fullmatch(c)]
    if taken or call("listing aliases", client.list_aliases).get("aliases", []).count(collection):
        raise MilvusError(f"Milvus at {uri} already holds collection {collection} ({', '.join(taken) or 'alias'}), "
                          "which this index folder's manifest does not name: another index uses it, or an earlier "
                          "build of this folder was killed before it committed. Pass another --collection, or drop "
                          "those collections")


# ---------------------------------------------------------------- build


def build_collection(out: Path, vectors: np.ndarray, rows: list[Row], info: dict[str, str], options,
                     make_manifest: Callable[[IndexInfo], Manifest]) -> Manifest:
    """Write ``rows`` with their (final) vectors into a new collection, index and tune it, then commit
    (alias, manifest) and drop the previous generation. ``options``: :class:`index.build.BuildOptions`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    uri = check_uri(options.milvus_uri, None) if options.milvus_uri else default_uri(out)
    name = check_name(options.collection)
    n, d = vectors.shape
    kind, mtype, params, why = plan(options.index_type, n, is_lite(uri), options.flat_max, options.prefer_hnsw)
    with locked(out):
        old = previous(out)
        client = connect(uri)
        try:
            same_place = old is not None and old.milvus is not None and old.milvus.uri == uri \
                and old.milvus.collection == name
            if same_place:
                clean_up(client, out, name, old.milvus.serving)
            elif uri == default_uri(out):  # a Lite file inside INDEX_DIR belongs to this folder alone
                clean_up(client, out, name, None)
            else:
                refuse_taken(client, uri, name)
            gen = new_generation()
            serving = serving_name(name, gen)
            t0 = time.perf_counter()
            create_collection(client, serving, d)
            approximate = mtype != "FLAT"
            held = tuning_rows(n, options.recall_queries) if approximate else np.zeros(0, np.int64)
            rest = np.setdiff1d(np.arange(n), held, assume_unique=True)
            bar = tqdm(total=n, desc="insert", unit="vec", disable=not options.progress, leave=False)
            insert_rows(client, serving, [rows[i] for i in rest], vectors[rest], bar.update)
            info_file = write_info(out, gen, info)  # rows in, index not yet built: where a kill test strikes
            call(f"indexing {serving}", client.create_index, serving, index_params(client, mtype, params))
            coll = MilvusIndex(uri, serving, d, n, mtype, params, info, client=client)
            t1 = time.perf_counter()
            if len(held):
                knob, recall, reached, curve = tune(coll, vectors[rest], rest.astype(np.int64), vectors[held],
                                                    options.target_recall, options.progress)
                insert_rows(client, serving, [rows[i] for i in held], vectors[held], bar.update)
                kind_q = HELD_OUT
            else:
                knob, recall, reached, curve, kind_q = {}, 1.0, True, [], TOO_FEW if approximate else ""
            bar.close()
            t2 = time.perf_counter()
            index_info = IndexInfo(
                type=kind, requested=options.index_type, factory=mtype, faiss_class="", reason=why,
                params={**params, **knob}, recall_at_10=round(recall, 4), target_recall=options.target_recall,
                target_reached=reached, recall_queries=len(held),
                recall_query_kind=kind_q or IndexInfo.recall_query_kind, tuning=curve,
                build_seconds=round(t1 - t0, 2), tune_seconds=round(t2 - t1, 2))
            m = make_manifest(index_info)
            m.backend = "milvus"
            m.milvus = MilvusRecord(uri=uri, collection=name, serving=serving, alias=False, index_type=mtype,
                                    info_file=info_file)
            m.milvus.alias = point_alias(client, name, serving)
            commit(out, m, gen)
            clean_up(client, out, name, serving)
            if old is not None and old.milvus is not None and not same_place:
                warnings.warn(f"the previous generation's collection {old.milvus.serving} at {old.milvus.uri} was "
                              "left in place (another server or collection name)", stacklevel=2)
            remove_orphans(out)  # the data files of a FAISS index this folder held before
        finally:
            disconnect(client, uri)
    return m


def commit(out: Path, m: Manifest, generation: str) -> None:
    """Make ``generation`` current: the manifest (written atomically) is the pointer readers follow."""
    m.generation = generation
    m.files = None
    m.updated = now()
    m.write(out)


# ---------------------------------------------------------------- updates in place


def opened_for_update(d: Path) -> tuple[Manifest, MilvusIndex]:
    """The manifest and its collection, with rows an interrupted --add left beyond ``next_id`` deleted."""
    m = Manifest.read(d)
    coll = open_index(d, m)
    try:
        call("deleting uncommitted rows", coll.client.delete, coll.collection, filter=f"id >= {int(m.next_id)}")
    except BaseException:
        coll.close()
        raise
    return m, coll


def remove(d: Path, paths: list[str], entry_ids: Callable[[MilvusIndex, Manifest, list[str]], np.ndarray]
           ) -> Manifest:
    """Delete the entries ``entry_ids`` resolves ``paths`` to (ValueError, nothing changed, for unknown ones)."""
    with locked(d):
        m, coll = opened_for_update(d)
        try:
            ids = entry_ids(coll, m, paths)
            if len(ids):
                call("deleting rows", coll.client.delete, coll.collection, ids=[int(i) for i in ids])
            m.count = coll.count()
            m.updates.append(Update("remove", now(), count=len(ids), paths=list(paths)[:20]))
            m.updated = now()
            m.write(d)
        finally:
            coll.close()
    return m


def add_rows(d: Path, m: Manifest, coll: MilvusIndex, rows: list[Row], vectors: np.ndarray, replaced: list[int],
             update: Update) -> Manifest:
    """Insert new rows (ids from ``next_id`` on), delete the entries they replace, commit the manifest."""
    insert_rows(coll.client, coll.collection, rows, vectors)
    if replaced:
        call("deleting replaced rows", coll.client.delete, coll.collection, ids=[int(i) for i in replaced])
    m.next_id += len(rows)
    coll.next_id = m.next_id
    m.count = coll.count()
    m.updates.append(update)
    m.updated = now()
    m.write(d)
    return m


def verify(m: Manifest) -> None:
    """What a Milvus manifest must hold before anything is opened."""
    if m.milvus is None:
        raise IndexDirError("the manifest says backend milvus but records no collection")
    check_uri(m.milvus.uri)
    check_name(m.milvus.collection)
    if not generation_pattern(m.milvus.collection).fullmatch(m.milvus.serving):
        raise IndexDirError(f"manifest: serving collection {m.milvus.serving!r} is not a generation of "
                            f"{m.milvus.collection!r} (the manifest was edited or damaged)")


__all__ = ["build_collection", "check_schema", "remove", "add_rows", "opened_for_update", "plan", "verify"]
