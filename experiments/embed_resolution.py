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

The index options are scored the same way (``index/embedding.py``): ``--combine 1,1.5`` averages
the unit vectors of two sides (``build_index.py --scales 1 1.5``; here each side decoded on its own,
the index resizes down from the largest), and every row also reports database-side augmentation
of the gallery (each gallery vector replaced by its 10 nearest, weighted by similarity³; a
retrieval habit measured here, not an index option).
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
import torch.nn.functional as F
from PIL import Image

from experiments.efficiency import machine, score
from instdisc.config import embed_size
from instdisc.data import load_splits
from instdisc.embed import embed
from instdisc.evaluation.metrics import rank_of_targets
from instdisc.evaluation.near_duplicates import strong_augment
from instdisc.fsutil import atomic_write_text
from instdisc.images import fit_square, nchw
from instdisc.plots import save_png
from instdisc.runtime import use_bf16
from instdisc.trained import Checkpoint
from instdisc.whitening import fit_whitening

DBA_K, DBA_ALPHA = 10, 3.0  # database-side augmentation: neighbours summed (self included), weight sim^alpha
NEAR_DUP_SAMPLES = 500  # edited copies of training images queried at every side (as scripts/evaluate.py does)


def edited_copies(train: torch.Tensor, n: int, seed: int = 0) -> tuple[list[Image.Image], torch.Tensor]:
    """``n`` seeded training images, each as a strongly edited copy (the evaluation's near-duplicate
    edit, :func:`instdisc.evaluation.near_duplicates.strong_augment`), and their rows."""
    rows = np.sort(np.random.default_rng(seed + 1).choice(len(train), min(n, len(train)), replace=False))
    edited = [strong_augment(Image.fromarray(train[int(i)].permute(1, 2, 0).numpy()),
                             random.Random(seed * 1_000_003 + int(i)))[0] for i in rows]
    return edited, torch.from_numpy(rows)


def near_duplicate_top1(queries: torch.Tensor, rows: torch.Tensor, gallery: torch.Tensor) -> dict:
    """How often (per cent) edited copy i (``queries`` row i) finds its original (gallery row ``rows[i]``) first /
    in the top 10 of ``gallery``."""
    r = rank_of_targets(queries, gallery, rows).numpy()
    return {"top1": 100 * float((r == 0).mean()), "top10": 100 * float((r < 10).mean())}


def database_side_augmentation(gallery: torch.Tensor, k: int = DBA_K, alpha: float = DBA_ALPHA) -> torch.Tensor:
    """Each gallery row replaced by the sum of its ``k`` nearest rows (itself included) weighted by
    similarity^alpha, re-normalised (Arandjelović & Zisserman 2012; Radenović et al. 2018's alpha-DBA)."""
    rows = []
    for i in range(0, len(gallery), 4096):
        sims, idx = (gallery[i : i + 4096] @ gallery.T).topk(k, dim=1)
        rows.append(F.normalize((sims.clamp_min(0).pow(alpha).unsqueeze(-1) * gallery[idx]).sum(1), dim=1))
    return torch.cat(rows)


def scored(g: torch.Tensor, q: torch.Tensor, e: torch.Tensor | None, test, train, targets: torch.Tensor) -> dict:
    """kNN / 1-NN / mAP (+ near-duplicates when ``e`` is given) as they are, PCA-whitened on the gallery, and
    with database-side augmentation of the gallery (queries as they are)."""
    nc = len(train.classes)
    whitening = fit_whitening(g)
    g_w, g_dba = whitening.apply(g), database_side_augmentation(g)
    row = {**score(q, test.labels, g, train.labels, nc),
           "whitened": score(whitening.apply(q), test.labels, g_w, train.labels, nc),
           f"dba{DBA_K}": score(q, test.labels, g_dba, train.labels, nc)}
    if e is not None:
        row["near_duplicate"] = near_duplicate_top1(e, targets, g)
        row["whitened"]["near_duplicate"] = near_duplicate_top1(whitening.apply(e), targets, g_w)
        row[f"dba{DBA_K}"]["near_duplicate"] = near_duplicate_top1(e, targets, g_dba)
    return row


def _near_dup_text(r: dict) -> str:
    return f", edited copy first {r['near_duplicate']['top1']:.1f}" if "near_duplicate" in r else ""


def describe(name: str, row: dict) -> str:
    w, d = row["whitened"], row[f"dba{DBA_K}"]
    nd = _near_dup_text
    return (f"{name}: kNN {row['knn']:.2f} 1-NN {row['nn1']:.2f} mAP {row['map']:.2f}{nd(row)}; PCA-whitened "
            f"{w['knn']:.2f} / {w['nn1']:.2f} / {w['map']:.2f}{nd(w)}; DBA {d['knn']:.2f} / {d['nn1']:.2f} / "
            f"{d['map']:.2f}{nd(d)}")


def measure(ckpt: Checkpoint, data: str, scales: list[float], flip: bool, progress: bool,
            near_dup: int = NEAR_DUP_SAMPLES, combos: list[tuple[float, ...]] = ()) -> dict:
    train_side = ckpt.config.image_size
    train, test = load_splits(data, train_side, progress=progress)
    if test is None or not test.has_labels or not train.has_labels:
        raise SystemExit(f"{data}: needs labelled train/ and test/ splits to score")
    plain = ckpt.encoder()
    mirrored = copy.deepcopy(plain)
    mirrored.flip_average = True  # the encoder's own flip averaging (--flip-embed)
    bf16 = use_bf16(torch.device("cpu"), "auto")
    edited, targets = edited_copies(train.images, near_dup)
    rows, feats = [], {}
    for scale in scales:
        side = embed_size(replace(ckpt.config, embed_scale=scale))
        for flipped in ((False, True) if flip else (False,)):
            enc = mirrored if flipped else plain
            t0 = time.time()
            g = embed(enc, train.at_eval_size(side).images, bf16=bf16)
            q = embed(enc, test.at_eval_size(side).images, bf16=bf16)
            # edited copies decoded at this side like an app query (plain encoder only)
            e = None if flipped else embed(enc, nchw(np.stack([fit_square(x, side) for x in edited])), bf16=bf16)
            if not flipped:
                feats[scale] = (g, q, e)
            row = {"scale": scale, "side": side, "flip": flipped, **scored(g, q, e, test, train, targets),
                   "seconds": round(time.time() - t0, 1)}
            print(describe(f"side {side} ({scale:g}x){' flip' if flipped else ''}", row), flush=True)
            rows.append(row)
    combined = []
    for combo in combos:  # the index's --scales: unit vectors at several sides summed, re-normalised
        missing = [c for c in combo if c not in feats]
        if missing:
            raise SystemExit(f"--combine {combo}: scales {missing} are not among --scales {scales}")
        g, q, e = (F.normalize(sum(feats[c][i] for c in combo), dim=1) for i in range(3))
        sides = [embed_size(replace(ckpt.config, embed_scale=c)) for c in combo]
        row = {"scales": list(combo), "sides": sides, **scored(g, q, e, test, train, targets)}
        print(describe(f"sides {' + '.join(map(str, sides))} averaged", row), flush=True)
        combined.append(row)
    return {"checkpoint": str(ckpt.path), "sha256": ckpt.sha256, "data": str(data), "train_side": train_side,
            "trained_embed_side": embed_size(ckpt.config), "train_images": len(train), "test_images": len(test),
            "rows": rows, "combined": combined,
            "machine": machine(), "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}


def plot(result: dict, path: Path) -> None:
    from instdisc.plots import pyplot

    plt = pyplot()

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
    p.add_argument("--combine", nargs="+", default=[], metavar="S1,S2",
                   help="also score the unit vectors at these --scales averaged (build_index.py --scales S1 S2)")
    p.add_argument("--out", type=Path, required=True, help="JSON path; the plot goes beside it (.png)")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    if any(s < 1 for s in args.scales):
        raise SystemExit(f"--scales must be >= 1, got {args.scales}")
    try:
        combos = [tuple(float(x) for x in c.split(",")) for c in args.combine]
    except ValueError:
        raise SystemExit(f"--combine takes comma-separated scales (e.g. 1,1.5), got {args.combine}") from None
    result = measure(Checkpoint.load(args.checkpoint), args.data, args.scales, args.flip, args.progress,
                     combos=combos)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=1))
    plot(result, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
