"""Synthetic near-duplicates: the edits people make to a picture before it is saved again.

Milder than :func:`instdisc.evaluation.near_duplicates.strong_augment` (which tests retrieval under
heavy edits): a duplicate finder should group the copies a collection really accumulates —
a re-crop, a colour touch-up, a re-compressed JPEG, a downscaled version — and nothing more.
The same edits calibrate the ``auto`` threshold and plant copies in the evaluation.
"""

from __future__ import annotations

import io
import math
import random

from PIL import Image, ImageEnhance

from .errors import ExploreError

KINDS = ("crop", "colour", "jpeg", "resize")


def _crop(img: Image.Image, rng: random.Random) -> Image.Image:
    """Keep 80-95 % of the area (aspect kept), resized back to the original size."""
    w, h = img.size
    f = math.sqrt(rng.uniform(0.8, 0.95))
    cw, ch = max(1, round(w * f)), max(1, round(h * f))
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return img.crop((left, top, left + cw, top + ch)).resize((w, h), Image.Resampling.BICUBIC)


def _colour(img: Image.Image, rng: random.Random) -> Image.Image:
    """Brightness, contrast and saturation each changed by up to 15 %."""
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhancer(img).enhance(rng.uniform(0.85, 1.15))
    return img


def _jpeg(img: Image.Image, rng: random.Random) -> Image.Image:
    """Re-saved as JPEG at quality 40-70."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=rng.randint(40, 70))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _resize(img: Image.Image, rng: random.Random) -> Image.Image:
    """Downscaled to 50-80 % of its side (a thumbnail or a smaller export)."""
    w, h = img.size
    f = rng.uniform(0.5, 0.8)
    return img.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BICUBIC)


EDITS = {"crop": _crop, "colour": _colour, "jpeg": _jpeg, "resize": _resize}


def edit(img: Image.Image, kind: str, rng: random.Random) -> Image.Image:
    """``img`` (RGB) with one edit of ``kind`` (one of :data:`KINDS`)."""
    if kind not in EDITS:
        raise ExploreError(f"unknown edit {kind!r}; choose from {KINDS}")
    return EDITS[kind](img.convert("RGB"), rng)


def describe() -> dict[str, str]:
    """Each edit's parameters, for reports."""
    return {k: (f.__doc__ or "").strip() for k, f in EDITS.items()}
