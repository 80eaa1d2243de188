"""Handler logic of the search app, testable without a browser or a running server.

:class:`SearchHandlers` wraps an opened :class:`index.search.SearchIndex` and does everything
between a Gradio event and the index: decoding a query (an upload, a clipboard paste, a
webcam frame, an API file or a result picked for "more like this"), searching with the
optional label / folder filter, timing, making thumbnails and captions for the gallery, the
info panel text and the JSON the API endpoints return.

Two layers:

* plain methods (``decode_query``, ``search``, ``gallery_items``, ``caption``, ``status``,
  ``info_markdown``, ``api_search``, ``api_search_batch``) raise :class:`QueryError` on bad
  input and know nothing about Gradio events;
* ``ui_*`` methods are what the Gradio events call: they turn a :class:`QueryError` into a
  ``gr.Warning`` toast plus a status line, so a bad file never takes the server down.

Query payloads arrive *unprocessed* (the events use ``preprocess=False``): Gradio hands us
the uploaded file's ``FileData`` dict and the file is decoded here, once, by
:func:`instdisc.images.load_image`, so the app accepts and rejects exactly what training and
index building accept (EXIF rotation, 16-bit, CMYK, palette, alpha, animation, bomb limit).
"""

from __future__ import annotations

import base64
import logging
import os
import statistics
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from instdisc.images import MAX_PIXELS, ImageError, load_image, to_rgb

ANY = "(any)"  # dropdown entry meaning "no filter"
MAX_K = 100
DEFAULT_K = 20
MAX_QUERY_BYTES = 10 * 1024 * 1024  # also enforced by Gradio's upload route (launch(max_file_size=...))
MAX_BATCH = 64
THUMB_SIZE = 128  # gallery tile, px: small images are upscaled to it with NEAREST (crisp pixels)
LARGE_THUMB = 256  # bigger images are shrunk to fit this box (LANCZOS)
QUERY_THUMB = 224  # a collection image shown as the query ("more like this")
SMALL_IMAGE = 64  # a collection whose images are at most this big is shown pixelated


log = logging.getLogger(__name__)


class QueryError(ValueError):
    """A query that cannot be searched; the message is meant for the user as is."""


@dataclass
class SearchResult:
    hits: list  # list[index.search.Hit]
    k: int
    label: str | None
    folder: str | None
    embed_ms: float
    search_ms: float
    total_ms: float
    query: str = ""  # what was searched, for the status line
    vector: np.ndarray | None = field(default=None, repr=False)  # (D,) query embedding


def _none_if_any(value: Any) -> str | None:
    if value is None:
        return None
    value = str(value).strip()
    return None if value in ("", ANY, "None", "null") else value


def _clamp_k(k: Any, max_k: int = MAX_K) -> int:
    try:
        k = int(float(k))
    except (TypeError, ValueError) as e:
        raise QueryError(f"k must be a whole number between 1 and {max_k}, got {k!r}") from e
    return max(1, min(max_k, k))


def make_thumbnail(img: Image.Image, size: int = THUMB_SIZE, large: int = LARGE_THUMB) -> Image.Image:
    """A gallery tile: small images upscaled by a whole factor with NEAREST, big ones shrunk."""
    w, h = img.size
    side = max(w, h)
    if side <= size:
        f = max(1, size // side)
        return img.resize((w * f, h * f), Image.Resampling.NEAREST) if f > 1 else img
    if side > large:
        img = img.copy()
        img.thumbnail((large, large), Image.Resampling.LANCZOS)
    return img


def format_ms(ms: float) -> str:
    return f"{ms:.0f} ms" if ms >= 10 else f"{ms:.1f} ms"


class SearchHandlers:
    """Everything the UI and the API do with one opened index."""

    def __init__(self, index, max_k: int = MAX_K, thumb_size: int = THUMB_SIZE, thumb_cache: int = 4096,
                 max_query_bytes: int = MAX_QUERY_BYTES, max_pixels: int = MAX_PIXELS):
        self.index = index
        self.max_k = max_k
        self.thumb_size = thumb_size
        self.max_query_bytes = max_query_bytes
        self.max_pixels = max_pixels
        self.root = Path(index.root)
        self._thumbs: OrderedDict[int, Image.Image] = OrderedDict()
        self._thumb_cap = thumb_cache
        self._lock = threading.Lock()
        self._label_list: list[str] | None = None
        self._folder_list: list[str] | None = None
        self._example_ids: list[int] | None = None
        self._small: bool | None = None
        self.latencies_ms: list[float] = []  # end-to-end handler times, for the p50 in the status line
        self.problems: list[str] = []  # what went wrong reading the collection, shown in the info panel

    def report_problem(self, what: str, error: BaseException) -> None:
        """Log a failure behind a fallback and keep it for the info panel, so a broken index never looks
        like an empty one."""
        log.warning("%s: %s: %s", what, type(error).__name__, error, exc_info=error)
        msg = f"{what} ({type(error).__name__}: {error})"
        if msg not in self.problems:
            self.problems.append(msg)

    # ------------------------------------------------------------------ collection facts

    def labels(self) -> list[str]:
        if self._label_list is None:
            try:
                self._label_list = sorted(str(x) for x in (self.index.labels() or []))
            except Exception as e:  # a broken metadata database: say so instead of showing an empty filter
                self.report_problem("the label list could not be read", e)
                self._label_list = []
        return self._label_list

    def all_paths(self, limit: int = 250_000) -> list[str] | None:
        """Every stored relative path, for the folder filter (None when there are too many to list)."""
        if len(self.index) > limit:
            return None
        return self.index.paths()

    def folders(self, max_depth: int = 2, max_choices: int = 300) -> list[str]:
        """Folder prefixes (up to ``max_depth`` levels) that hold images, for the folder filter."""
        if self._folder_list is None:
            found: set[str] = set()
            try:
                for p in self.all_paths() or []:
                    parts = p.split("/")[:-1]
                    for d in range(1, min(max_depth, len(parts)) + 1):
                        found.add("/".join(parts[:d]))
                    if len(found) > max_choices:
                        break
            except Exception as e:  # the filter still accepts typed-in folders
                self.report_problem("the folder list could not be read", e)
                found = set()
            self._folder_list = sorted(found)[:max_choices]
        return self._folder_list

    def label_choices(self) -> list[str]:
        return [ANY, *self.labels()]

    def folder_choices(self) -> list[str]:
        return [ANY, *self.folders()]

    def example_ids(self, max_examples: int = 12, seed: int = 0) -> list[int]:
        """Example queries from the collection itself: one per label (the first ``max_examples``
        labels), or a spread of images when unlabelled. Found through the public search API: the
        nearest image to a fixed random direction, within each label."""
        if self._example_ids is None:
            ids: list[int] = []
            n = len(self.index)
            if n:
                dim = int(getattr(self.index, "dim", 0) or self.index.embed_images([Image.new("RGB", (8, 8))]).shape[1])
                rng = np.random.default_rng(seed)
                labels = self.labels()[:max_examples]
                try:
                    if labels:
                        q = rng.standard_normal((1, dim)).astype(np.float32)
                        for lab in labels:
                            hits = self.index.search_vectors(q, 1, label=lab)[0]
                            ids.extend(h.id for h in hits[:1])
                    else:
                        q = rng.standard_normal((max_examples, dim)).astype(np.float32)
                        for hits in self.index.search_vectors(q, 1):
                            ids.extend(h.id for h in hits[:1] if h.id not in ids)
                except Exception as e:
                    self.report_problem("no examples: searching the index for them failed", e)
                    ids = []
            self._example_ids = ids
        return self._example_ids

    def small_images(self) -> bool:
        """True when the collection's images are tiny (CIFAR): shown pixelated, many per row."""
        if self._small is None:
            sides = []
            try:
                for h in self.index.get(self.example_ids()):
                    if h.width and h.height:
                        sides.append(max(h.width, h.height))
                    else:
                        sides.append(max(self._source_thumb(h.id).size))
            except Exception as e:
                self.report_problem("the size of the collection's images could not be read", e)
            self._small = bool(sides) and statistics.median(sides) <= SMALL_IMAGE
        return self._small

    # ------------------------------------------------------------------ info panel

    def info_markdown(self) -> str:
        """Model (architecture, epochs, recorded kNN accuracy) and index (type, size, device)."""
        m = self.index.manifest
        arch = m.architecture
        details = f" (width {arch.width}, {arch.low_dim}-d features, {arch.image_size}px input)" if arch else ""
        model = f"**{arch.arch if arch else '?'}**{details} · trained {m.checkpoint.epoch} epochs"
        model += (f" · recorded kNN top-1 {m.knn_top1 * 100:.1f}%" if m.knn_top1 is not None
                  else " · kNN accuracy not recorded")
        info = m.index
        extra = []
        if info.factory != "Flat":
            extra.append(f"`{info.factory}`")
        if info.params:
            extra.append(", ".join(f"{k}={v}" for k, v in info.params.items()))
        if info.type != "flat":
            extra.append(f"recall@{info.recall_k} {info.recall_at_10:.3f}")
        itxt = info.type + (f" ({'; '.join(extra)})" if extra else "")
        device_txt = {"faiss-gpu": "GPU (FAISS)", "torch-cuda": "GPU (torch)", "cpu": "CPU"}.get(self.index.device,
                                                                                               self.index.device)
        labels = self.labels()
        lab_txt = f"{len(labels)} labels" if labels else "no labels"
        ckpt = Path(m.checkpoint.path)
        return (
            f"**Model** — {model} · checkpoint `{ckpt.parent.name}/{ckpt.name}`<br>"
            f"**Index** — {itxt}, {m.count:,} images, {lab_txt}, search on {device_txt}<br>"
            f"images under `{self.root}`"
            + "".join(f"<br>⚠️ **Problem:** {p}" for p in self.problems)
        )

    # ------------------------------------------------------------------ query decoding

    def decode_query(self, payload: Any) -> tuple[Image.Image, str]:
        """(RGB image, display name) of a query, or :class:`QueryError` with a clear message.

        Accepts Gradio's ``FileData`` dict (``path``/``url``/``orig_name``), a path, bytes,
        a PIL image or an array.
        """
        if payload is None or (isinstance(payload, str | dict | bytes) and not payload):
            raise QueryError("No image: upload, drop, paste or capture an image first.")
        if isinstance(payload, np.ndarray):
            try:
                payload = Image.fromarray(payload)
            except (TypeError, ValueError) as e:
                raise QueryError(f"array of shape {payload.shape} is not an image") from e
        if isinstance(payload, Image.Image):
            if payload.width * payload.height > self.max_pixels:
                raise QueryError(f"image: {payload.width}x{payload.height} exceeds the {self.max_pixels:,}-pixel limit")
            return to_rgb(ImageOps.exif_transpose(payload) or payload), "image"
        source: str | bytes
        name: str
        if isinstance(payload, dict):
            path, url = payload.get("path"), payload.get("url")
            name = str(payload.get("orig_name") or (Path(path).name if path else "image"))
            if path:
                source = str(path)
            elif isinstance(url, str) and url.startswith("data:"):
                try:
                    source = base64.b64decode(url.split(",", 1)[1], validate=False)
                except (IndexError, ValueError) as e:
                    raise QueryError(f"{name}: unreadable data URL") from e
            else:
                raise QueryError("No image file arrived with the request.")
        elif isinstance(payload, bytes | bytearray):
            source, name = bytes(payload), "image"
        elif isinstance(payload, str | os.PathLike):
            source, name = str(payload), Path(payload).name
        else:
            raise QueryError(f"Unsupported query of type {type(payload).__name__}.")
        size = len(source) if isinstance(source, bytes) else _file_size(source)
        if size is not None and size > self.max_query_bytes:
            raise QueryError(f"{name}: {size / 2**20:.1f} MB is over the {self.max_query_bytes / 2**20:.0f} MB "
                             "upload limit.")
        try:
            img = load_image(source, self.max_pixels)
        except ImageError as e:
            msg = str(e)
            if isinstance(source, str):
                msg = msg.replace(source, name)
            msg = msg.replace("<bytes>", name)
            raise QueryError(msg) from e
        return img, name

    # ------------------------------------------------------------------ searching

    def search_vector(self, vec: np.ndarray, k: Any = DEFAULT_K, label: Any = None, folder: Any = None,
                      query: str = "", embed_ms: float = 0.0, t0: float | None = None) -> SearchResult:
        t0 = time.perf_counter() if t0 is None else t0
        k = _clamp_k(k, self.max_k)
        label, folder = _none_if_any(label), _none_if_any(folder)
        t1 = time.perf_counter()
        try:
            hits = self.index.search_vectors(np.asarray(vec, dtype=np.float32).reshape(1, -1), k,
                                             label=label, folder=folder)[0]
        except ValueError as e:  # e.g. a folder filter with '..'
            raise QueryError(str(e)) from e
        t2 = time.perf_counter()
        return SearchResult(list(hits), k, label, folder, embed_ms, (t2 - t1) * 1e3, (t2 - t0) * 1e3, query,
                            np.asarray(vec, dtype=np.float32).reshape(-1))

    def search(self, payload: Any, k: Any = DEFAULT_K, label: Any = None, folder: Any = None) -> SearchResult:
        """Decode ``payload`` and find its ``k`` nearest images (label / folder filter optional)."""
        t0 = time.perf_counter()
        k = _clamp_k(k, self.max_k)
        img, name = self.decode_query(payload)
        t1 = time.perf_counter()
        vec = self.index.embed_images([img])[0]
        t2 = time.perf_counter()
        return self.search_vector(vec, k, label, folder, query=name, embed_ms=(t2 - t1) * 1e3, t0=t0)

    def search_id(self, id: int, k: Any = DEFAULT_K, label: Any = None, folder: Any = None) -> SearchResult:
        """"More like this": search with an image of the collection itself."""
        t0 = time.perf_counter()
        try:
            path = self.index.image_path(int(id))
            img = load_image(path, self.max_pixels)
        except (ImageError, KeyError, RuntimeError) as e:  # RuntimeError: index.errors.IndexDirError
            raise QueryError(str(e).replace(str(self.root) + os.sep, "")) from e
        t1 = time.perf_counter()
        vec = self.index.embed_images([img])[0]
        t2 = time.perf_counter()
        rel = Path(path).relative_to(self.root).as_posix() if Path(path).is_relative_to(self.root) else Path(path).name
        return self.search_vector(vec, k, label, folder, query=rel, embed_ms=(t2 - t1) * 1e3, t0=t0)

    # ------------------------------------------------------------------ presentation

    def _source_thumb(self, id: int) -> Image.Image:
        with self._lock:
            img = self._thumbs.get(id)
            if img is not None:
                self._thumbs.move_to_end(id)
                return img
        img = load_image(self.index.image_path(int(id)), self.max_pixels)
        if max(img.size) > LARGE_THUMB:
            img.thumbnail((LARGE_THUMB, LARGE_THUMB), Image.Resampling.LANCZOS)
        with self._lock:
            self._thumbs[id] = img
            while len(self._thumbs) > self._thumb_cap:
                self._thumbs.popitem(last=False)
        return img

    def tile(self, id: int, size: int | None = None) -> tuple[Image.Image, str | None]:
        """(gallery tile of collection image ``id``, None), or (a grey tile, why) when its file cannot be
        read -- logged, and the caller shows the reason with the tile."""
        size = size or self.thumb_size
        try:
            return make_thumbnail(self._source_thumb(id), size), None
        except (ImageError, OSError, ValueError, KeyError) as e:
            why = str(e).replace(str(self.root) + os.sep, "")
            log.warning("image %s cannot be shown: %s", id, why)
            return Image.new("RGB", (size, size), (200, 200, 200)), why

    def thumbnail(self, id: int, size: int | None = None) -> Image.Image:
        """The gallery tile of collection image ``id`` (grey tile if the file went missing, see :meth:`tile`)."""
        return self.tile(id, size)[0]

    @staticmethod
    def caption(hit) -> str:
        parts = [f"{hit.score:.3f}"]
        if hit.label:
            parts.append(str(hit.label))
        parts.append(Path(hit.path).name)
        return " · ".join(parts)

    def gallery_items(self, hits) -> list[tuple[Image.Image, str]]:
        """(tile, caption) per hit; a hit whose file cannot be read says so in its caption."""
        out = []
        for h in hits:
            img, why = self.tile(h.id)
            out.append((img, self.caption(h) if why is None else f"{self.caption(h)} · ⚠️ cannot show: {why}"))
        return out

    def status(self, res: SearchResult) -> str:
        filt = []
        if res.label:
            filt.append(f"label = {res.label}")
        if res.folder:
            filt.append(f"folder = {res.folder}/")
        ftxt = f" · filter: {', '.join(filt)}" if filt else ""
        if not res.hits:
            head = "No images match this filter." if filt else "No results."
        else:
            head = f"**{len(res.hits)}** results"
        q = f" for `{res.query}`" if res.query else ""
        parts = (f"embed {format_ms(res.embed_ms)}, search {format_ms(res.search_ms)}" if res.embed_ms
                 else f"search {format_ms(res.search_ms)}, query already embedded")
        return f"{head}{q} in **{format_ms(res.total_ms)}** ({parts}){ftxt}"

    @staticmethod
    def state_of(res: SearchResult) -> dict:
        """What the page remembers between events: the query vector and the ids on show."""
        return {"vec": res.vector.tolist() if res.vector is not None else None, "ids": [h.id for h in res.hits],
                "query": res.query}

    def _record(self, res: SearchResult) -> None:
        self.latencies_ms.append(res.total_ms)
        if len(self.latencies_ms) > 10_000:
            del self.latencies_ms[:5_000]

    # ------------------------------------------------------------------ API (JSON)

    @staticmethod
    def hits_json(hits) -> dict:
        """Column lists ``ids, scores, paths, labels, splits`` (paths relative to the image root).

        Columns rather than a list of hit dicts on purpose: gradio_client treats any dict with a
        ``"path"`` key in an answer as a file to download, and would fail on every hit.
        """
        return {"ids": [int(h.id) for h in hits], "scores": [round(float(h.score), 6) for h in hits],
                "paths": [h.path for h in hits], "labels": [h.label for h in hits],
                "splits": [h.split for h in hits]}

    def api_search(self, image: Any, k: Any = DEFAULT_K, label: Any = None, folder: Any = None) -> dict:
        """JSON for one query image: ``{query, k, label, folder, took_ms, ids, scores, paths, labels, splits}``."""
        res = self.search(image, k, label, folder)
        self._record(res)
        return {"query": res.query, "k": res.k, "label": res.label, "folder": res.folder,
                "took_ms": round(res.total_ms, 2), **self.hits_json(res.hits)}

    def api_search_batch(self, images: Any, k: Any = DEFAULT_K, label: Any = None, folder: Any = None) -> dict:
        """JSON for several images in one call: ``{k, label, folder, took_ms, results: [...]}``, one entry
        per image in order, ``{query, ids, scores, paths, labels, splits}`` or ``{query, error}`` for an
        image that could not be decoded (the others are still searched, in one embedding batch)."""
        t0 = time.perf_counter()
        if images is None:
            images = []
        if not isinstance(images, list | tuple):
            images = [images]
        if not images:
            raise QueryError("No images: send one or more image files.")
        if len(images) > MAX_BATCH:
            raise QueryError(f"{len(images)} images in one call; the limit is {MAX_BATCH}.")
        k = _clamp_k(k, self.max_k)
        label, folder = _none_if_any(label), _none_if_any(folder)
        results: list[dict] = []
        good: list[tuple[int, Image.Image]] = []
        for item in images:
            try:
                img, name = self.decode_query(item)
                good.append((len(results), img))
                results.append({"query": name})
            except QueryError as e:
                name = item.get("orig_name") if isinstance(item, dict) else None
                results.append({"query": name or "image", "error": str(e)})
        if good:
            vecs = self.index.embed_images([img for _, img in good])
            hits = self.index.search_vectors(np.asarray(vecs, dtype=np.float32), k, label=label, folder=folder)
            for (slot, _), hs in zip(good, hits, strict=True):
                results[slot].update(self.hits_json(hs))
        took = (time.perf_counter() - t0) * 1e3
        return {"k": k, "label": label, "folder": folder, "took_ms": round(took, 2), "results": results}

    # ------------------------------------------------------------------ Gradio event handlers

    def _ui_result(self, res: SearchResult):
        self._record(res)
        return self.gallery_items(res.hits), self.status(res), self.state_of(res)

    @staticmethod
    def _warn(msg: str) -> None:
        try:
            import gradio as gr

            gr.Warning(msg, duration=8)
        except Exception:  # outside a Gradio request: the status line carries it
            pass

    def _ui_fail(self, msg: str, state: Any = None):
        self._warn(msg)
        return [], f"⚠️ **Could not search:** {msg}", state

    def ui_search(self, payload: Any, k: Any, label: Any, folder: Any):
        """Query image uploaded / pasted / captured -> (gallery, status, state)."""
        try:
            return self._ui_result(self.search(payload, k, label, folder))
        except QueryError as e:
            return self._ui_fail(str(e), None)

    def ui_refresh(self, state: Any, k: Any, label: Any, folder: Any):
        """k or a filter changed: search the remembered query vector again (no re-embedding)."""
        if not state or state.get("vec") is None:
            return self._skip(3)
        try:
            t0 = time.perf_counter()
            res = self.search_vector(np.asarray(state["vec"], dtype=np.float32), k, label, folder,
                                     query=state.get("query", ""), t0=t0)
            return self._ui_result(res)
        except QueryError as e:
            return self._ui_fail(str(e), state)

    def _more_like(self, id: int, k: Any, label: Any, folder: Any):
        try:
            res = self.search_id(id, k, label, folder)
        except QueryError as e:
            return (self._skip(1)[0], *self._ui_fail(str(e), None))
        return (self.thumbnail(id, QUERY_THUMB), *self._ui_result(res))

    def ui_select_result(self, index: int | None, state: Any, k: Any, label: Any, folder: Any):
        """A gallery result was clicked: it becomes the query ("more like this")."""
        ids = (state or {}).get("ids") or []
        if index is None or not (0 <= int(index) < len(ids)):
            return self._skip(4)
        return self._more_like(ids[int(index)], k, label, folder)

    def ui_select_example(self, index: int | None, k: Any, label: Any, folder: Any):
        ids = self.example_ids()
        if index is None or not (0 <= int(index) < len(ids)):
            return self._skip(4)
        return self._more_like(ids[int(index)], k, label, folder)

    def ui_clear(self):
        return [], "Upload, drop, paste or capture an image — or pick an example — to search.", None

    def example_items(self) -> list[tuple[Image.Image, str]]:
        out = []
        for h in self.index.get(self.example_ids()):
            img, why = self.tile(h.id)
            name = h.label or Path(h.path).name
            out.append((img, name if why is None else f"{name} · ⚠️ cannot show: {why}"))
        return out

    @staticmethod
    def _skip(n: int):
        try:
            import gradio as gr

            return tuple(gr.skip() for _ in range(n))
        except Exception:
            return tuple(None for _ in range(n))

    def p50_ms(self) -> float | None:
        return statistics.median(self.latencies_ms) if self.latencies_ms else None


def _file_size(path: str) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None
