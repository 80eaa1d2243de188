"""Searching for the app, and the Gradio event handlers; testable without a browser or a server.

:class:`SearchHandlers` ties the pieces of one opened index together -- :mod:`instdisc.web.queries`
(decoding), :class:`index.batcher.QueryBatcher` (one forward pass and one FAISS search for
all the requests in flight), :mod:`instdisc.web.collection` (labels, folders, examples, info panel),
:mod:`instdisc.web.render` (tiles, captions, status line) and :mod:`instdisc.web.api` (JSON) -- and is
what the page, the Gradio API and the REST API call.

Two layers:

* ``search``, ``search_id``, ``search_vector``, ``api_search``, ``api_search_batch`` raise
  :class:`QueryError` on bad input and know nothing about Gradio events;
* ``ui_*`` methods are what the Gradio events call: they turn a :class:`QueryError` into a
  ``gr.Warning`` toast plus a status line, so a bad file never takes the server down.

Query payloads arrive *unprocessed* (the events use ``preprocess=False``): Gradio hands us
the uploaded file's ``FileData`` dict and the file is decoded here, once.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from index.batcher import Query, QueryBatcher
from index.search import SearchIndex
from index.store import Filters
from instdisc.images import ImageError, load_image

from .api import batch_json, hits_json, search_json
from .collection import CollectionFacts
from .limits import ANY, DEFAULT_K, MAX_BATCH, MAX_K, MAX_PIXELS, MAX_QUERY_BYTES
from .queries import QueryError, SearchResult, clamp_k, decode_query, search_filters
from .render import QUERY_THUMB, THUMB_SIZE, TILE_CACHE, Tiles, make_thumbnail, status

__all__ = ["ANY", "DEFAULT_K", "QueryError", "SearchHandlers", "SearchResult", "make_thumbnail"]
LATENCIES_KEPT = 10_000


class SearchHandlers:
    """Everything the UI and the APIs do with one opened index."""

    def __init__(self, index: SearchIndex, max_k: int = MAX_K, thumb_size: int = THUMB_SIZE,
                 thumb_cache: int = TILE_CACHE, max_query_bytes: int = MAX_QUERY_BYTES,
                 max_pixels: int = MAX_PIXELS, batcher: QueryBatcher | None = None):
        self.index = index
        self.max_k = max_k
        self.max_query_bytes = max_query_bytes
        self.max_pixels = max_pixels
        self.root = Path(index.root)
        self.batcher = batcher or QueryBatcher(index)
        self.tiles = Tiles(index, thumb_size, thumb_cache, max_pixels)
        self.facts = CollectionFacts(index, image_size=lambda id: self.tiles.source(id).size)
        self.latencies_ms: list[float] = []  # end-to-end handler times, for the p50 in the status line

    # ------------------------------------------------------------------ searching

    def decode_query(self, payload: Any) -> tuple[Image.Image, str]:
        """(RGB image, display name) of a query under this app's limits (:func:`instdisc.web.queries.decode_query`)."""
        return decode_query(payload, self.max_query_bytes, self.max_pixels)

    def _batched(self, images: list[Image.Image], names: list[str], k: int, filters: Filters,
                 t0: float) -> list[SearchResult]:
        """Resize here (in the request's thread), embed and search in the shared batcher."""
        pixels = self.index.prepare(images)
        try:
            answers = self.batcher.search([Query(p, k, filters.label, filters.folder, filters) for p in pixels])
        except ValueError as e:  # e.g. a folder filter with '..'
            raise QueryError(str(e)) from e
        total = (time.perf_counter() - t0) * 1e3
        return [SearchResult(a.hits, k, filters.label, filters.folder, a.embed_ms, a.search_ms, total, name, a.vector,
                             filters) for a, name in zip(answers, names, strict=True)]

    def search(self, payload: Any, k: Any = DEFAULT_K, label: Any = None, folder: Any = None, date_from: Any = None,
               date_to: Any = None, camera: Any = None) -> SearchResult:
        """Decode ``payload`` and find its ``k`` nearest images (filters optional: label, folder, the date
        taken from / to, camera)."""
        t0 = time.perf_counter()
        k = clamp_k(k, self.max_k)
        filters = search_filters(label, folder, date_from, date_to, camera)
        img, name = self.decode_query(payload)
        return self._batched([img], [name], k, filters, t0)[0]

    def search_id(self, id: int, k: Any = DEFAULT_K, label: Any = None, folder: Any = None, date_from: Any = None,
                  date_to: Any = None, camera: Any = None) -> SearchResult:
        """"More like this": search with an image of the collection itself."""
        t0 = time.perf_counter()
        k = clamp_k(k, self.max_k)
        filters = search_filters(label, folder, date_from, date_to, camera)
        try:
            path = self.index.image_path(int(id))
            img = load_image(path, self.max_pixels)
        except (ImageError, KeyError, RuntimeError) as e:  # RuntimeError: index.errors.IndexDirError
            raise QueryError(str(e).replace(str(self.root) + os.sep, "")) from e
        root = self.index.root
        rel = Path(path).relative_to(root).as_posix() if Path(path).is_relative_to(root) else Path(path).name
        return self._batched([img], [rel], k, filters, t0)[0]

    def search_vector(self, vec: np.ndarray, k: Any = DEFAULT_K, label: Any = None, folder: Any = None,
                      query: str = "", t0: float | None = None, date_from: Any = None, date_to: Any = None,
                      camera: Any = None) -> SearchResult:
        """Search an already embedded query again (k or a filter changed): no decoding, no forward pass."""
        t0 = time.perf_counter() if t0 is None else t0
        k = clamp_k(k, self.max_k)
        filters = search_filters(label, folder, date_from, date_to, camera)
        vec = np.asarray(vec, dtype=np.float32).reshape(-1)
        t1 = time.perf_counter()
        try:
            hits = self.index.search_vectors(vec[None], k, filters=filters)[0]
        except ValueError as e:  # e.g. a folder filter with '..'
            raise QueryError(str(e)) from e
        t2 = time.perf_counter()
        return SearchResult(list(hits), k, filters.label, filters.folder, 0.0, (t2 - t1) * 1e3, (t2 - t0) * 1e3,
                            query, vec, filters)

    def _record(self, res: SearchResult) -> None:
        self.latencies_ms.append(res.total_ms)
        if len(self.latencies_ms) > LATENCIES_KEPT:
            del self.latencies_ms[: LATENCIES_KEPT // 2]

    def p50_ms(self) -> float | None:
        return statistics.median(self.latencies_ms) if self.latencies_ms else None

    # ------------------------------------------------------------------ API (JSON)

    def api_search(self, image: Any, k: Any = DEFAULT_K, label: Any = None, folder: Any = None,
                   date_from: Any = None, date_to: Any = None, camera: Any = None) -> dict:
        """JSON for one query image (:func:`instdisc.web.api.search_json`)."""
        res = self.search(image, k, label, folder, date_from, date_to, camera)
        self._record(res)
        return search_json(res)

    def api_search_batch(self, images: Any, k: Any = DEFAULT_K, label: Any = None, folder: Any = None,
                         date_from: Any = None, date_to: Any = None, camera: Any = None) -> dict:
        """JSON for several images in one call (:func:`instdisc.web.api.batch_json`): per image in order
        ``{query, ids, scores, paths, labels, splits}``, or ``{query, error}`` for one that could not be
        decoded (the others are still searched, in one batch)."""
        t0 = time.perf_counter()
        images = [] if images is None else images
        if not isinstance(images, list | tuple):
            images = [images]
        if not images:
            raise QueryError("No images: send one or more image files.")
        if len(images) > MAX_BATCH:
            raise QueryError(f"{len(images)} images in one call; the limit is {MAX_BATCH}.")
        k = clamp_k(k, self.max_k)
        filters = search_filters(label, folder, date_from, date_to, camera)
        results: list[dict] = []
        good: list[tuple[int, Image.Image]] = []
        for item in images:
            try:
                img, name = self.decode_query(item)
                good.append((len(results), img))
                results.append({"query": name})
            except QueryError as e:
                name = item.get("orig_name") if isinstance(item, dict) else getattr(item, "name", None)
                results.append({"query": name or "image", "error": str(e)})
        if good:
            found = self._batched([img for _, img in good], [""] * len(good), k, filters, t0)
            for (slot, _), res in zip(good, found, strict=True):
                results[slot].update(hits_json(res.hits))
        return batch_json(k, filters, (time.perf_counter() - t0) * 1e3, results)

    # ------------------------------------------------------------------ Gradio event handlers

    def _ui_result(self, res: SearchResult):
        self._record(res)
        return self.tiles.gallery(res.hits), status(res), self.state_of(res)

    @staticmethod
    def state_of(res: SearchResult) -> dict:
        """What the page remembers between events: the query vector and the ids on show."""
        return {"vec": res.vector.tolist() if res.vector is not None else None, "ids": [h.id for h in res.hits],
                "query": res.query}

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

    @staticmethod
    def _skip(n: int):
        try:
            import gradio as gr

            return tuple(gr.skip() for _ in range(n))
        except Exception:
            return tuple(None for _ in range(n))

    def ui_search(self, payload: Any, k: Any, label: Any, folder: Any, date_from: Any = None, date_to: Any = None,
                  camera: Any = None):
        """Query image uploaded / pasted / captured -> (gallery, status, state)."""
        try:
            return self._ui_result(self.search(payload, k, label, folder, date_from, date_to, camera))
        except QueryError as e:
            return self._ui_fail(str(e), None)

    def ui_refresh(self, state: Any, k: Any, label: Any, folder: Any, date_from: Any = None, date_to: Any = None,
                   camera: Any = None):
        """k or a filter changed: search the remembered query vector again (no re-embedding)."""
        if not state or state.get("vec") is None:
            return self._skip(3)
        try:
            res = self.search_vector(np.asarray(state["vec"], dtype=np.float32), k, label, folder,
                                     query=state.get("query", ""), date_from=date_from, date_to=date_to,
                                     camera=camera)
            return self._ui_result(res)
        except QueryError as e:
            return self._ui_fail(str(e), state)

    def _more_like(self, id: int, k: Any, label: Any, folder: Any, *filters: Any):
        try:
            res = self.search_id(id, k, label, folder, *filters)
        except QueryError as e:
            return (self._skip(1)[0], *self._ui_fail(str(e), None))
        return (self.tiles.thumbnail(id, QUERY_THUMB), *self._ui_result(res))

    def ui_select_result(self, index: int | None, state: Any, k: Any, label: Any, folder: Any, *filters: Any):
        """A gallery result was clicked: it becomes the query ("more like this"); ``filters``: date from, to, camera."""
        ids = (state or {}).get("ids") or []
        if index is None or not (0 <= int(index) < len(ids)):
            return self._skip(4)
        return self._more_like(ids[int(index)], k, label, folder, *filters)

    def ui_select_example(self, index: int | None, k: Any, label: Any, folder: Any, *filters: Any):
        ids = self.facts.example_ids()
        if index is None or not (0 <= int(index) < len(ids)):
            return self._skip(4)
        return self._more_like(ids[int(index)], k, label, folder, *filters)

    def ui_clear(self):
        return [], "Upload, drop, paste or capture an image — or pick an example — to search.", None
