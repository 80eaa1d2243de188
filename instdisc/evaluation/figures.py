"""The report's figures: kNN accuracy vs k, the precision-recall curve and the retrieval grid (PNG, atomic)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from index.search import SearchIndex
from instdisc.data import ImageCollection
from instdisc.fsutil import atomic_write_bytes
from instdisc.images import fit_square, hwc, load_image
from instdisc.plots import pyplot, save_png

from .metrics import RankingResult
from .options import EvalOptions
from .report import METHOD_NAMES, pct


def plot_knn_vs_k(methods: dict[str, dict], path: Path, paper: float | None = None) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in methods.items():
        curve = r.get("knn_curve") or {}
        if not curve:
            continue
        ks = sorted(int(k) for k in curve)
        ax.plot(ks, [100 * (curve[str(k)] if str(k) in curve else curve[k]) for k in ks], marker="o",
                label=METHOD_NAMES.get(name, name), lw=2.2 if name == "ours" else 1.4)
    if paper is not None:
        ax.axhline(paper, ls=":", color="grey", label=f"paper, k=200 ({paper:.1f})")
    ax.set_xscale("log")
    ax.set(xlabel="k (neighbours voting)", ylabel="weighted kNN top-1 (%)", title="kNN accuracy vs k")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def plot_pr(methods: dict[str, dict], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for name, r in methods.items():
        pr = r.get("pr_curve")
        if not pr or pr["precision"] is None or any(p is None for p in pr["precision"]):
            continue
        ax.plot(pr["recall"], pr["precision"], marker=".", label=f"{METHOD_NAMES.get(name, name)} "
                f"(mAP {pct(r.get('map'))})", lw=2.2 if name == "ours" else 1.4)
    ax.set(xlabel="recall", ylabel="interpolated precision", xlim=(0, 1), ylim=(0, 1.02),
           title="Class-level retrieval (full ranking)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def retrieval_grid(
    queries: list[np.ndarray], neighbours: list[list[np.ndarray]], wrong: list[list[bool | None]],
    captions: list[str], path: Path, cell: int | None = None,
) -> None:
    """Query, gap, then its neighbours per row; neighbours of another class get a red border.

    Images are HxWx3 uint8; small ones are enlarged with NEAREST so pixels stay crisp."""
    size = queries[0].shape[0] if queries else 32
    if cell is None:
        cell = size * max(1, round(72 / size)) if size <= 72 else 96
    pad, gap, border, text_h = 4, 14, 3, 14
    cols = 1 + max((len(n) for n in neighbours), default=0)
    width = pad + cols * (cell + pad) + gap
    height = pad + len(queries) * (cell + text_h + pad)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)

    def paste(arr: np.ndarray, x: int, y: int, colour: tuple[int, int, int] | None) -> None:
        im = Image.fromarray(arr)
        resample = Image.Resampling.NEAREST if cell >= im.width else Image.Resampling.BICUBIC
        inner = cell - 2 * border
        canvas.paste(im.resize((inner, inner), resample), (x + border, y + border))
        if colour is not None:
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], outline=colour, width=border)

    for r, (q, nbrs, bad, cap) in enumerate(zip(queries, neighbours, wrong, captions, strict=True)):
        y = pad + r * (cell + text_h + pad)
        paste(q, pad, y, (40, 40, 40))
        draw.text((pad, y + cell + 1), cap[:24], fill=(0, 0, 0))
        for j, (img, w) in enumerate(zip(nbrs, bad, strict=True)):
            x = pad + (j + 1) * (cell + pad) + gap
            paste(img, x, y, (220, 30, 30) if w else None)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def draw_grid(idx: SearchIndex, qc: ImageCollection, q_labels: torch.Tensor, g_labels: torch.Tensor,
              ids: np.ndarray, g_imgs: torch.Tensor | None, rr: RankingResult, o: EvalOptions, path: Path) -> None:
    """The retrieval grid of a seeded sample of queries and their exact top ``o.grid_k`` gallery rows."""
    n = min(o.grid_queries, len(qc))
    rng = np.random.default_rng(o.seed + 2)
    pick = np.sort(rng.choice(len(qc), n, replace=False)) if n else np.zeros(0, np.int64)

    def gallery_img(row: int) -> np.ndarray:
        if g_imgs is not None:
            return hwc(g_imgs[row])
        return fit_square(load_image(idx.image_path(int(ids[row]))), idx.image_size)

    qs, nbrs, wrong, caps = [], [], [], []
    for i in pick.tolist():
        qs.append(hwc(qc.images[i]))
        top = rr.top_ids[i, : o.grid_k].tolist()
        nbrs.append([gallery_img(r) for r in top])
        y = int(q_labels[i])
        wrong.append([(y >= 0 and int(g_labels[r]) != y) for r in top])
        caps.append(qc.classes[int(qc.labels[i])] if qc.has_labels else Path(qc.paths[i]).name)
    if qs:
        retrieval_grid(qs, nbrs, wrong, caps, path)
