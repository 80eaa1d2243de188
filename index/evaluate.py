"""Batch retrieval evaluation of an index against a labelled query collection, with baselines.

``evaluate(index_dir, queries, out_dir)`` measures, for the index's encoder ("ours") and for
baselines computed the same way on the same images (raw pixels, a random-initialised
encoder of the same architecture, an ImageNet-supervised ResNet18 when its weights are on
disk):

- the paper's weighted kNN top-1 for several k (weights exp(s / tau), tau = the checkpoint's
  training temperature);
- class-level retrieval over the full ranking of the gallery: mAP, MAP@R, R-precision,
  precision@k and recall@k, and an interpolated precision-recall curve;
- instance-level retrieval: strongly augmented copies of sampled gallery images (crop,
  colour change, blur, low-quality JPEG) as queries, how often the original comes back first
  and within the top 10;
- for the index itself: recall@10 of its configured search against exact search on its own
  vectors, batched throughput and single-query latency, vectors only and image -> result.

It writes ``report.json`` (every number and the configuration), ``report.md`` (tables) and
PNG figures into ``out_dir``. Class-level numbers use exact search for every method so they
compare encoders, not index approximations; the index's approximation is measured apart.
A query collection without labels gets the instance-level and speed numbers only.
"""

from __future__ import annotations

import io
import json
import math
import os
import platform
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter
from tqdm import tqdm

from instdisc.checkpoint import encoder_from
from instdisc.config import TrainConfig
from instdisc.data import ImageCollection, decode_all, load_folder, resolve_source, scan, split_dirs
from instdisc.embed import embed
from instdisc.fsutil import atomic_write, atomic_write_bytes, atomic_write_text
from instdisc.images import ImageError, fit_square, load_image
from instdisc.model import Encoder
from instdisc.runtime import pick_device, use_bf16

from . import metrics as M
from .auto import core, index_kind
from .build import normalise
from .layout import open_dir, verified_checkpoint
from .search import SearchIndex, safe_join

BASELINES = ("reembed", "pixels", "random", "imagenet")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# The paper's CIFAR-10 numbers (ResNet18, 128-d, weighted kNN top-1 %); see docs/evaluation.md.
PAPER_CIFAR10 = [
    {"method": "parametric softmax", "knn_top1": 63.0, "linear_svm": 60.3},
    {"method": "non-parametric softmax (full)", "knn_top1": 80.8, "linear_svm": 75.4},
    {"method": "NCE m = 1", "knn_top1": 42.5, "linear_svm": 44.0},
    {"method": "NCE m = 4096", "knn_top1": 80.4, "linear_svm": 70.0},
    {"method": "random network", "knn_top1": 32.0, "linear_svm": None},
]
METHOD_NAMES = {"ours": "ours (index vectors)", "reembed": "ours, gallery re-embedded", "pixels": "raw pixels",
                "random": "random-init encoder", "imagenet": "ImageNet ResNet18 (supervised)"}


@dataclass
class EvalOptions:
    """Knobs of an evaluation (the script's flags map one to one)."""

    ks: tuple[int, ...] = (1, 20, 200)
    pr_ks: tuple[int, ...] = (1, 10, 100)
    limit: int | None = None  # evaluate a seeded random subset of this many queries
    baselines: tuple[str, ...] = BASELINES
    near_dup_samples: int = 500
    ann_k: int = 10
    latency_queries: int = 200  # single-query vector searches timed
    e2e_queries: int = 50  # single image -> result searches timed
    e2e_batch: int = 256  # batched image -> result throughput: this many images
    speed_batch: int = 1000  # batched vector search: queries per call
    grid_queries: int = 8
    grid_k: int = 10
    pixel_size: int = 32  # raw-pixel baseline resolution (images larger than this are area-resized)
    imagenet_size: int | None = None  # ImageNet baseline input size (default: 224 on a GPU, 64+ on the CPU)
    faiss_threads: int | None = None  # OpenMP threads of FAISS searches (default: FAISS's own, all cores)
    device: str | None = None
    precision: str = "auto"
    batch_size: int = 256
    seed: int = 0
    progress: bool = True


# ---------------------------------------------------------------- small helpers


def _clean(x):
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python, tuples -> lists."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return x


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100 * x:.{digits}f}"


def _num(x: float | None, fmt: str = "{:.1f}") -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else fmt.format(x)


class _Timer:
    def __init__(self) -> None:
        self.stages: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Ctx:
            def __enter__(self_inner):
                self_inner.t = time.perf_counter()

            def __exit__(self_inner, *exc):
                timer.stages[name] = timer.stages.get(name, 0.0) + time.perf_counter() - self_inner.t

        return _Ctx()


# ---------------------------------------------------------------- inputs


def query_folder(source: str | os.PathLike) -> tuple[Path, str]:
    """The folder to take queries from, and why: a split collection's evaluation split
    (test/, val/), else the folder (or extracted archive) itself."""
    root = resolve_source(source)
    train_dir, eval_dir = split_dirs(root)
    if eval_dir is not None:
        return eval_dir, f"evaluation split '{eval_dir.name}/' of {source}"
    if train_dir != root and train_dir.name == "train":
        return train_dir, f"{source} has only a train/ split: querying it (it may overlap the gallery)"
    return train_dir, str(source)


def gallery_vectors(index: faiss.Index, ids: np.ndarray) -> np.ndarray | None:
    """The index's own vectors in ``ids`` order, where it stores them losslessly (Flat, IVF-Flat,
    HNSW-Flat); None for compressed ones (PQ, SQ), whose exact neighbours need the originals."""
    kind = index_kind(index)
    try:
        if kind == "flat":
            pass
        elif kind == "hnsw":
            if not isinstance(faiss.downcast_index(core(index).storage), faiss.IndexFlat):
                return None
        elif kind == "ivf":
            ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
            if type(ivf) is not faiss.IndexIVFFlat:
                return None
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # ids need not be consecutive
        else:
            return None
        vecs = index.reconstruct_batch(np.ascontiguousarray(ids, dtype=np.int64))
    except (RuntimeError, AttributeError):
        return None
    return normalise(vecs)


def gallery_images(root: Path, paths: list[str], size: int, progress: bool) -> tuple[torch.Tensor | None, str | None]:
    """Decoded gallery images (N, 3, S, S) uint8 in ``paths`` order, or (None, why not).

    Uses the training loader (and its on-disk cache) when the index holds exactly the files
    under ``root``, as a memory-bank index does; otherwise decodes the listed files."""
    if not root.is_dir():
        return None, f"the index's image root {root} is not on this machine"
    try:
        if sorted(paths) == scan(root):
            coll = load_folder(root, size, labels="none", progress=progress)
            pos = {p: i for i, p in enumerate(coll.paths)}
            if len(pos) == len(paths) and all(p in pos for p in paths):
                return coll.images[torch.tensor([pos[p] for p in paths])], None
        for p in paths:
            safe_join(root, p)
        arr, kept, skipped = decode_all(root, paths, size, progress=progress)
    except Exception as e:  # unreadable root, unsafe path, ...
        return None, f"cannot decode the gallery images under {root} ({type(e).__name__}: {e})"
    if skipped:
        return None, f"{len(skipped)} gallery image(s) under {root} are unreadable (e.g. {skipped[0][0]})"
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous(), None


def imagenet_weights() -> Path | None:
    """torchvision ResNet18 ImageNet weights already in the torch hub cache (never downloaded)."""
    d = Path(torch.hub.get_dir()) / "checkpoints"
    found = sorted(d.glob("resnet18-*.pth")) if d.is_dir() else []
    return found[0] if found else None


class TorchvisionEmbedder(nn.Module):
    """A torchvision classifier minus its last layer, as an ``embed``-compatible encoder."""

    def __init__(self, net: nn.Module, dim: int, size: int) -> None:
        super().__init__()
        self.net = net
        self.low_dim = dim
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return F.normalize(self.net(x).float(), dim=1)


def imagenet_resnet18(weights: Path, size: int) -> TorchvisionEmbedder:
    import torchvision

    net = torchvision.models.resnet18()
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    net.fc = nn.Identity()
    return TorchvisionEmbedder(net, 512, size).eval()


def _pixel_featuriser(mean: torch.Tensor, size: int):
    def feat(imgs: torch.Tensor, desc: str = "") -> np.ndarray:
        return M.pixel_features(imgs, size, mean)[0].numpy()

    return feat


def random_encoder(cfg: TrainConfig, seed: int) -> Encoder:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Encoder(cfg.arch, cfg.width, cfg.cifar_stem, cfg.low_dim).eval()


# ---------------------------------------------------------------- near-duplicate queries


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


# ---------------------------------------------------------------- figures


def _save_fig(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_knn_vs_k(methods: dict[str, dict], path: Path, paper: float | None = None) -> None:
    plt = _plt()
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
    _save_fig(fig, path)


def plot_pr(methods: dict[str, dict], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for name, r in methods.items():
        pr = r.get("pr_curve")
        if not pr or pr["precision"] is None or any(p is None for p in pr["precision"]):
            continue
        ax.plot(pr["recall"], pr["precision"], marker=".", label=f"{METHOD_NAMES.get(name, name)} "
                f"(mAP {_pct(r.get('map'))})", lw=2.2 if name == "ours" else 1.4)
    ax.set(xlabel="recall", ylabel="interpolated precision", xlim=(0, 1), ylim=(0, 1.02),
           title="Class-level retrieval (full ranking)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save_fig(fig, path)


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


# ---------------------------------------------------------------- the evaluation


@dataclass
class Method:
    name: str
    gallery: torch.Tensor  # (N, d) unit rows, gallery order
    queries: torch.Tensor | None  # (Q, d) unit rows or None (not computed)
    featurise: object  # callable: (B, 3, S, S) uint8 -> (B, d) unit rows
    note: str = ""
    extra: dict = field(default_factory=dict)


def evaluate(
    index_dir: str | os.PathLike, queries: str | os.PathLike, out_dir: str | os.PathLike,
    options: EvalOptions | None = None,
) -> dict:
    """Run every measurement, write report.json / report.md / figures into ``out_dir``; return the report."""
    o = options or EvalOptions()
    threads = faiss.omp_get_max_threads()
    try:
        if o.faiss_threads:
            faiss.omp_set_num_threads(int(o.faiss_threads))
        return _evaluate(index_dir, queries, out_dir, o)
    finally:
        faiss.omp_set_num_threads(threads)


def _evaluate(index_dir: str | os.PathLike, queries: str | os.PathLike, out_dir: str | os.PathLike,
              o: EvalOptions) -> dict:
    unknown = [b for b in o.baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; choose from {list(BASELINES)}")
    if not o.ks or min(o.ks) < 1:
        raise ValueError(f"--ks must be positive integers, got {list(o.ks)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timer = _Timer()
    notes: list[str] = []
    t_start = time.perf_counter()
    device = pick_device(o.device)
    bf16 = use_bf16(device, o.precision)

    # ---- the index, its metadata and its encoder
    with timer("open index"):
        idx = SearchIndex.open(index_dir, device="cpu" if device.type == "cpu" else "auto")
        loaded = open_dir(index_dir)
    try:
        m = idx.manifest
        rows = loaded.store.rows()
        ids = np.array([r.id for r in rows], dtype=np.int64)
        g_paths = [r.path for r in rows]
        g_label_names = [r.label for r in rows]
        _, ckpt = verified_checkpoint(m)
        cfg = TrainConfig.from_dict(ckpt["config"])
        tau = float(m.get("temperature", cfg.temperature))
        image_size = int(m["architecture"]["image_size"])
        encoder = encoder_from(ckpt).to(device)
        with timer("gallery vectors"):
            g_ours = gallery_vectors(loaded.index, ids)
        index_info = {k: v for k, v in m["index"].items() if k != "tuning"}
    finally:
        loaded.store.close()
    n_gallery = len(ids)
    if n_gallery == 0:
        idx.close()
        raise ValueError(f"{index_dir}: the index is empty")

    # ---- queries
    with timer("load queries"):
        q_dir, q_why = query_folder(queries)
        qc = load_folder(q_dir, image_size, labels="auto", progress=o.progress)
    if o.limit is not None and o.limit < len(qc):
        pick = np.sort(np.random.default_rng(o.seed).choice(len(qc), o.limit, replace=False))
        qc = qc.subset(torch.from_numpy(pick))
    g_root = Path(m["root"]).resolve()
    indexed = {(g_root / p).as_posix() for p in g_paths}
    overlap = sum((Path(qc.root).resolve() / p).as_posix() in indexed for p in qc.paths)
    if overlap:
        notes.append(f"{overlap} of the {len(qc)} query images are themselves in the index: each finds itself "
                     "first, which inflates the class-level numbers. Query a held-out split instead.")
    classes = sorted({lab for lab in g_label_names if lab is not None} | set(qc.classes))
    cls_id = {c: i for i, c in enumerate(classes)}
    g_labels = torch.tensor([cls_id[lab] if lab is not None else -1 for lab in g_label_names], dtype=torch.long)
    q_labelled = qc.has_labels
    q_labels = (torch.tensor([cls_id[qc.classes[y]] for y in qc.labels.tolist()], dtype=torch.long)
                if q_labelled else torch.full((len(qc),), -1, dtype=torch.long))
    g_labelled = bool((g_labels >= 0).any())
    class_level = q_labelled and g_labelled
    if not q_labelled:
        notes.append("The query collection has no class labels (class-per-folder with >= 2 classes): only the "
                     "instance-level, ANN and speed metrics are reported.")
    elif not g_labelled:
        notes.append("The index holds no labels: class-level metrics are skipped.")
    else:
        unseen = sorted(set(qc.classes) - {lab for lab in g_label_names if lab is not None})
        if unseen:
            notes.append(f"Query classes absent from the gallery (always wrong for kNN, left out of mAP): {unseen}.")

    # ---- methods: ours + baselines
    methods: dict[str, Method] = {}

    def enc_featurise(enc: nn.Module, dev: torch.device, use_bf: bool):
        return lambda imgs, desc="embed": normalise(
            embed(enc, imgs, dev, use_bf, o.batch_size, progress=o.progress, desc=desc).numpy())

    ours_feat = enc_featurise(encoder, device, bf16)
    g_imgs, why_no_imgs = (None, None)
    want_imgs = bool(o.baselines) or g_ours is None
    g_ours_from_images = g_ours is None
    if want_imgs:
        with timer("decode gallery"):
            g_imgs, why_no_imgs = gallery_images(Path(m["root"]), g_paths, image_size, o.progress)
    if g_ours is None:
        if g_imgs is None:
            idx.close()
            raise ValueError(f"the index stores compressed vectors and the gallery images cannot be re-embedded: "
                             f"{why_no_imgs}")
        notes.append("The index stores compressed vectors: exact search uses the gallery images re-embedded "
                     "with the checkpoint's encoder.")
        with timer("embed gallery (ours)"):
            g_ours = ours_feat(g_imgs, "embed gallery")
    with timer("embed queries (ours)"):
        q_ours = ours_feat(qc.images, "embed queries")
    methods["ours"] = Method("ours", torch.from_numpy(g_ours), torch.from_numpy(q_ours), ours_feat)

    if o.baselines and g_imgs is None:
        notes.append(f"Baselines skipped: {why_no_imgs}.")
    elif o.baselines:
        for b in o.baselines:
            with timer(f"baseline {b}"):
                if b == "reembed":
                    if m.get("source") != "memory_bank" or g_ours_from_images:
                        notes.append("'reembed' skipped: the index's vectors already are embeddings of the gallery "
                                     "images by the checkpoint's encoder.")
                        continue
                    methods[b] = Method(b, torch.from_numpy(ours_feat(g_imgs, "re-embed gallery")),
                                        torch.from_numpy(q_ours) if class_level else None, ours_feat,
                                        note="the checkpoint's encoder applied to the gallery images (evaluation "
                                             "transform) instead of the memory bank's running averages: the "
                                             "paper's final kNN protocol (recomputed memory)")
                elif b == "pixels":
                    gp, mean = M.pixel_features(g_imgs, o.pixel_size)
                    feat = _pixel_featuriser(mean, o.pixel_size)
                    methods[b] = Method(b, gp, torch.from_numpy(feat(qc.images)) if class_level else None, feat,
                                        note=f"{min(o.pixel_size, image_size)}x{min(o.pixel_size, image_size)} "
                                             "pixels, gallery mean subtracted, L2-normalised")
                elif b == "random":
                    enc = random_encoder(cfg, o.seed).to(device)
                    feat = enc_featurise(enc, device, bf16)
                    methods[b] = Method(b, torch.from_numpy(feat(g_imgs, "random: gallery")),
                                        torch.from_numpy(feat(qc.images, "random: queries")) if class_level
                                        else None, feat,
                                        note=f"{cfg.arch} width {cfg.width}, seed {o.seed}, untrained")
                elif b == "imagenet":
                    w = imagenet_weights()
                    if w is None:
                        notes.append(f"ImageNet baseline skipped: no resnet18-*.pth under "
                                     f"{Path(torch.hub.get_dir()) / 'checkpoints'} (never downloaded here).")
                        continue
                    size = o.imagenet_size or (224 if device.type == "cuda" else min(224, max(64, image_size)))
                    try:
                        enc = imagenet_resnet18(w, size).to(device)
                    except Exception as e:  # wrong or corrupt file
                        notes.append(f"ImageNet baseline skipped: cannot load {w} ({type(e).__name__}: {e}).")
                        continue
                    feat = enc_featurise(enc, device, bf16)
                    methods[b] = Method(b, torch.from_numpy(feat(g_imgs, "imagenet: gallery")),
                                        torch.from_numpy(feat(qc.images, "imagenet: queries")) if class_level
                                        else None, feat,
                                        note=f"torchvision ResNet18, {w.name}, input {size}x{size}, 512-d pooled")

    # ---- class-level: exact ranking for every method (k=200, the paper's, always among the ks)
    knn_ks = tuple(sorted(set(o.ks) | {200}))
    n_lab_gallery = int((g_labels >= 0).sum())
    if class_level and n_lab_gallery < max(knn_ks):
        notes.append(f"Only {n_lab_gallery} labelled gallery entries: kNN with a larger k uses all of them.")
    results: dict[str, dict] = {}
    ranking: dict[str, M.RankingResult] = {}
    for name, meth in methods.items():
        if name != "ours" and not class_level:
            results[name] = {"note": meth.note}
            continue
        with timer(f"rank {name}"):
            # on a GPU the similarity matmuls and top-k run there; the row sorts always run in numpy
            rr = M.rank_and_score(meth.queries, q_labels, meth.gallery.to(device), g_labels, max(1, len(classes)),
                                  tau, knn_ks=knn_ks, pr_ks=o.pr_ks, top_k=max(o.ann_k, o.grid_k),
                                  progress=o.progress, desc=f"rank {name}")
        ranking[name] = rr
        results[name] = {**(rr.to_dict() if class_level else {}), "note": meth.note}

    # ---- instance-level: strongly augmented gallery images as queries
    near_dup = {"samples_requested": o.near_dup_samples}
    if o.near_dup_samples > 0:
        with timer("near-duplicates"):
            near_dup.update(_near_duplicates(idx, methods, ids, g_paths, image_size, o, device))
    else:
        near_dup["note"] = "skipped (--near-dup-samples 0)"

    # ---- ANN quality and speed of the index's configured search
    exact_top = ids[ranking["ours"].top_ids[:, : o.ann_k]]
    with timer("ann + batched speed"):
        ann, batched = _ann_and_batched(idx, q_ours, exact_top, o)
    with timer("latency"):
        speed = {"batched_vectors": batched, **_latency(idx, q_ours, qc, o)}

    # ---- figures
    figures = {}
    with timer("figures"):
        plot_results = {k: v for k, v in results.items() if "knn_curve" in v}
        cifar = set(classes) == set(CIFAR10_CLASSES)
        if plot_results:
            plot_knn_vs_k(_clean(plot_results), out / "knn_vs_k.png", 80.8 if cifar else None)
            figures["knn_vs_k"] = "knn_vs_k.png"
            plot_pr(_clean(plot_results), out / "pr_curve.png")
            figures["pr_curve"] = "pr_curve.png"
        try:
            _grid(idx, qc, q_labels, g_labels, ids, g_paths, g_imgs, ranking["ours"], image_size, o,
                  out / "retrieval_grid.png")
            figures["retrieval_grid"] = "retrieval_grid.png"
        except (OSError, ImageError, KeyError) as e:
            notes.append(f"Retrieval grid not drawn: {e}")

    idx.close()
    ours = results["ours"]
    k_main = 200
    report = {
        "knn_top1": (ours["knn_top1"].get(str(k_main)) if class_level else None),
        "knn_k": k_main,
        "map": ours.get("map") if class_level else None,
        "near_dup_top1": near_dup.get("methods", {}).get("ours", {}).get("top1"),
        "ann_recall_at_10": ann.get("recall"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": {
            "index": str(Path(index_dir).resolve()), "queries": str(queries), "query_folder": str(q_dir),
            "query_source": q_why, "ks": list(o.ks), "pr_ks": list(o.pr_ks), "limit": o.limit,
            "baselines": list(o.baselines), "near_dup_samples": o.near_dup_samples, "seed": o.seed,
            "temperature": tau, "device": str(device), "bf16": bf16, "search_device": idx.device,
            "options": asdict(o), "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "faiss_threads": faiss.omp_get_max_threads(),
            "machine": platform.machine(), "torch": torch.__version__, "faiss": faiss.__version__,
        },
        "index": {"count": n_gallery, "dim": int(m["dim"]), "source": m.get("source"), "root": m["root"],
                  "type": index_info.get("type"), "factory": index_info.get("factory"),
                  "params": index_info.get("params"), "checkpoint": m["checkpoint"],
                  "architecture": m["architecture"], "training_knn_top1": m.get("knn_top1")},
        "gallery": {"count": n_gallery, "labelled": int((g_labels >= 0).sum()), "classes": classes},
        "queries": {"count": len(qc), "labelled": q_labelled, "classes": qc.classes, "root": qc.root,
                    "skipped_files": len(qc.skipped)},
        "class_level": class_level,
        "methods": results,
        "near_duplicate": near_dup,
        "ann": ann,
        "speed": speed,
        "paper_reference": {"dataset": "CIFAR-10", "metric": "weighted kNN top-1 % (k=200), ResNet18, 128-d",
                            "rows": PAPER_CIFAR10, "applies": cifar},
        "figures": figures,
        "notes": notes,
        "timing_s": {k: round(v, 2) for k, v in timer.stages.items()},
        "wall_s": round(time.perf_counter() - t_start, 2),
    }
    report = _clean(report)
    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / "report.md", render_markdown(report))
    return report


def _near_duplicates(idx: SearchIndex, methods: dict[str, Method], ids: np.ndarray, paths: list[str],
                     image_size: int, o: EvalOptions, device: torch.device) -> dict:
    n = len(ids)
    rng = np.random.default_rng(o.seed + 1)
    sample = np.sort(rng.choice(n, min(o.near_dup_samples, n), replace=False))
    imgs, rows_ok, unreadable, params = [], [], 0, []
    root = Path(idx.root)
    for row in tqdm(sample.tolist(), desc="near-dup queries", disable=not o.progress, leave=False):
        try:
            original = load_image(safe_join(root, paths[row]))
        except (ImageError, OSError, ValueError):
            unreadable += 1
            continue
        edited, p = strong_augment(original, random.Random(o.seed * 1_000_003 + row))
        imgs.append(fit_square(edited, image_size))
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
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()
    targets = torch.tensor(rows_ok, dtype=torch.long)
    for name, meth in methods.items():
        qv = torch.from_numpy(np.asarray(meth.featurise(x, f"near-dup {name}")))
        r = M.rank_of_targets(qv, meth.gallery.to(device), targets).numpy()
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


def _ann_and_batched(idx: SearchIndex, q: np.ndarray, exact_top: np.ndarray, o: EvalOptions) -> tuple[dict, dict]:
    """Recall@k of the configured search vs exact on the index's vectors, timing the batched calls."""
    k = exact_top.shape[1]
    idx.search_vectors(q[: min(len(q), 8)], k)  # warm-up
    found = np.full((len(q), k), -1, dtype=np.int64)
    elapsed = 0.0
    for i in tqdm(range(0, len(q), o.speed_batch), desc="index search", disable=not o.progress, leave=False):
        t = time.perf_counter()
        hits = idx.search_vectors(q[i : i + o.speed_batch], k)
        elapsed += time.perf_counter() - t
        for j, h in enumerate(hits):
            found[i + j, : len(h)] = [x.id for x in h]
    ann = {"k": k, "queries": len(q), "recall": M.ann_recall(found, exact_top),
           "index_type": idx.manifest["index"].get("type"), "params": idx.manifest["index"].get("params"),
           "build_time_recall": idx.manifest["index"].get("recall_at_10")}
    batched = {"queries": len(q), "batch": o.speed_batch, "k": k, "seconds": elapsed,
               "qps": len(q) / elapsed if elapsed > 0 else float("nan")}
    return ann, batched


def _latency(idx: SearchIndex, q: np.ndarray, qc: ImageCollection, o: EvalOptions) -> dict:
    k = o.ann_k
    out: dict = {}
    n = min(o.latency_queries, len(q))
    times = []
    for i in range(n + 5):
        t = time.perf_counter()
        idx.search_vectors(q[i % len(q)][None], k)
        if i >= 5:  # the first calls warm caches up
            times.append(time.perf_counter() - t)
    out["single_vector"] = {**M.latency_summary(times), "k": k}
    files = [str(Path(qc.root) / p) for p in qc.paths]
    n_e2e = min(o.e2e_queries, len(files))
    times = []
    for i in range(n_e2e + 2):
        t = time.perf_counter()
        idx.search_images([files[i % len(files)]], k)
        if i >= 2:
            times.append(time.perf_counter() - t)
    out["single_image"] = {**M.latency_summary(times), "k": k, "what": "file -> decode -> embed -> search"}
    nb = min(o.e2e_batch, len(files))
    if nb:
        t = time.perf_counter()
        for i in range(0, nb, 128):
            idx.search_images(files[i : min(nb, i + 128)], k)
        el = time.perf_counter() - t
        out["batched_images"] = {"images": nb, "batch": 128, "seconds": el, "qps": nb / el if el > 0 else None}
    return out


def _grid(idx: SearchIndex, qc: ImageCollection, q_labels: torch.Tensor, g_labels: torch.Tensor, ids: np.ndarray,
          paths: list[str], g_imgs: torch.Tensor | None, rr: M.RankingResult, image_size: int, o: EvalOptions,
          path: Path) -> None:
    n = min(o.grid_queries, len(qc))
    rng = np.random.default_rng(o.seed + 2)
    pick = np.sort(rng.choice(len(qc), n, replace=False)) if n else np.zeros(0, np.int64)
    root = Path(idx.root)

    def gallery_img(row: int) -> np.ndarray:
        if g_imgs is not None:
            return g_imgs[row].permute(1, 2, 0).numpy()
        return fit_square(load_image(safe_join(root, paths[row])), image_size)

    qs, nbrs, wrong, caps = [], [], [], []
    for i in pick.tolist():
        qs.append(qc.images[i].permute(1, 2, 0).numpy())
        top = rr.top_ids[i, : o.grid_k].tolist()
        nbrs.append([gallery_img(r) for r in top])
        y = int(q_labels[i])
        wrong.append([(y >= 0 and int(g_labels[r]) != y) for r in top])
        caps.append(qc.classes[int(qc.labels[i])] if qc.has_labels else Path(qc.paths[i]).name)
    if qs:
        retrieval_grid(qs, nbrs, wrong, caps, path)


# ---------------------------------------------------------------- report.md


def render_markdown(r: dict) -> str:
    c = r["config"]
    lines = ["# Retrieval evaluation", ""]
    lines += [f"- index: `{c['index']}` ({r['index']['count']} entries, {r['index']['type']} "
              f"`{r['index']['factory']}`, {r['index']['dim']}-d, checkpoint epoch "
              f"{r['index']['checkpoint'].get('epoch')})",
              f"- queries: {r['queries']['count']} images from `{c['query_folder']}` ({c['query_source']}), "
              f"{'labelled' if r['queries']['labelled'] else 'unlabelled'}",
              f"- weighted kNN temperature tau = {c['temperature']} (the checkpoint's training temperature); "
              f"device {c['device']} (bf16 {c['bf16']}), index search on {c['search_device']}",
              f"- created {r['created']}, wall time {r['wall_s']:.0f} s", ""]
    if r.get("knn_top1") is not None:
        lines += [f"**Weighted kNN top-1 (k={r['knn_k']}): {_pct(r['knn_top1'], 2)} %** · mAP "
                  f"{_pct(r['map'], 2)} % · near-duplicate top-1 {_pct(r['near_dup_top1'])} % · "
                  f"ANN recall@10 {_num(r['ann_recall_at_10'], '{:.4f}')}", ""]
    methods = r["methods"]
    if r["class_level"]:
        ks = c["ks"]
        pks = c["pr_ks"]
        lines += ["## Class-level (exact search for every method)", "",
                  "| method | " + " | ".join(f"kNN k={k}" for k in ks) + " | mAP | mAP@R | "
                  + " | ".join(f"P@{k}" for k in pks) + " | " + " | ".join(f"R@{k}" for k in pks) + " |",
                  "|---" * (len(ks) + 3 + 2 * len(pks)) + "|"]
        for name, m in methods.items():
            if "knn_top1" not in m:
                continue
            lines.append(f"| {METHOD_NAMES.get(name, name)} | "
                         + " | ".join(_pct(m["knn_top1"].get(str(k))) for k in ks)
                         + f" | {_pct(m['map'])} | {_pct(m['map_at_r'])} | "
                         + " | ".join(_pct(m["precision_at"].get(str(k))) for k in pks) + " | "
                         + " | ".join(_pct(m["recall_at"].get(str(k)), 2) for k in pks) + " |")
        lines += ["", "All numbers in %. kNN: the paper's weighted vote, exp(s/tau) over the top-k labelled gallery "
                  "neighbours. mAP: average precision over the full ranking of the gallery (relevant = same "
                  "class), mean over queries; mAP@R: MAP@R with R = the number of relevant gallery items. "
                  "P@k / R@k: precision and recall in the top k.", ""]
        lines += ["Paper (Wu et al. 2018), CIFAR-10, ResNet18, weighted kNN top-1 (k=200)"
                  + ("" if r["paper_reference"]["applies"] else " — for reference only, a different data set") + ":",
                  "", "| paper method | weighted kNN | linear SVM |", "|---|---|---|"]
        for row in r["paper_reference"]["rows"]:
            lines.append(f"| {row['method']} | {row['knn_top1']} | {row['linear_svm'] or '–'} |")
        lines.append("")
    nd = r["near_duplicate"]
    if nd.get("methods"):
        lines += ["## Instance-level (near-duplicate) retrieval", "",
                  f"{nd['samples']} gallery images, each queried with a strongly edited copy ({nd['augmentation']}); "
                  "how often the original comes back first / in the top 10 (exact search; 'index' = through the "
                  "index's configured search).", "",
                  "| method | top-1 | top-10 | MRR | median rank |", "|---|---|---|---|---|"]
        for name, m in nd["methods"].items():
            lines.append(f"| {METHOD_NAMES.get(name, name)} | {_pct(m['top1'])} | {_pct(m['top10'])} | "
                         f"{_num(m['mean_reciprocal_rank'], '{:.3f}')} | {_num(m['median_rank'], '{:.0f}')} |")
            if "index_top1" in m:
                lines.append(f"| ours, via the index | {_pct(m['index_top1'])} | {_pct(m['index_top10'])} | – | – |")
        lines.append("")
    a, s = r["ann"], r["speed"]
    lines += ["## Index: approximation and speed", "",
              f"- recall@{a['k']} of the configured search ({a['index_type']}, params {a['params'] or 'exact'}) "
              f"against exact search on the index's vectors, over {a['queries']} queries: "
              f"**{_num(a['recall'], '{:.4f}')}** (measured at build time: {a['build_time_recall']})", "",
              "| what | throughput (queries/s) | p50 latency (ms) | p99 latency (ms) |", "|---|---|---|---|",
              f"| vector search, batches of {s['batched_vectors']['batch']} | "
              f"{_num(s['batched_vectors']['qps'], '{:.0f}')} | – | – |",
              f"| vector search, one query | – | {_num(s['single_vector']['p50_ms'], '{:.2f}')} | "
              f"{_num(s['single_vector']['p99_ms'], '{:.2f}')} |"]
    if "batched_images" in s:
        lines.append(f"| image file -> result, batches of {s['batched_images']['batch']} | "
                     f"{_num(s['batched_images']['qps'], '{:.0f}')} | – | – |")
    lines += [f"| image file -> result, one query | – | {_num(s['single_image']['p50_ms'], '{:.2f}')} | "
              f"{_num(s['single_image']['p99_ms'], '{:.2f}')} |", "",
              f"k = {s['single_vector']['k']}; {c['torch_threads']} torch threads, {c.get('faiss_threads')} FAISS "
              f"threads, {c['cpu_count']} CPUs, embedding on {c['device']}. Timings include the metadata lookup of "
              "every hit. On a machine busy with other work, FAISS's OpenMP threads can inflate single-query "
              "latency many times over (measure with --faiss-threads 1 to see).", ""]
    baseline_notes = [(n, m["note"]) for n, m in methods.items() if m.get("note")]
    if baseline_notes:
        lines += ["## Baselines", ""] + [f"- {METHOD_NAMES.get(n, n)}: {t}" for n, t in baseline_notes] + [""]
    if r["figures"]:
        lines += ["## Figures", ""] + [f"![{k}]({v})" for k, v in r["figures"].items()] + [""]
    if r["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in r["notes"]] + [""]
    lines += ["Stage timings (s): " + ", ".join(f"{k} {v}" for k, v in r["timing_s"].items()), ""]
    return "\n".join(lines)
