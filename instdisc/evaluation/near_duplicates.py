"""Instance-level retrieval: strongly edited copies of sampled gallery images as queries, how often the
original comes back first and within the top 10 (exactly, and through the index's configured search)."""

from __future__ import annotations

import io
import math
import random

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter
from tqdm import tqdm

from index.search import SearchIndex
from instdisc.images import ImageError, fit_square, load_image, nchw

from .baselines import Method
from .metrics import rank_of_targets
from .options import EvalOptions


def strong_augment(img: Image.Image, rng: random.Random) -> tuple[Image.Image, dict]:
    """A strongly edited copy: random crop (30-70 % of the area, resized back), brightness /
    contrast / saturation / hue change, Gaussian blur, JPEG re-compression at quality 10-30."""
    w, h = img.size
    area = rng.uniform(0.3, 0.7) * w * h
    ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    cw = max(1, min(w, round(math.sqrt(area * ratio))))
    ch = max(1, min(h, round(math.sqrt(area / ratio))))
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    out = img.crop((left, top, left + cw, top + ch)).resize((w, h), Image.Resampling.BICUBIC)
    b, c, s = rng.uniform(0.6, 1.4), rng.uniform(0.6, 1.4), rng.uniform(0.5, 1.5)
    out = ImageEnhance.Brightness(out).enhance(b)
    out = ImageEnhance.Contrast(out).enhance(c)
    out = ImageEnhance.Color(out).enhance(s)
    hue = rng.uniform(-0.08, 0.08)
    hsv = np.asarray(out.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + round(hue * 255)) % 256
    out = Image.fromarray(hsv, "HSV").convert("RGB")
    radius = rng.uniform(0.4, 1.0) * min(w, h) / 32
    out = out.filter(ImageFilter.GaussianBlur(radius))
    quality = rng.randint(10, 30)
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=quality)
    out = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    params = {"crop": [left, top, cw, ch], "brightness": b, "contrast": c, "saturation": s, "hue": hue,
              "blur_radius": radius, "jpeg_quality": quality}
    return out, params


def near_duplicates(idx: SearchIndex, methods: dict[str, Method], ids: np.ndarray, o: EvalOptions,
                    device: torch.device) -> dict:
    """Query every method with edited copies of ``o.near_dup_samples`` seeded gallery rows (``ids`` order)."""
    n = len(ids)
    rng = np.random.default_rng(o.seed + 1)
    sample = np.sort(rng.choice(n, min(o.near_dup_samples, n), replace=False))
    imgs, rows_ok, unreadable, params = [], [], 0, []
    for row in tqdm(sample.tolist(), desc="near-dup queries", disable=not o.progress, leave=False):
        try:
            original = load_image(idx.image_path(int(ids[row])))
        except (ImageError, OSError, ValueError, KeyError):
            unreadable += 1
            continue
        edited, p = strong_augment(original, random.Random(o.seed * 1_000_003 + row))
        imgs.append(fit_square(edited, idx.image_size))
        rows_ok.append(row)
        params.append(p)
    res: dict = {"samples": len(rows_ok), "unreadable": unreadable,
                 "augmentation": "crop 30-70% area (ratio 3/4-4/3) resized back; brightness, contrast 0.6-1.4; "
                                 "saturation 0.5-1.5; hue +-0.08; Gaussian blur 0.4-1.0 px per 32 px; "
                                 "JPEG quality 10-30 (PIL)",
                 "methods": {}}
    if not rows_ok:
        res["note"] = "no gallery image could be read"
        return res
    x = nchw(np.stack(imgs))
    targets = torch.tensor(rows_ok, dtype=torch.long)
    for name, meth in methods.items():
        qv = torch.from_numpy(np.asarray(meth.featurise(x, f"near-dup {name}")))
        r = rank_of_targets(qv, meth.gallery.to(device), targets).numpy()
        res["methods"][name] = {"top1": float((r == 0).mean()), "top10": float((r < 10).mean()),
                                "median_rank": float(np.median(r) + 1),
                                "mean_reciprocal_rank": float((1 / (r + 1)).mean())}
        if name == "ours":  # the same through the index's configured search
            hits = idx.search_vectors(qv.numpy(), 10)
            want = ids[rows_ok]
            res["methods"][name]["index_top1"] = float(np.mean([bool(h) and h[0].id == t for h, t in zip(hits, want,
                                                                                                      strict=True)]))
            res["methods"][name]["index_top10"] = float(np.mean([t in {x.id for x in h} for h, t in zip(hits, want,
                                                                                                    strict=True)]))
    res["example_params"] = params[:3]
    return res
