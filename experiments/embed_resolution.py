"""At which side should a trained encoder embed whole images? (``TrainConfig.embed_scale``)

    python experiments/embed_resolution.py --checkpoint runs/cpu-cifar-fast/checkpoint.pt \
        --data ../shared/datasets/cifar10-jpeg.tar.gz --scales 1 1.25 1.375 1.5 1.75 2 \
        --out results/embed_resolution/cifar10-42min.json

Training sees random-resized crops, which show an object larger than the whole image does at
the same side; the network then recognises whole images best when they are enlarged (Touvron
et al., "Fixing the train-test resolution discrepancy", arXiv 1906.06423). This measures it on a
finished checkpoint, with no retraining: the training split (the gallery) and the test split
(the queries) are decoded at the checkpoint's training side, resized to ``scale`` x that side
(antialiased bilinear, :func:`instdisc.images.resize_squares`, as the trainer's bank refresh
does), embedded, and scored like every efficiency run (weighted kNN k = 200, 1-NN, full-ranking
mAP; ``experiments/efficiency.py``), as they are and PCA-whitened on the gallery
(``instdisc/whitening.py``), optionally flip-averaged too; and instance-level retrieval:
500 seeded training images, each strongly edited as ``scripts/evaluate.py``'s near-duplicate
test does, decoded at that side like an app query, how often the original comes back first.
Writes the JSON and a plot of the four against the embedding side.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from evaluation.metrics import rank_of_targets
from evaluation.near_duplicates import strong_augment
from experiments.efficiency import machine, score
from instdisc.config import embed_size
from instdisc.data import load_splits
from instdisc.embed import embed
from instdisc.fsutil import atomic_write_text
from instdisc.images import fit_square, nchw
from instdisc.plots import save_png
from instdisc.runtime import use_bf16
from instdisc.trained import Checkpoint
from instdisc.whitening import fit_whitening

NEAR_DUP_SAMPLES = 500  # edited copies of training images queried at every side (as scripts/evaluate.py does)


def edited_copies(train: torch.Tensor, n: int, seed: int = 0) -> tuple[list[Image.Image], torch.Tensor]:
    """``n`` seeded training images, each as a strongly edited copy (the evaluation's near-duplicate
    edit, :func:`evaluation.near_duplicates.strong_augment`), and their rows."""
    rows = np.sort(np.random.default_rng(seed + 1).choice(len(train), min(n, len(train)), replace=False))
    edited = [strong_augment(Image.fromarray(train[int(i)].permute(1, 2, 0).numpy()),
                             random.Random(seed * 1_000_003 + int(i)))[0] for i in rows]
    return edited, torch.from_numpy(rows)


def near_duplicate_top1(queries: torch.Tensor, rows: torch.Tensor, gallery: torch.Tensor) -> dict:
    """How often (per cent) edited copy i (``queries`` row i) finds its original (gallery row ``rows[i]``) first /
    in the top 10 of ``gallery``."""
    r = rank_of_targets(queries, gallery, rows).numpy()
    return {"top1": 100 * float((r == 0).mean()), "top10": 100 * float((r < 10).mean())}


def measure(ckpt: Checkpoint, data: str, scales: list[float], flip: bool, progress: bool,
            near_dup: int = NEAR_DUP_SAMPLES) -> dict:
    train_side = ckpt.config.image_size
    train, test = load_splits(data, train_side, progress=progress)
    if test is None or not test.has_labels or not train.has_labels:
        raise SystemExit(f"{data}: needs labelled train/ and test/ splits to score")
    plain = ckpt.encoder()
    mirrored = copy.deepcopy(plain)
    mirrored.flip_average = True  # the encoder's own flip averaging (--flip-embed)
    bf16 = use_bf16(torch.device("cpu"), "auto")
    nc = len(train.classes)
    edited, targets = edited_copies(train.images, near_dup)
    rows = []
    for scale in scales:
        side = embed_size(replace(ckpt.config, embed_scale=scale))
        for flipped in ((False, True) if flip else (False,)):
            enc = mirrored if flipped else plain
            t0 = time.time()
            g = embed(enc, train.at_eval_size(side).images, bf16=bf16)
            q = embed(enc, test.at_eval_size(side).images, bf16=bf16)
            whitening = fit_whitening(g)
            g_w = whitening.apply(g)
            row = {"scale": scale, "side": side, "flip": flipped, **score(q, test.labels, g, train.labels, nc),
                   "whitened": score(whitening.apply(q), test.labels, g_w, train.labels, nc)}
            if not flipped:  # edited copies decoded at this side like an app query
                e = embed(enc, nchw(np.stack([fit_square(x, side) for x in edited])), bf16=bf16)
                row["near_duplicate"] = near_duplicate_top1(e, targets, g)
                row["whitened"]["near_duplicate"] = near_duplicate_top1(whitening.apply(e), targets, g_w)
            row["seconds"] = round(time.time() - t0, 1)
            w = row["whitened"]
            print(f"side {side} ({scale:g}x){' flip' if flipped else ''}: kNN {row['knn']:.2f} 1-NN {row['nn1']:.2f} "
                  f"mAP {row['map']:.2f}; PCA-whitened {w['knn']:.2f} / {w['nn1']:.2f} / {w['map']:.2f}"
                  + (f"; edited copy first {row['near_duplicate']['top1']:.1f}" if not flipped else ""), flush=True)
            rows.append(row)
    return {"checkpoint": str(ckpt.path), "sha256": ckpt.sha256, "data": str(data), "train_side": train_side,
            "trained_embed_side": embed_size(ckpt.config), "train_images": len(train), "test_images": len(test),
            "rows": rows, "machine": machine(), "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
    panels = [("knn", "weighted kNN (k=200) %"), ("nn1", "1-NN %"), ("map", "mAP %")]
    for ax, (key, title) in zip(axes[:3], panels, strict=True):
        for flipped in sorted({r["flip"] for r in result["rows"]}):
            rows = [r for r in result["rows"] if r["flip"] == flipped]
            name = "flip-averaged" if flipped else "plain"
            ax.plot([r["side"] for r in rows], [r[key] for r in rows], "o-", label=name)
            ax.plot([r["side"] for r in rows], [r["whitened"][key] for r in rows], "x--", label=name + ", whitened")
        ax.axvline(result["train_side"], color="grey", ls=":", lw=1)
        ax.set_xlabel("embedding side (px); dotted: training side")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    plain = [r for r in result["rows"] if not r["flip"]]
    axes[3].plot([r["side"] for r in plain], [r["near_duplicate"]["top1"] for r in plain], "o-", label="top-1")
    axes[3].plot([r["side"] for r in plain], [r["near_duplicate"]["top10"] for r in plain], "s-", label="top-10")
    axes[3].axvline(result["train_side"], color="grey", ls=":", lw=1)
    axes[3].set_xlabel("embedding side (px)")
    axes[3].set_title("edited copy finds its original %")
    axes[3].grid(alpha=0.3)
    axes[3].legend()
    axes[0].legend()
    fig.suptitle(f"{Path(result['data']).name}: one checkpoint embedded at several sides", fontsize=10)
    fig.tight_layout()
    save_png(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="a folder or archive with labelled train/ and test/")
    p.add_argument("--scales", nargs="+", type=float, default=[1.0, 1.25, 1.5, 1.75])
    p.add_argument("--flip", action="store_true", help="also score flip-averaged embeddings at every side")
    p.add_argument("--out", type=Path, required=True, help="JSON path; the plot goes beside it (.png)")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    if any(s < 1 for s in args.scales):
        raise SystemExit(f"--scales must be >= 1, got {args.scales}")
    result = measure(Checkpoint.load(args.checkpoint), args.data, args.scales, args.flip, args.progress)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=1))
    plot(result, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
