"""The measurements behind docs/explore.md, small enough for a busy 2-core machine.

* ``planted``: a seeded CIFAR-10 subset (train and test originals), edited copies of test
  images planted (:mod:`benchmarks.planted`), the finder's precision/recall at its ``auto``
  threshold for each featuriser (raw pixels, a random-init encoder, a trained checkpoint),
  the cross-split groups it reports, and cluster purity / NMI against the labels;
* ``timing``: the duplicate finder, k-means and PCA on N synthetic clustered vectors.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.planted import PLANTED, evaluate_planted
from index.build import BuildOptions, build_sides
from index.synthetic import clustered_unit_vectors
from instdisc.conventions import unwrap
from instdisc.data import resolve_source
from instdisc.explore.clusters import cluster
from instdisc.explore.collection import Embed
from instdisc.explore.featurisers import encoder_embedder, pixel_embedder, recipe_embedder
from instdisc.explore.grouping import chain_guard, group_duplicates
from instdisc.explore.neighbours import K, knn_graph
from instdisc.explore.projection import project
from instdisc.explore.reports import SHEET_GROUPS, group_members, group_sheet
from instdisc.explore.similar import similar_tier
from instdisc.images import is_image_name, load_image
from instdisc.trained import Checkpoint

TRAIN_IMAGES = 4000
TEST_IMAGES = 1000
CIFAR_CLASSES = 10


def machine() -> dict:
    return {"cpus": os.cpu_count(), "load_avg": list(os.getloadavg()), "python": platform.python_version(),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M")}


def cifar_subset(source: str, train: int, test: int, seed: int) -> tuple[list, list, list, list]:
    """Seeded ``train`` + ``test`` images of a ``train/<class>/``, ``test/<class>/`` collection (folder or
    archive), as PIL with labels, splits and paths; only the sampled files are decoded."""
    root = unwrap(resolve_source(source))  # an archive's lone top folder (the photo subset has one)
    rng = np.random.default_rng(seed)
    imgs, labels, splits, paths = [], [], [], []
    for split, n in (("train", train), ("test", test)):
        files = sorted(p for p in (root / split).rglob("*") if p.is_file() and is_image_name(p.name))
        if not files:
            raise ValueError(f"{source}: no images under {split}/")
        for i in np.sort(rng.choice(len(files), min(n, len(files)), replace=False)).tolist():
            imgs.append(load_image(files[i]))
            labels.append(files[i].parent.name)
            splits.append(split)
            paths.append(files[i].relative_to(root).as_posix())
    return imgs, labels, splits, paths


def featurisers(imgs: list[Image.Image], checkpoint: str | None, seed: int) -> dict[str, tuple[Embed, str]]:
    out = {"pixels": (pixel_embedder(imgs), "raw pixels, mean-subtracted, 32 px")}
    if checkpoint:
        ck = Checkpoint.load(checkpoint)
        out["random-init"] = (encoder_embedder(ck.untrained_encoder(seed), ck.architecture.image_size),
                              f"{ck.architecture.arch} width {ck.architecture.width}, untrained (seed {seed})")
        out["ours"] = (recipe_embedder(ck, imgs),  # as its index embeds (sides, whitening)
                       f"{checkpoint} (epoch {ck.epoch}, kNN {ck.knn_top1}), embedded at "
                       f"{' + '.join(map(str, sorted(build_sides(ck, BuildOptions()))))} px"
                       + (" and whitened" if ck.config.index_whiten else ""))
    return out


def planted(source: str, checkpoint: str | None, out_dir: Path, train: int = TRAIN_IMAGES, test: int = TEST_IMAGES,
            plant: int = PLANTED, seed: int = 0) -> dict:
    """The planted-duplicate evaluation and cluster agreement per featuriser; a cross-split sheet each."""
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    imgs, labels, splits, paths = cifar_subset(source, train, test, seed)
    res: dict = {"source": source, "train_images": train, "test_images": test, "machine": machine(),
                 "load_seconds": time.perf_counter() - t0, "featurisers": {}}
    for name, (feat, what) in featurisers(imgs, checkpoint, seed).items():
        r, ex, dup = evaluate_planted(imgs, labels, splits, paths, feat, name, plant, seed=seed)
        c10 = cluster(ex.collection.vectors[:len(imgs)], CIFAR_CLASSES, labels, seed)
        entry = {"what": what, **r.to_dict(), "calibration": ex.calibration().to_dict(),
                 "clusters_k10": {"purity": c10.purity, "nmi": c10.nmi, "seconds": c10.seconds}}
        cross = dup.extra["cross_split_groups"]
        if cross:
            picked = [dup.groups[i] for i in cross[:SHEET_GROUPS]]
            dup.groups = picked
            members = group_members(ex.collection, dup)
            sheet = group_sheet(ex.collection, members, [f"{name}: " + " + ".join(m.path for m in ms[:3])
                                                        for ms in members])
            sheet_path = out_dir / f"cross_split_{name}.png"
            sheet_path.parent.mkdir(parents=True, exist_ok=True)
            sheet.save(sheet_path)
            entry["cross_split_sheet"] = str(sheet_path)
            entry["cross_split_examples"] = [[m.path for m in ms] for ms in members[:10]]
        res["featurisers"][name] = entry
    res["total_seconds"] = time.perf_counter() - t0
    return res


SYNTHETIC_COPIES = 0.01  # share of the timing vectors that are near copies (cosine ~0.95) of another
COPY_NOISE = 0.03  # per-coordinate noise of a copy: |noise| ~ 0.34 for 128-d, cosine ~0.95


def timing(n: int, threshold: float = 0.9, seed: int = 0) -> dict:
    """Wall time of each exploration step on ``n`` synthetic clustered 128-d unit vectors, 1 % of
    them near copies of others (so grouping has real work)."""
    copies = int(n * SYNTHETIC_COPIES)
    base = clustered_unit_vectors(n - copies, seed=seed)
    rng = np.random.default_rng(seed + 1)
    c = base[rng.choice(len(base), copies, replace=False)] + COPY_NOISE * rng.standard_normal(
        (copies, base.shape[1])).astype(np.float32)
    v = np.concatenate([base, c / np.linalg.norm(c, axis=1, keepdims=True)]).astype(np.float32)
    out: dict = {"n": n, "planted_copies": copies, "dim": int(v.shape[1]), "k": K, "threshold": threshold,
                 "machine": machine(), "faiss_threads": __import__("faiss").omp_get_max_threads()}
    t = time.perf_counter()
    g = knn_graph(v, seed=seed)
    out["knn_graph"] = {"seconds": time.perf_counter() - t, "method": g.method}
    t = time.perf_counter()
    groups = group_duplicates(g, v, threshold, chain_guard(threshold))
    owner = {r: i for i, x in enumerate(groups) for r in x.rows}
    found = sum(r in owner for r in range(n - copies, n))
    out["grouping"] = {"seconds": time.perf_counter() - t, "groups": len(groups),
                       "images_in_groups": int(sum(x.size for x in groups)), "planted_copies_grouped": found}
    t = time.perf_counter()
    tier = similar_tier(g, v, set(owner), threshold)  # the finder's default: the similar tier at auto
    out["similar_tier"] = {"seconds": time.perf_counter() - t, "threshold": tier.threshold,
                           "groups": len(tier.groups)}
    t = time.perf_counter()
    c = cluster(v, "auto", None, seed)
    out["clusters_auto"] = {"seconds": time.perf_counter() - t, "k": c.k}
    t = time.perf_counter()
    project(v, "pca", seed)
    out["pca"] = {"seconds": time.perf_counter() - t}
    out["total_seconds"] = sum(out[k]["seconds"] for k in ("knn_graph", "grouping", "similar_tier", "clusters_auto",
                                                           "pca"))
    return out
