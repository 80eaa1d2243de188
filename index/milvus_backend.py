"""Milvus as the place an index's vectors and metadata live: connection, schema, filtered search, reads.

One ``pymilvus`` client serves the embedded Milvus Lite (a local ``.db`` folder, no server) and
Milvus standalone or distributed servers (``http://host:19530``): the same calls against another
URI. Each entry is one row of a collection -- ``id`` (primary key), ``vector`` and the metadata
the SQLite table of the FAISS backend holds (path, label, split, width, height, sha256 and the
photo facts: file size and time, date taken, camera) -- so label, folder, date-taken and camera
filters run inside Milvus as filter expressions, not after the search.

:class:`MilvusIndex` is an opened collection offering what :class:`index.search.SearchIndex`
needs from its metadata store and its search backend. Rows with ``id >= next_id`` are not yet
committed by the manifest (an ``--add`` that was interrupted) and are never returned.

Credentials come only from the environment (:data:`TOKEN_ENV`); a URI carrying a user,
password or token is refused so it can never reach the manifest or a log line.

Milvus Lite allows one process at a time per file (it takes a lock on the folder): the app holds
its client for as long as it serves, so builds and updates of that file run while the app is
stopped. Within a process, clients of one file share one embedded server, released when the
last :class:`MilvusIndex` of that file is closed.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import threading
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from .errors import IndexDirError
from .store import Filters, Row, normalise_folder

TOKEN_ENV = "MILVUS_TOKEN"  # "user:password" or an API key; never written anywhere
DEFAULT_COLLECTION = "instdisc"
DEFAULT_LITE_FILE = "milvus.db"  # --milvus-uri default: a Milvus Lite folder inside INDEX_DIR
SCHEMES = ("http", "https", "tcp", "unix")
# what Milvus Lite builds: milvus-lite 3.2.2 built and searched all five here (older releases: FLAT, IVF_FLAT)
LITE_INDEX_TYPES = ("FLAT", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "HNSW")
INDEX_TYPES = {"flat": "FLAT", "ivf": "IVF_FLAT", "ivfsq": "IVF_SQ8", "ivfpq": "IVF_PQ", "hnsw": "HNSW"}
SEARCH_KNOB = {"IVF_FLAT": "nprobe", "IVF_SQ8": "nprobe", "IVF_PQ": "nprobe", "HNSW": "ef"}
METRIC = "IP"  # inner product of unit vectors = cosine similarity, as the FAISS backend
MAX_K = 16_384  # Milvus's top-k limit
MAX_NPROBE = 65_536  # Milvus's nprobe limit; FAISS-based IVF clamps it to nlist: every list
INSERT_BATCH = 10_000  # rows per insert call (gRPC messages stay well under Milvus's 64 MB limit)
ID_BATCH = 1_000  # ids per query by primary key
CONNECT_TIMEOUT_S = 10.0
# Milvus Lite's embedded gRPC server answers pymilvus's 10-second idle keepalive pings with GOAWAY
# ("too_many_pings") after a minute or so, which breaks a client the app holds for hours: no pings on
# that loopback connection (servers keep pymilvus's defaults)
LITE_GRPC_OPTIONS = {"grpc.keepalive_time_ms": 2**31 - 1, "grpc.keepalive_permit_without_calls": False}
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,200}")  # Milvus collection / alias names
MAX_VARCHAR = 65_535  # Milvus's longest VARCHAR (bytes): camera names come from EXIF, which has no limit of its own
# field -> (Milvus type name, max_length for strings, nullable), in Row's order; the vector field is added with the
# dimension. ``taken`` is the ISO local time the SQLite store keeps (text that sorts as the time does), so a date
# range is the same string comparison on both backends; None (NULL) where unknown, which no range matches.
META_FIELDS = {"path": ("VARCHAR", 4096, False), "label": ("VARCHAR", 1024, True), "split": ("VARCHAR", 256, True),
               "width": ("INT64", 0, True), "height": ("INT64", 0, True), "sha256": ("VARCHAR", 64, True)}
PHOTO_FIELDS = {"file_bytes": ("INT64", 0, True), "mtime_ns": ("INT64", 0, True), "taken": ("VARCHAR", 32, True),
                "taken_from": ("VARCHAR", 16, True), "camera_make": ("VARCHAR", MAX_VARCHAR, True),
                "camera_model": ("VARCHAR", MAX_VARCHAR, True), "camera": ("VARCHAR", MAX_VARCHAR, True)}
FIELDS = {**META_FIELDS, **PHOTO_FIELDS}
CLIPPED = ("camera_make", "camera_model", "camera")  # EXIF text, cut to its field rather than failing the insert
ROW_FIELDS = ["id", *FIELDS]


class _NoLiteTimestampNote(logging.Filter):
    """Milvus Lite has no server timestamps for the query iterator; pymilvus notes it on every scan and then
    uses the client's clock, which is right for a strongly consistent local file."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "mvccTs" not in record.getMessage()


logging.getLogger("pymilvus.client.iterator.query_iterator").addFilter(_NoLiteTimestampNote())


class MilvusError(IndexDirError):
    """Milvus could not be reached, refused a request, or holds something other than this index expects."""


# ---------------------------------------------------------------- where the collection lives


def is_lite(uri: str) -> bool:
    """A Milvus Lite folder (a path ending in .db) rather than a server URI."""
    return "://" not in uri and uri.endswith(".db")


def check_uri(uri: str, base: Path | None = None) -> str:
    """The URI to record: a Lite path made absolute (relative to ``base`` or the working folder), a server
    URI unchanged; MilvusError for anything else, and for a URI carrying credentials."""
    uri = str(uri).strip()
    if is_lite(uri):
        p = Path(uri).expanduser()
        return str((base / p if base is not None and not p.is_absolute() else p).resolve())
    parts = urlsplit(uri)
    if parts.scheme not in SCHEMES:
        raise MilvusError(f"--milvus-uri {uri!r}: expected a Milvus Lite file ending in .db (e.g. ./collection.db) "
                          f"or a server URI {'|'.join(SCHEMES)}://host:port")
    if parts.username or parts.password or re.search(r"(token|password|secret)=", parts.query, re.I):
        raise MilvusError(f"--milvus-uri: credentials do not go in the URI (it is recorded in the manifest); "
                          f"put them in the environment variable {TOKEN_ENV} ('user:password' or an API key)")
    if not parts.hostname:
        raise MilvusError(f"--milvus-uri {uri!r}: no host")
    return uri


def check_name(name: str) -> str:
    """A valid collection name (letters, digits, underscores; not starting with a digit)."""
    if not NAME.fullmatch(name or ""):
        raise MilvusError(f"--collection {name!r}: Milvus names are letters, digits and underscores, "
                          "starting with a letter or underscore, at most 201 characters")
    return name


_lite_lock = threading.Lock()
_lite_users: dict[str, int] = {}  # Lite folder -> open clients in this process (they share one embedded server)


def _lite_locked_elsewhere(path: str) -> bool:
    """Whether another process holds the Lite folder's lock (milvus-lite flocks ``<folder>/LOCK``)."""
    lock = Path(path) / "LOCK"
    if not lock.exists():
        return False
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def connect(uri: str):
    """A ``pymilvus.MilvusClient`` for ``uri`` (token from :data:`TOKEN_ENV`); MilvusError saying why not."""
    try:
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException
    except ImportError as e:
        raise MilvusError(f"the Milvus backend needs pymilvus (and milvus-lite for .db files): {e}") from e
    token = os.environ.get(TOKEN_ENV, "")
    lite = is_lite(uri)
    if lite:
        if not Path(uri).parent.is_dir():
            raise MilvusError(f"Milvus Lite file {uri}: the folder {Path(uri).parent} does not exist")
        with _lite_lock:
            ours = _lite_users.get(uri, 0) > 0
        if not ours and _lite_locked_elsewhere(uri):
            raise MilvusError(f"Milvus Lite file {uri} is open in another process (Milvus Lite allows one process "
                              "per file: stop the app or the other build using it, or use a Milvus server)")
    try:
        client = MilvusClient(uri=uri, token=token, timeout=CONNECT_TIMEOUT_S,
                              **({"grpc_options": dict(LITE_GRPC_OPTIONS)} if lite else {}))
        client.list_collections()  # the round trip that proves the server answers and accepts the token
    except MilvusException as e:
        msg = getattr(e, "message", str(e))
        if lite:
            raise MilvusError(f"cannot open Milvus Lite file {uri}: {msg}") from None
        if "auth" in msg.lower() or "token" in msg.lower() or "credential" in msg.lower():
            raise MilvusError(f"Milvus at {uri} refused the credentials from {TOKEN_ENV}: {msg}") from None
        raise MilvusError(f"cannot reach Milvus at {uri}: {msg}") from None
    if lite:
        with _lite_lock:
            _lite_users[uri] = _lite_users.get(uri, 0) + 1
    return client


def disconnect(client, uri: str) -> None:
    """Close a client from :func:`connect`; the last one of a Lite file stops its embedded server, which
    releases the file for other processes."""
    client.close()
    if not is_lite(uri):
        return
    with _lite_lock:
        left = _lite_users.get(uri, 1) - 1
        if left > 0:
            _lite_users[uri] = left
            return
        _lite_users.pop(uri, None)
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(uri)


def call(what: str, fn, *args, **kwargs):
    """Run one client call; a Milvus error becomes a MilvusError naming what was being done."""
    from pymilvus.exceptions import MilvusException

    try:
        return fn(*args, **kwargs)
    except MilvusException as e:
        raise MilvusError(f"Milvus: {what} failed: {getattr(e, 'message', e)}") from None


# ---------------------------------------------------------------- filter expressions


def literal(s: str) -> str:
    """A Milvus string literal (backslash and double quote escaped), so a label cannot change the expression."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def filter_expr(next_id: int, label: str | None = None, folder: str | None = None, taken_from: str | None = None,
                taken_to: str | None = None, camera: str | None = None) -> str:
    """The expression for committed entries with ``label`` under ``folder`` (relative to the root), taken
    within [taken_from, taken_to] (inclusive ISO text), by ``camera``; empty values do not filter.

    Each clause is the SQLite store's (:meth:`index.store.MetadataStore.ids_matching`), so both backends
    agree: a folder keeps the paths in [folder + '/', folder + '0') ('0' follows '/'); dates compare as
    text; an entry with no date or camera (NULL) fails any date or camera clause."""
    parts = [f"id < {int(next_id)}"]
    if label:
        parts.append(f"label == {literal(label)}")
    f = normalise_folder(folder) if folder else ""
    if f:
        parts.append(f"path >= {literal(f + '/')} and path < {literal(f + '0')}")
    if taken_from:
        parts.append(f"taken >= {literal(taken_from)}")
    if taken_to:
        parts.append(f"taken <= {literal(taken_to)}")
    if camera:
        parts.append(f"camera == {literal(camera)}")
    return " and ".join(parts)


def filters_expr(next_id: int, filters: Filters | None) -> str:
    """:func:`filter_expr` of a :class:`index.store.Filters` (None: every committed entry)."""
    f = filters or Filters()
    return filter_expr(next_id, f.label, f.folder, f.taken_from, f.taken_to, f.camera)


# ---------------------------------------------------------------- the collection


def create_collection(client, name: str, dim: int) -> None:
    """An empty collection with this index's schema."""
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                        description="instdisc-search index: unit vectors + image metadata")
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(dim))
    for field, (kind, length, nullable) in FIELDS.items():
        extra = {"max_length": length} if kind == "VARCHAR" else {}
        schema.add_field(field, getattr(DataType, kind), nullable=nullable, **extra)
    call(f"creating collection {name}", client.create_collection, name, schema=schema, consistency_level="Strong")


REBUILD = ("rebuild it: python scripts/build_index.py --checkpoint C --out INDEX --images PATH --backend milvus "
           "--overwrite (with the same --milvus-uri / --collection)")


def check_schema(client, name: str, dim: int) -> None:
    """MilvusError unless ``name`` has exactly this index's fields, types and dimension. A collection built
    before the photo facts were stored is named as such: reading it would give rows without dates or cameras
    and date / camera filters matching nothing, so it is refused rather than served half-empty."""
    desc = call(f"describing collection {name}", client.describe_collection, name)
    have = {f["name"]: f for f in desc.get("fields", [])}
    want = {"id": "INT64", "vector": "FLOAT_VECTOR", **{k: v[0] for k, v in FIELDS.items()}}
    missing_photo = [f for f in PHOTO_FIELDS if f not in have]
    if missing_photo and all(f in have for f in ("id", "vector", *META_FIELDS)):
        raise MilvusError(f"collection {name} was built before this version stored photo facts in Milvus (no "
                          f"fields {', '.join(missing_photo)}): its schema does not match; {REBUILD}")
    problems = []
    for field, kind in want.items():
        f = have.get(field)
        if f is None:
            problems.append(f"no field {field!r}")
        elif getattr(f["type"], "name", str(f["type"])) != kind:
            problems.append(f"{field} is {getattr(f['type'], 'name', f['type'])}, not {kind}")
    vec = have.get("vector")
    if vec is not None and int((vec.get("params") or {}).get("dim", -1)) != int(dim):
        problems.append(f"vector dimension {(vec.get('params') or {}).get('dim')} != {dim}")
    if "id" in have and not have["id"].get("is_primary"):
        problems.append("id is not the primary key")
    if problems:
        raise MilvusError(f"collection {name} does not have this index's schema: {'; '.join(problems)} "
                          "(rebuild the index with --overwrite, or point --collection at another name)")


def _fits(value: str | None, limit: int) -> str | None:
    """``value`` cut to ``limit`` UTF-8 bytes (whole characters): only a damaged header holds a camera name
    longer than Milvus's VARCHAR limit, and one such file must not fail a whole build."""
    if value is None or len(value.encode("utf-8")) <= limit:
        return value
    return value.encode("utf-8")[:limit].decode("utf-8", "ignore")


def entity(row: Row, vector: np.ndarray) -> dict:
    """One collection row: the vector and every :class:`Row` field (None stored as NULL)."""
    e = {"id": int(row.id), "vector": vector.tolist(), **{f: getattr(row, f) for f in FIELDS}}
    for f in CLIPPED:
        e[f] = _fits(e[f], FIELDS[f][1])
    return e


def insert_rows(client, name: str, rows: list[Row], vectors: np.ndarray, progress=None) -> None:
    """Insert rows (with their vectors) in batches; ``progress(n)`` after each."""
    for i in range(0, len(rows), INSERT_BATCH):
        batch = [entity(r, v) for r, v in zip(rows[i : i + INSERT_BATCH], vectors[i : i + INSERT_BATCH], strict=True)]
        call(f"inserting into {name}", client.insert, name, batch)
        if progress is not None:
            progress(len(batch))


def index_params(client, index_type: str, params: dict):
    """The vector index request. The build parameters go both as pymilvus 3 sends them (flat keys) and as the
    JSON ``params`` entry of the older wire format, the only one Milvus Lite 3.2.2 reads (without it, it
    silently builds with its defaults, e.g. nlist 128)."""
    ip = client.prepare_index_params()
    extra = {"params": json.dumps(dict(params))} if params else {}
    ip.add_index("vector", index_type=index_type, metric_type=METRIC, params={**params, **extra})
    return ip


def to_row(d: dict) -> Row:
    """A collection row (query or search output with :data:`ROW_FIELDS`) as the SQLite store's :class:`Row`."""
    return Row(int(d["id"]), **{f: d.get(f) for f in FIELDS})


# ---------------------------------------------------------------- an opened index


class MilvusIndex:
    """An opened Milvus collection: the metadata reads and the filtered search :class:`SearchIndex` uses.

    Thread-safe: ``pymilvus`` clients may be shared between threads."""

    name = "milvus"  # SearchIndex.device: where searches run

    def __init__(self, uri: str, collection: str, dim: int, next_id: int, index_type: str, params: dict,
                 info: dict[str, str] | None = None, client=None) -> None:
        self.uri = uri
        self.collection = collection
        self.dim = int(dim)
        self.next_id = int(next_id)
        self.index_type = index_type
        self.params = dict(params)
        self._info = dict(info or {})
        self.client = client if client is not None else connect(uri)
        self._closed = False
        try:
            if not call("listing collections", self.client.has_collection, collection):
                raise MilvusError(f"Milvus at {uri} has no collection {collection} (dropped or renamed outside this "
                                  "tool? rebuild the index)")
            check_schema(self.client, collection, self.dim)
            call(f"loading collection {collection}", self.client.load_collection, collection)
            self._count = self.count()
            self._labels: list[str] | None = None
            self._cameras: list[str] | None = None
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> MilvusIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            disconnect(self.client, self.uri)

    # ------------------------------------------------------------ store interface

    def __len__(self) -> int:
        return self._count

    @property
    def info(self) -> dict[str, str]:
        return dict(self._info)

    def count(self, expr: str | None = None) -> int:
        res = call(f"counting {self.collection}", self.client.query, self.collection,
                   filter=expr or filter_expr(self.next_id), output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    def _scan(self, fields: list[str], expr: str | None = None) -> list[dict]:
        """Every committed row matching ``expr`` (fields asked), by the query iterator (no result-size cap)."""
        it = call("reading rows", self.client.query_iterator, self.collection, batch_size=ID_BATCH * 4,
                  filter=expr or filter_expr(self.next_id), output_fields=fields)
        out: list[dict] = []
        try:
            while True:
                batch = call("reading rows", it.next)
                if not batch:
                    break
                out.extend(batch)
        finally:
            it.close()
        return out

    def ids(self) -> np.ndarray:
        return np.sort(np.array([d["id"] for d in self._scan(["id"])], dtype=np.int64))

    def rows(self) -> list[Row]:
        return sorted((to_row(d) for d in self._scan(ROW_FIELDS)), key=lambda r: r.id)

    def labels(self) -> list[str]:
        if self._labels is None:
            self._labels = sorted({d["label"] for d in self._scan(["label"]) if d.get("label") is not None})
        return list(self._labels)

    def cameras(self) -> list[str]:
        """Distinct camera names, sorted (for the camera filter), as the SQLite store lists them."""
        if self._cameras is None:
            named = self._scan(["camera"], f"{filter_expr(self.next_id)} and camera is not null")
            self._cameras = sorted({d["camera"] for d in named})
        return list(self._cameras)

    def get(self, ids) -> dict[int, Row]:
        """Rows by id (missing or uncommitted ids are absent)."""
        ids = [int(i) for i in ids]
        out: dict[int, Row] = {}
        for i in range(0, len(ids), ID_BATCH):
            chunk = [j for j in ids[i : i + ID_BATCH] if 0 <= j < self.next_id]
            if chunk:
                for d in call("reading rows", self.client.get, self.collection, ids=chunk, output_fields=ROW_FIELDS):
                    out[int(d["id"])] = to_row(d)
        return out

    def ids_for_path(self, path: str) -> list[int]:
        """The entry with this exact relative path, or every entry under it if it is a folder."""
        exact = self._scan(["id"], f"{filter_expr(self.next_id)} and path == {literal(path)}")
        if exact:
            return [int(exact[0]["id"])]
        f = normalise_folder(path)
        return [int(d["id"]) for d in self._scan(["id"], filter_expr(self.next_id, folder=f))] if f else []

    def path_hashes(self) -> dict[str, tuple[int, str | None]]:
        return {d["path"]: (int(d["id"]), d.get("sha256")) for d in self._scan(["id", "path", "sha256"])}

    def vectors(self, ids) -> np.ndarray:
        """The stored vectors of ``ids`` in that order. Milvus keeps each row's raw vector beside any index
        (IVF_SQ8 / IVF_PQ codes included), so this is exact; KeyError for ids it lacks."""
        ids = [int(i) for i in ids]
        found: dict[int, list[float]] = {}
        for i in range(0, len(ids), ID_BATCH):
            chunk = [j for j in ids[i : i + ID_BATCH] if 0 <= j < self.next_id]
            if chunk:
                for d in call("reading vectors", self.client.get, self.collection, ids=chunk,
                              output_fields=["vector"]):
                    found[int(d["id"])] = d["vector"]
        missing = [i for i in ids if i not in found]
        if missing:
            raise KeyError(f"no entries with ids {missing[:10]}")
        return np.array([found[i] for i in ids], dtype=np.float32).reshape(len(ids), self.dim)

    # ------------------------------------------------------------ search

    def search_params(self, widen: bool = False) -> dict:
        knob = SEARCH_KNOB.get(self.index_type)
        if knob is None:
            return {"metric_type": METRIC, "params": {}}
        value = int(self.params.get(knob, 0) or 0)
        if widen:  # every inverted list / a beam of MAX_K: what a filter leaving few matches needs
            value = MAX_NPROBE if knob == "nprobe" else MAX_K
        return {"metric_type": METRIC, "params": {knob: value} if value else {}}

    def search(self, q: np.ndarray, k: int, filters: Filters | None = None) -> list[list[tuple[float, Row]]]:
        """Top-k (score, row) per query row among committed entries passing ``filters`` (label, folder,
        date-taken range, camera); the filter runs inside Milvus. Where an approximate index comes back
        short of min(k, matching entries), those queries are searched again over every list (IVF) or with
        the widest beam (HNSW)."""
        if len(q) == 0:
            return []
        if k > MAX_K:
            raise ValueError(f"k = {k}: Milvus returns at most {MAX_K} results per query")
        expr = filters_expr(self.next_id, filters)
        out = self._search(q, k, expr, self.search_params())
        if self.index_type in SEARCH_KNOB and filters:
            want = min(k, self.count(expr))
            short = [i for i, hits in enumerate(out) if len(hits) < want]
            if short:
                again = self._search(q[short], k, expr, self.search_params(widen=True))
                for i, hits in zip(short, again, strict=True):
                    out[i] = hits
        return out

    def _search(self, q: np.ndarray, k: int, expr: str, params: dict) -> list[list[tuple[float, Row]]]:
        res = call(f"searching {self.collection}", self.client.search, self.collection,
                   data=np.ascontiguousarray(q, dtype=np.float32).tolist(), limit=int(k), filter=expr,
                   search_params=params, output_fields=ROW_FIELDS[1:])
        return [[(float(h["distance"]), to_row({"id": h["id"], **h["entity"]})) for h in hits] for hits in res]


def read_info(path: Path) -> dict[str, str]:
    """The index's extra settings file (``MilvusRecord.info_file``); IndexDirError if missing or damaged."""
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IndexDirError(f"{path}: the index's settings file is missing (the folder is incomplete: rebuild it)"
                            ) from None
    except (OSError, ValueError) as e:
        raise IndexDirError(f"{path}: unreadable settings file ({e})") from e
    if not isinstance(d, dict):
        raise IndexDirError(f"{path}: unreadable settings file (not an object)")
    return {str(k): str(v) for k, v in d.items()}


def open_index(index_dir: Path, m) -> MilvusIndex:
    """The Milvus collection a manifest (``backend: milvus``) points at, checked: it exists, has this index's
    schema and dimension; its extra settings (the whitening) read from INDEX_DIR."""
    rec = m.milvus
    info = read_info(Path(index_dir) / rec.info_file) if rec.info_file else {}
    return MilvusIndex(rec.uri, rec.serving, m.dim, m.next_id, rec.index_type, m.index.params, info)
