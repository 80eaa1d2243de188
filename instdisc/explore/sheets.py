"""PNG pictures of a collection: contact sheets (rows of captioned thumbnails) and the map with
thumbnails at sampled points. PIL only, so they render on a headless machine without a plotting stack."""

from __future__ import annotations

import colorsys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

TILE = 96  # contact-sheet thumbnail, px
CAPTION = 14  # caption band under a tile, px
MAP_SIDE = 1600  # map PNG width and height, px
MAP_THUMB = 48
MAP_CELLS = 16  # thumbnails on a MAP_CELLS x MAP_CELLS grid, one per occupied cell
BACKGROUND = (255, 255, 255)


def thumbnail(img: Image.Image, side: int) -> Image.Image:
    """Fit ``img`` in a ``side`` square; small images (CIFAR's 32 px) grow by a whole factor with
    NEAREST so their pixels stay crisp."""
    img = img.convert("RGB")
    big = max(img.size)
    if big <= side:
        f = side // big
        return img.resize((img.width * f, img.height * f), Image.Resampling.NEAREST)
    scale = side / big
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                      Image.Resampling.LANCZOS)


def palette(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinguishable colours (hues spread evenly, two lightness levels)."""
    out = []
    for i in range(n):
        r, g, b = colorsys.hls_to_rgb((i * 0.618034) % 1.0, 0.45 if i % 2 else 0.6, 0.75)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


@dataclass
class SheetRow:
    """One row of a contact sheet: a heading and captioned images."""

    title: str
    images: list[Image.Image]
    captions: list[str]


def contact_sheet(rows: Sequence[SheetRow], tile: int = TILE) -> Image.Image:
    """Rows of thumbnails, each row headed by its title, each tile captioned underneath."""
    cols = max([len(r.images) for r in rows] + [1])
    row_h = CAPTION + tile + CAPTION + 6
    sheet = Image.new("RGB", (cols * (tile + 4) + 4, max(1, len(rows)) * row_h + 4), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for i, r in enumerate(rows):
        y = 4 + i * row_h
        draw.text((4, y), r.title, fill=(0, 0, 0))
        for j, (img, cap) in enumerate(zip(r.images, r.captions, strict=True)):
            x = 4 + j * (tile + 4)
            th = thumbnail(img, tile)
            sheet.paste(th, (x + (tile - th.width) // 2, y + CAPTION + (tile - th.height) // 2))
            draw.text((x, y + CAPTION + tile + 1), cap[: tile // 6], fill=(60, 60, 60))
    return sheet


def map_picture(xy: np.ndarray, colour_of: np.ndarray, load: Callable[[int], Image.Image],
                side: int = MAP_SIDE, cells: int = MAP_CELLS, thumb: int = MAP_THUMB) -> tuple[Image.Image, list[int]]:
    """Points coloured by ``colour_of`` (a small int per point) and, in each occupied cell of a
    ``cells`` x ``cells`` grid, the thumbnail of the point nearest the cell centre (``load(i)`` gives
    point ``i``'s image). Returns the picture and the points shown as thumbnails."""
    pad = thumb
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    px = (pad + (xy - lo) / span * (side - 2 * pad)).astype(np.float32)
    img = Image.new("RGB", (side, side), BACKGROUND)
    draw = ImageDraw.Draw(img)
    colours = palette(int(colour_of.max()) + 1 if len(colour_of) else 1)
    step = max(1, len(px) // 100_000)  # at most ~100k dots: more only overdraw
    for (x, y), c in zip(px[::step], colour_of[::step], strict=True):
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colours[int(c)])
    cell = (px - pad) / ((side - 2 * pad) / cells)
    cid = np.clip(cell.astype(np.int64), 0, cells - 1)
    centre = (cid + 0.5)
    d2 = ((cell - centre) ** 2).sum(axis=1)
    key = cid[:, 0] * cells + cid[:, 1]
    order = np.lexsort((d2, key))
    first = order[np.r_[True, key[order][1:] != key[order][:-1]]]
    shown = []
    for i in first.tolist():
        try:
            th = thumbnail(load(i), thumb)
        except (OSError, ValueError, KeyError):
            continue
        x, y = int(px[i, 0] - th.width / 2), int(px[i, 1] - th.height / 2)
        img.paste(th, (x, y))
        draw.rectangle([x - 1, y - 1, x + th.width, y + th.height], outline=colours[int(colour_of[i])], width=2)
        shown.append(i)
    return img, shown
