"""A small image folder with planted duplicates, for the exploration tests (CLI, cache, browser)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ORIGINAL = "train/circle/0003.png"
# the planted copies of ORIGINAL: twice the resolution (the one to keep) and a JPEG re-save
BIG_COPY = "copies/circle-0003-big.png"
JPEG_COPY = "copies/circle-0003.jpg"
CLASSES = ("circle", "square")
PER_CLASS = 12


def make_planted_folder(shapes_root: Path, out: Path) -> Path:
    """``out``: 12 train images of 2 shapes from ``shapes_root`` plus two copies of ORIGINAL."""
    for c in CLASSES:
        (out / "train" / c).mkdir(parents=True, exist_ok=True)
        for i in range(PER_CLASS):
            shutil.copy(shapes_root / "train" / c / f"{i:04d}.png", out / "train" / c / f"{i:04d}.png")
    img = Image.open(out / ORIGINAL).convert("RGB")
    (out / "copies").mkdir(exist_ok=True)
    img.resize((img.width * 2, img.height * 2), Image.Resampling.NEAREST).save(out / BIG_COPY)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    (out / JPEG_COPY).write_bytes(buf.getvalue())
    return out


def build_planted_index(checkpoint: Path, shapes_root: Path, data: Path, out: Path) -> Path:
    """An index (Flat, embedded with ``checkpoint``) of :func:`make_planted_folder`'s images."""
    from index.build import BuildOptions, build

    build(checkpoint, out, images=make_planted_folder(shapes_root, data), options=BuildOptions(progress=False),
          overwrite=True)
    return out


def noise_picture(rng: np.random.Generator, size: int = 32, cells: tuple[tuple[int, float], ...] = (
        (2, 1.0), (4, 0.8), (8, 0.5), (16, 0.3)), shapes: int = 4, shape_px: tuple[int, int] = (6, 20)) -> Image.Image:
    """A distinct picture: colour noise at each (cells per side, amplitude) of ``cells``, coarse to fine, and
    ``shapes`` filled ellipses or rectangles ``shape_px`` wide and high."""
    out = np.zeros((size, size, 3))
    for n, amp in cells:
        g = rng.uniform(0, 255, (n, n, 3)).astype(np.uint8)
        out += amp * np.asarray(Image.fromarray(g).resize((size, size), Image.Resampling.BICUBIC), np.float64)
    img = Image.fromarray(np.clip(out / sum(a for _, a in cells), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(shapes):
        x0, y0 = (int(v) for v in rng.integers(-shape_px[0] - 2, size, 2))
        w, h = (int(v) for v in rng.integers(*shape_px, 2))
        shape = (draw.ellipse, draw.rectangle)[int(rng.integers(2))]
        shape([x0, y0, x0 + w, y0 + h], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return img
