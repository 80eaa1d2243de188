"""Results as the page shows them: gallery tiles (from a cache made once per index), captions and the
status line. Nothing here searches; it turns hits and timings into pictures and text.

Tiles are kept finished (resized) in an LRU cache shared by every request, so a popular image is
read, decoded and resized once, not on each search that returns it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

from PIL import Image

from index.search import Hit, SearchIndex
from instdisc.images import ImageError, load_image

from .limits import MAX_PIXELS
from .queries import SearchResult

THUMB_SIZE = 128  # gallery tile, px: small images are upscaled to it with NEAREST (crisp pixels)
LARGE_THUMB = 256  # bigger images are shrunk to fit this box (LANCZOS)
QUERY_THUMB = 224  # a collection image shown as the query ("more like this")
TILE_CACHE = 4096  # finished tiles kept per index

log = logging.getLogger(__name__)


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


def caption(hit: Hit) -> str:
    """``score · label · file name`` under a tile, then, for a photo (an EXIF date or a camera), its details:
    date taken, camera, pixel size, file size. Files without EXIF (scans, CIFAR) keep the one line."""
    parts = [f"{hit.score:.3f}"]
    if hit.label:
        parts.append(str(hit.label))
    parts.append(Path(hit.path).name)
    if not (hit.camera or hit.taken_from == "exif"):
        return " · ".join(parts)
    details = [d for d in (hit.taken.replace("T", " ")[:16] if hit.taken else None, hit.camera,
                           f"{hit.width}x{hit.height}" if hit.width and hit.height else None,
                           _size(hit.file_bytes) if hit.file_bytes else None) if d]
    return " · ".join(parts) + ("\n" + " · ".join(details) if details else "")


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.0f} kB"


def status(res: SearchResult) -> str:
    """The status line: how many results, for what, how long (embedding and search), which filter."""
    filt = []
    if res.label:
        filt.append(f"label = {res.label}")
    if res.folder:
        filt.append(f"folder = {res.folder}/")
    f = res.filters
    if f.taken_from or f.taken_to:
        filt.append(f"taken {f.taken_from or '…'} to {f.taken_to or '…'}")
    if f.camera:
        filt.append(f"camera = {f.camera}")
    ftxt = f" · filter: {', '.join(filt)}" if filt else ""
    if not res.hits:
        head = "No images match this filter." if filt else "No results."
    else:
        head = f"**{len(res.hits)}** results"
    q = f" for `{res.query}`" if res.query else ""
    parts = (f"embed {format_ms(res.embed_ms)}, search {format_ms(res.search_ms)}" if res.embed_ms
             else f"search {format_ms(res.search_ms)}, query already embedded")
    return f"{head}{q} in **{format_ms(res.total_ms)}** ({parts}){ftxt}"


class Tiles:
    """Gallery tiles of one index's images, cached (LRU, thread-safe) across requests."""

    def __init__(self, index: SearchIndex, size: int = THUMB_SIZE, capacity: int = TILE_CACHE,
                 max_pixels: int = MAX_PIXELS) -> None:
        self.index = index
        self.root = Path(index.root)
        self.size = size
        self.capacity = capacity
        self.max_pixels = max_pixels
        self._cache: OrderedDict[tuple[int, int], Image.Image] = OrderedDict()
        self._lock = threading.Lock()

    def _cached(self, key: tuple[int, int]) -> Image.Image | None:
        with self._lock:
            img = self._cache.get(key)
            if img is not None:
                self._cache.move_to_end(key)
            return img

    def _keep(self, key: tuple[int, int], img: Image.Image) -> None:
        with self._lock:
            self._cache[key] = img
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)

    def source(self, id: int) -> Image.Image:
        """Image ``id`` decoded and shrunk to at most LARGE_THUMB (cached under size 0)."""
        img = self._cached((int(id), 0))
        if img is None:
            img = load_image(self.index.image_path(int(id)), self.max_pixels)
            if max(img.size) > LARGE_THUMB:
                img.thumbnail((LARGE_THUMB, LARGE_THUMB), Image.Resampling.LANCZOS)
            self._keep((int(id), 0), img)
        return img

    def tile(self, id: int, size: int | None = None) -> tuple[Image.Image, str | None]:
        """(tile of image ``id``, None), or (a grey tile, why) when its file cannot be read -- logged,
        and the caller shows the reason with the tile."""
        size = size or self.size
        key = (int(id), size)
        img = self._cached(key)
        if img is not None:
            return img, None
        try:
            img = make_thumbnail(self.source(id), size)
        except (ImageError, OSError, ValueError, KeyError) as e:
            why = str(e).replace(str(self.root) + os.sep, "")
            log.warning("image %s cannot be shown: %s", id, why)
            return Image.new("RGB", (size, size), (200, 200, 200)), why
        self._keep(key, img)
        return img, None

    def thumbnail(self, id: int, size: int | None = None) -> Image.Image:
        """The tile of image ``id`` (grey if the file went missing, see :meth:`tile`)."""
        return self.tile(id, size)[0]

    def gallery(self, hits: list[Hit]) -> list[tuple[Image.Image, str]]:
        """(tile, caption) per hit; a hit whose file cannot be read says so in its caption."""
        out = []
        for h in hits:
            img, why = self.tile(h.id)
            out.append((img, caption(h) if why is None else f"{caption(h)} · ⚠️ cannot show: {why}"))
        return out

    def examples(self, ids: list[int]) -> list[tuple[Image.Image, str]]:
        """(tile, label or file name) per example image."""
        out = []
        for h in self.index.get(ids):
            img, why = self.tile(h.id)
            name = h.label or Path(h.path).name
            out.append((img, name if why is None else f"{name} · ⚠️ cannot show: {why}"))
        return out
