"""Query decoding: whatever a request carries -> an upright RGB image, or a :class:`QueryError` whose
message can be shown to the user as is. Also the query parameters (k, filters) and the result type.

Every query, from the page, the Gradio API or the REST API, is decoded here, once, by
:func:`instdisc.images.load_image` -- the function training and index building use -- so the app
accepts and rejects exactly what they accept (EXIF rotation, 16-bit, CMYK, palette, alpha,
animation, decompression-bomb limit).
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from index.store import Filters
from instdisc.images import ImageError, load_image, to_rgb
from instdisc.photometa import parse_date_bound

from .limits import ANY, MAX_K, MAX_PIXELS, MAX_QUERY_BYTES


class QueryError(ValueError):
    """A query that cannot be searched; the message is meant for the user as is."""


class QueryTooLarge(QueryError):
    """A query over the upload limit (HTTP 413 on the REST API)."""


@dataclass(frozen=True)
class Upload:
    """Raw bytes of an uploaded file and the name it was sent under (the REST API's multipart part)."""

    name: str
    data: bytes


@dataclass
class SearchResult:
    """One search as the page and the APIs report it (times in ms; ``vector`` for re-searching)."""

    hits: list  # list[index.search.Hit]
    k: int
    label: str | None
    folder: str | None
    embed_ms: float
    search_ms: float
    total_ms: float
    query: str = ""  # what was searched, for the status line
    vector: np.ndarray | None = field(default=None, repr=False)  # (D,) query embedding
    filters: Filters = field(default_factory=Filters)  # every filter applied (label and folder too)


def none_if_any(value: Any) -> str | None:
    """A filter value, with the "(any)" entry, blanks and JSON nulls meaning no filter."""
    if value is None:
        return None
    value = str(value).strip()
    return None if value in ("", ANY, "None", "null") else value


def search_filters(label: Any = None, folder: Any = None, date_from: Any = None, date_to: Any = None,
                   camera: Any = None) -> Filters:
    """The filters of a request ("(any)" and blanks: none); dates as YYYY, YYYY-MM, YYYY-MM-DD or an ISO time,
    both ends inclusive (``date_to`` 2021-06 means up to the end of June). :class:`QueryError` for a bad date."""
    try:
        taken_from = parse_date_bound(none_if_any(date_from))
        taken_to = parse_date_bound(none_if_any(date_to), end=True)
    except ValueError as e:
        raise QueryError(str(e)) from e
    return Filters(none_if_any(label), none_if_any(folder), taken_from, taken_to, none_if_any(camera))


def clamp_k(k: Any, max_k: int = MAX_K) -> int:
    """k as the slider allows it (1..max_k); a clear error for what is not a number."""
    try:
        k = int(float(k))
    except (TypeError, ValueError, OverflowError) as e:
        raise QueryError(f"k must be a whole number between 1 and {max_k}, got {k!r}") from e
    return max(1, min(max_k, k))


def base64_image(text: str, name: str = "image") -> bytes:
    """The bytes of a base64 string or ``data:`` URL; :class:`QueryError` when it is not base64."""
    payload = text.split(",", 1)[1] if text.startswith("data:") else text
    if len(payload) > (MAX_QUERY_BYTES * 4) // 3 + 4:
        raise QueryTooLarge(f"{name}: over the {MAX_QUERY_BYTES / 2**20:.0f} MB upload limit.")
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise QueryError(f"{name}: not valid base64 ({e})") from e


def _file_size(path: str) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def decode_query(payload: Any, max_bytes: int = MAX_QUERY_BYTES, max_pixels: int = MAX_PIXELS
                 ) -> tuple[Image.Image, str]:
    """(RGB image, display name) of a query, or :class:`QueryError` with a clear message.

    Accepts Gradio's ``FileData`` dict (``path``/``url``/``orig_name``), an :class:`Upload`, a path,
    bytes, a PIL image or an array.
    """
    if payload is None or (isinstance(payload, str | dict | bytes) and not payload):
        raise QueryError("No image: upload, drop, paste or capture an image first.")
    if isinstance(payload, np.ndarray):
        try:
            payload = Image.fromarray(payload)
        except (TypeError, ValueError) as e:
            raise QueryError(f"array of shape {payload.shape} is not an image") from e
    if isinstance(payload, Image.Image):
        if payload.width * payload.height > max_pixels:
            raise QueryError(f"image: {payload.width}x{payload.height} exceeds the {max_pixels:,}-pixel limit")
        return to_rgb(ImageOps.exif_transpose(payload) or payload), "image"
    source: str | bytes
    name: str
    if isinstance(payload, Upload):
        source, name = payload.data, payload.name or "image"
        if not source:
            raise QueryError(f"{name}: empty file")
    elif isinstance(payload, dict):
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
    if size is not None and size > max_bytes:
        raise QueryTooLarge(f"{name}: {size / 2**20:.1f} MB is over the {max_bytes / 2**20:.0f} MB upload limit.")
    try:
        img = load_image(source, max_pixels)
    except ImageError as e:
        msg = str(e)
        if isinstance(source, str):
            msg = msg.replace(source, name)
        raise QueryError(msg.replace("<bytes>", name)) from e
    return img, name
