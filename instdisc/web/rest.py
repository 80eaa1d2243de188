"""The REST API beside the page (same process, same :class:`SearchHandlers`, same batcher):

* ``POST /api/search`` -- multipart ``image`` file, or ``image_base64`` (a form field or a JSON
  body), plus optional ``k``, ``label``, ``folder`` -> the JSON of :func:`instdisc.web.api.search_json`;
* ``GET /api/images/{id}`` -- the collection image ``id`` (only files under the index root);
* ``GET /api/health`` -- index size and type, model, version;
* ``GET /api/docs`` (Swagger UI) and ``GET /api/openapi.json``.

Validation, limits and messages are the page's (:mod:`instdisc.web.queries`, :mod:`instdisc.web.limits`):
errors answer ``{"error": message}`` with 400 (bad input), 413 (over the upload limit),
404 (unknown id) or 403 (a stored path outside the image root).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from starlette.datastructures import UploadFile

from index.errors import UnsafePathError

from .api import health_json
from .handlers import SearchHandlers
from .limits import DEFAULT_K, MAX_QUERY_BYTES
from .queries import QueryError, QueryTooLarge, Upload, base64_image

PREFIX = "/api"
FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the small fields around one image
FIELDS = ("k", "label", "folder", "date_from", "date_to", "camera")

_PHOTO_FIELDS = {
    "date_from": {"type": "string", "description": "only photos taken on or after this date (YYYY, YYYY-MM, "
                                                   "YYYY-MM-DD or an ISO time; EXIF date, else the file's time)"},
    "date_to": {"type": "string", "description": "only photos taken on or before this date (inclusive: 2021-06 "
                                                 "means up to the end of June)"},
    "camera": {"type": "string", "description": "only photos from this camera (make and model: 'Apple iPhone 13')"},
}
_SEARCH_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "image": {"type": "string", "format": "binary", "description": "the query image file"},
            "image_base64": {"type": "string", "description": "or the image as base64 / a data: URL"},
            "k": {"type": "integer", "default": DEFAULT_K, "description": "results wanted (clamped to 1..100)"},
            "label": {"type": "string", "description": "only images with this label"},
            "folder": {"type": "string", "description": "only images under this folder (relative to the root)"},
            **_PHOTO_FIELDS,
        }}},
        "application/json": {"schema": {"type": "object", "required": ["image_base64"], "properties": {
            "image_base64": {"type": "string"}, "k": {"type": "integer", "default": DEFAULT_K},
            "label": {"type": "string"}, "folder": {"type": "string"}, **_PHOTO_FIELDS}}},
    },
}
_ERRORS = {code: {"description": why, "content": {"application/json": {"example": {"error": "..."}}}}
           for code, why in ((400, "bad input (not an image, no image, bad k or folder)"),
                             (413, f"over the {MAX_QUERY_BYTES // 2**20} MB upload limit"))}


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _search_args(request: Request) -> tuple[Any, dict]:
    """(image payload, {k, label, folder}) from a multipart/urlencoded form or a JSON body."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > MAX_QUERY_BYTES * 4 // 3 + FORM_OVERHEAD:
        raise QueryTooLarge(f"request of {int(length) / 2**20:.1f} MB is over the {MAX_QUERY_BYTES / 2**20:.0f} MB "
                            "upload limit.")
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("application/json"):
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise QueryError(f"the body is not valid JSON ({e})") from e
        if not isinstance(body, dict):
            raise QueryError("the JSON body must be an object with image_base64 (and optional k, label, folder)")
        fields = body
    elif ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        fields = await request.form(max_files=1, max_part_size=MAX_QUERY_BYTES * 4 // 3 + 1024)
    else:
        raise QueryError("send the image as multipart/form-data (field 'image') or JSON (field 'image_base64')")
    image, b64 = fields.get("image"), fields.get("image_base64")
    if isinstance(image, UploadFile):
        data = await image.read(MAX_QUERY_BYTES + 1)
        payload: Any = Upload(image.filename or "image", data)
    elif isinstance(b64, str) and b64:
        payload = base64_image(b64)
    elif image is not None:
        raise QueryError("'image' must be a file part; send base64 text as 'image_base64'")
    else:
        raise QueryError("No image: send a file as 'image' or base64 as 'image_base64'.")
    args = {name: fields.get(name) for name in FIELDS}
    args["k"] = DEFAULT_K if args["k"] in (None, "") else args["k"]
    return payload, args


def router(h: SearchHandlers) -> APIRouter:
    """The REST endpoints over ``h``."""
    r = APIRouter(prefix=PREFIX)

    @r.post("/search", summary="Search with one image", openapi_extra={"requestBody": _SEARCH_BODY},
            responses=_ERRORS)
    async def search(request: Request) -> JSONResponse:
        """The k images of the collection nearest to the query: ``{query, k, label, folder, took_ms, ids,
        scores, paths, labels, splits}`` (paths relative to the image root)."""
        try:
            payload, args = await _search_args(request)
            return JSONResponse(await run_in_threadpool(h.api_search, payload, **args))
        except QueryTooLarge as e:
            return error(413, str(e))
        except QueryError as e:
            return error(400, str(e))

    @r.get("/images/{id}", summary="One image of the collection", response_class=FileResponse,
           responses={404: {"description": "no such id"}, 403: {"description": "stored path outside the root"}})
    def image(id: int):
        """The file of collection image ``id``; only files under the index's image root are served."""
        try:
            path = h.index.image_path(id)
        except KeyError:
            return error(404, f"no image with id {id}")
        except UnsafePathError as e:
            return error(403, str(e).replace(str(h.root), "the image root"))
        if not path.is_file():
            return error(404, f"image {id} is missing from the collection's folder")
        return FileResponse(path)

    @r.get("/health", summary="Index size, model and version")
    def health() -> dict:
        """``{status, version, count, dim, device, index: {...}, model: {...}}``."""
        return health_json(h.index)

    return r


def rest_app(h: SearchHandlers) -> FastAPI:
    """A FastAPI app holding the REST API (the Gradio page is mounted on it by :mod:`instdisc.web.server`)."""
    app = FastAPI(title="Image search API", docs_url=f"{PREFIX}/docs", openapi_url=f"{PREFIX}/openapi.json",
                  redoc_url=None)
    app.include_router(router(h))
    return app
