"""A small image folder with planted duplicates, for the exploration tests (CLI, cache, browser)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

from PIL import Image

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
