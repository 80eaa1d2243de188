"""Shared fixtures: a tiny synthetic labelled image collection and a checkpoint trained on it.

The images are shapes (class) drawn in random colours at random places on noisy
backgrounds, so colour -- what a random network picks up first -- says nothing about the
class, and instance discrimination with colour jitter has something real to learn.
"""

from __future__ import annotations

import os
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Several workers share the cores: one thread each (torch, FAISS and every child process inherit
    # it), so the workers run side by side instead of spinning against each other's threads.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross")


def draw_shape(shape: str, rng: np.random.Generator, size: int = 32) -> Image.Image:
    bg = rng.integers(0, 256, 3)
    noise = rng.normal(0, 18, (size, size, 3))
    arr = np.clip(bg + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    d = ImageDraw.Draw(img)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    r = int(rng.integers(7, 12))
    cx, cy = (int(v) for v in rng.integers(r + 1, size - r - 1, 2))
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    else:
        w = max(2, r // 3)
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=colour)
        d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=colour)
    return img


def make_shapes_dataset(root: Path, per_class_train: int = 60, per_class_test: int = 25, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class_train), ("test", per_class_test)):
        for shape in SHAPES:
            d = root / split / shape
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                draw_shape(shape, rng).save(d / f"{i:04d}.png")
    return root


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["INSTDISC_CACHE"] = str(tmp_path_factory.mktemp("instdisc-cache"))


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A split collection: train/<shape>/*.png (240 images) and test/<shape>/*.png (100)."""
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="session")
def tiny_run(shapes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with checkpoint.pt trained for a few seconds on ``shapes_root``."""
    from instdisc.config import preset
    from instdisc.data import load_splits
    from instdisc.train import Trainer

    cfg = preset("tiny", epochs=2, batch_size=32, precision="fp32")
    train, ev = load_splits(shapes_root, cfg.image_size, progress=False)
    out = tmp_path_factory.mktemp("tiny-run")
    Trainer(cfg, train, ev, out, device="cpu", progress=False).fit()
    return out


@pytest.fixture(scope="session")
def shapes_index(tiny_run: Path, shapes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An index of every shapes image (train and test), embedded with the tiny checkpoint."""
    from index.build import BuildOptions, build

    out = tmp_path_factory.mktemp("shapes-index")
    build(tiny_run / "checkpoint.pt", out, images=shapes_root, options=BuildOptions(progress=False),
          overwrite=True)
    return out
