"""The duplicate finder against perceptual hashing on planted copies (docs/explore.md, results/duplicates/).

For each folder, size and share of planted copies: a seeded sample of the folder's images, one
mild edit (:mod:`instdisc.explore.edits`, kinds in turn) planted for the share, then

* ours: the bundled encoder embedding the images as ``build_index.py --images`` does, the finder at
  its ``auto`` threshold (no flags), expected precision/recall printed by ``auto`` beside the measured;
* pHash (imagehash): every pair within Hamming distance 10 (imagededup's default), 4 and 2.

Both are scored by :func:`benchmarks.planted.score_pairs` on the same images.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from benchmarks.phash import DISTANCES, pairs_within, phashes
from benchmarks.planted import group_pairs, plant_share, score_pairs
from instdisc.bundled import bundled_checkpoint
from instdisc.explore.collection import Collection
from instdisc.explore.explorer import Explorer
from instdisc.explore.featurisers import recipe_embedder
from instdisc.images import is_image_name, load_image
from instdisc.trained import Checkpoint

SHARES = (0.005, 0.05, 0.2)
SIZES = (100, 5000)
EMBED_BATCH = 512


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def folder_sample(root: Path, size: int, seed: int) -> tuple[list, list[str]]:
    """A seeded sample of ``size`` images (all of them if fewer) from ``root``, decoded RGB, with paths."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and is_image_name(p.name))
    if not files:
        raise ValueError(f"{root}: no images")
    rng = np.random.default_rng(seed)
    picked = [files[i] for i in np.sort(rng.choice(len(files), min(size, len(files)), replace=False))]
    return [load_image(f) for f in tqdm(picked, desc="load", unit="img", leave=False)], [
        f.relative_to(root).as_posix() for f in picked]


def in_memory(images: list, paths: list[str], featurise) -> Collection:
    vectors = np.concatenate([featurise(images[i:i + EMBED_BATCH]) for i in range(0, len(images), EMBED_BATCH)])
    n = len(images)
    return Collection(ids=np.arange(n, dtype=np.int64), vectors=vectors.astype(np.float32), paths=paths,
                      labels=[None] * n, splits=[None] * n, widths=[im.width for im in images],
                      heights=[im.height for im in images], load_image=lambda row: images[row], embed=featurise)


def case(originals: list, paths: list[str], share: float, ckpt: Checkpoint, seed: int) -> dict:
    """One planted set: ours at ``auto`` and pHash at each distance."""
    images, pairs = plant_share(originals, share, seed)
    names = paths + [f"planted/{k}/{paths[a]}" for a, _, k in pairs]
    n = len(originals)
    t0 = time.perf_counter()
    coll = in_memory(images, names, recipe_embedder(ckpt, originals))
    t1 = time.perf_counter()
    ex = Explorer(coll, seed=seed, featuriser="bundled")
    dup = ex.duplicates("auto")
    t2 = time.perf_counter()
    cal = dup.calibration
    ours = score_pairs(group_pairs(dup.groups), pairs, n)
    out = {"originals": n, "planted": len(pairs), "share": share,
           "true_share_with_copy": len(pairs) / len(images),
           "ours": {"threshold": cal.threshold, "expected_precision": cal.precision, "expected_recall": cal.recall,
                    "reached": cal.reached, "estimated_share_with_copy": cal.prevalence,
                    "expected_recall_by_edit": cal.recall_by_edit, **asdict(ours), "groups": len(dup.groups),
                    "seconds": {"embed": t1 - t0, "graph_calibrate_group": t2 - t1}}}
    t3 = time.perf_counter()
    hashes = phashes(images, progress=False)
    out["phash_seconds"] = time.perf_counter() - t3
    for d in DISTANCES:
        out[f"phash_le{d}"] = asdict(score_pairs(pairs_within(hashes, d), pairs, n))
    return out


def measure(folders: dict[str, Path], sizes: tuple[int, ...] = SIZES, shares: tuple[float, ...] = SHARES,
            seed: int = 0, record=None) -> list[dict]:
    """Every folder x size x share (see the module doc); rows appended to ``record`` as they finish."""
    torch.set_num_threads(1)
    ckpt = Checkpoint.load(str(bundled_checkpoint()))
    rows = []
    for name, root in folders.items():
        for size in sizes:
            originals, paths = folder_sample(root, size, seed)
            for share in shares:
                t = time.perf_counter()
                row = {"folder": name, "root": str(root), "size": size, **case(originals, paths, share, ckpt, seed),
                       "seconds": time.perf_counter() - t}
                rows.append(row)
                o = row["ours"]
                print(f"{name} {row['originals']} +{row['planted']}: ours t={o['threshold']:.4f} "
                      f"P={o['precision']:.3f} (exp {o['expected_precision']:.3f}) R={o['recall']:.3f} "
                      f"(exp {o['expected_recall']:.3f}) {o['recall_by_edit']} own={o['own_pairs']}; "
                      f"phash<=10 P={row['phash_le10']['precision']:.3f} R={row['phash_le10']['recall']:.3f}",
                      flush=True)
                if record is not None:
                    record.add(row)
                    record.save(partial=True)
    return rows
