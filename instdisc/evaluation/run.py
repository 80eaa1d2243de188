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

import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import faiss
import numpy as np
import torch
import torch.nn as nn

from index.faiss_util import normalise
from index.search import SearchIndex, safe_join
from instdisc.data import decode_all, load_folder, resolve_source, scan, split_dirs
from instdisc.embed import embed
from instdisc.fsutil import atomic_write_text
from instdisc.images import ImageError, nchw
from instdisc.runtime import pick_device, use_bf16
from instdisc.whitening import fit_whitening

from . import metrics as M
from .baselines import (
    BASELINES,
    Method,
    imagenet_resnet18,
    imagenet_weights,
    pixel_features,
    pixel_featuriser,
)
from .figures import draw_grid, plot_knn_vs_k, plot_pr
from .near_duplicates import near_duplicates
from .options import EvalOptions
from .report import CIFAR10_CLASSES, PAPER_CIFAR10, json_safe, render_markdown
from .speed import ann_and_batched, latency

__all__ = ["BASELINES", "EvalOptions", "evaluate", "gallery_images", "query_folder"]


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
    return nchw(arr), None


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
    m, ckpt = idx.manifest, idx.checkpoint
    rows = idx.rows()
    ids = np.array([r.id for r in rows], dtype=np.int64)
    g_paths = [r.path for r in rows]
    g_label_names = [r.label for r in rows]
    tau = float(m.temperature if m.temperature is not None else ckpt.temperature)
    image_size = idx.image_size  # the side images are decoded at: the largest of the index's sides
    ours = idx.embedder.placed(device, bf16, o.batch_size)  # the index's own embedding (sides, whitening)
    with timer("gallery vectors"):
        g_ours = idx.vectors(ids)
    index_info = {k: v for k, v in m.index.to_dict().items() if k != "tuning"}
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
    g_root = Path(m.root).resolve()
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

    def ours_feat(imgs: torch.Tensor, desc: str = "embed") -> np.ndarray:
        return ours(imgs, progress=o.progress, desc=desc)

    g_imgs, why_no_imgs = (None, None)
    want_imgs = bool(o.baselines) or g_ours is None
    g_ours_from_images = g_ours is None
    if want_imgs:
        with timer("decode gallery"):
            g_imgs, why_no_imgs = gallery_images(Path(m.root), g_paths, image_size, o.progress)
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

    pixels: tuple[torch.Tensor, torch.Tensor] | None = None  # (gallery features, mean): shared by both pixel rows
    if o.baselines and g_imgs is None:
        notes.append(f"Baselines skipped: {why_no_imgs}.")
    elif o.baselines:
        for b in o.baselines:
            with timer(f"baseline {b}"):
                if b == "reembed":
                    if m.source != "memory_bank" or g_ours_from_images:
                        notes.append("'reembed' skipped: the index's vectors already are embeddings of the gallery "
                                     "images by the checkpoint's encoder.")
                        continue
                    methods[b] = Method(b, torch.from_numpy(ours_feat(g_imgs, "re-embed gallery")),
                                        torch.from_numpy(q_ours) if class_level else None, ours_feat,
                                        note="the checkpoint's encoder applied to the gallery images (evaluation "
                                             "transform) instead of the memory bank's running averages: the "
                                             "paper's final kNN protocol (recomputed memory)")
                elif b == "pixels":
                    pixels = pixels or pixel_features(g_imgs, o.pixel_size)
                    gp, mean = pixels
                    feat = pixel_featuriser(mean, o.pixel_size)
                    methods[b] = Method(b, gp, torch.from_numpy(feat(qc.images)) if class_level else None, feat,
                                        note=f"{min(o.pixel_size, image_size)}x{min(o.pixel_size, image_size)} "
                                             "pixels, gallery mean subtracted, L2-normalised")
                elif b == "pixels-whitened":  # the fairness check: whitening lifts pixels' kNN a lot
                    pixels = pixels or pixel_features(g_imgs, o.pixel_size)
                    gp, mean = pixels
                    w = fit_whitening(gp)
                    feat = pixel_featuriser(mean, o.pixel_size, w)
                    methods[b] = Method(b, w.apply(gp), torch.from_numpy(feat(qc.images)) if class_level else None,
                                        feat, note=f"the raw pixels above, PCA-whitened on the gallery "
                                                   f"({w.proj.shape[1]} axes; instdisc/whitening.py)")
                elif b == "random":
                    enc = ckpt.untrained_encoder(o.seed).to(device)
                    feat = enc_featurise(enc, device, bf16)
                    methods[b] = Method(b, torch.from_numpy(feat(g_imgs, "random: gallery")),
                                        torch.from_numpy(feat(qc.images, "random: queries")) if class_level
                                        else None, feat,
                                        note=f"{ckpt.config.arch} width {ckpt.config.width}, seed {o.seed}, untrained")
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
            near_dup.update(near_duplicates(idx, methods, ids, o, device))
    else:
        near_dup["note"] = "skipped (--near-dup-samples 0)"

    # ---- ANN quality and speed of the index's configured search
    exact_top = ids[ranking["ours"].top_ids[:, : o.ann_k]]
    with timer("ann + batched speed"):
        ann, batched = ann_and_batched(idx, q_ours, exact_top, o)
    with timer("latency"):
        speed = {"batched_vectors": batched, **latency(idx, q_ours, qc, o)}

    # ---- figures
    figures = {}
    with timer("figures"):
        plot_results = {k: v for k, v in results.items() if "knn_curve" in v}
        cifar = set(classes) == set(CIFAR10_CLASSES)
        if plot_results:
            plot_knn_vs_k(json_safe(plot_results), out / "knn_vs_k.png", 80.8 if cifar else None)
            figures["knn_vs_k"] = "knn_vs_k.png"
            plot_pr(json_safe(plot_results), out / "pr_curve.png")
            figures["pr_curve"] = "pr_curve.png"
        try:
            draw_grid(idx, qc, q_labels, g_labels, ids, g_imgs, ranking["ours"], o, out / "retrieval_grid.png")
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
        "index": {"count": n_gallery, "dim": m.dim, "source": m.source, "root": m.root,
                  "type": index_info.get("type"), "factory": index_info.get("factory"),
                  "params": index_info.get("params"), "checkpoint": asdict(m.checkpoint),
                  "architecture": m.architecture.to_dict() if m.architecture else None,
                  "training_knn_top1": m.knn_top1},
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
    report = json_safe(report)
    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / "report.md", render_markdown(report))
    return report
