"""The duplicate finder against perceptual hashing on planted copies (docs/explore.md, results/duplicates/).

For each folder, size and share of planted copies: a seeded sample of the folder's images, one
mild edit (:mod:`instdisc.explore.edits`, kinds in turn) planted for the share, then

* ours: the bundled encoder that fits the folder (or the one named) embedding the images as
  ``build_index.py --images`` does -- or with another recipe (:data:`RECIPES`: the encoder's native side
  alone, whitened or not, as ``--scales 1 [--no-whiten]`` builds it) -- and the finder at its ``auto``
  threshold (no flags), expected precision/recall printed by ``auto`` beside the measured;
* pHash (imagehash): every pair within Hamming distance 10 (imagededup's default), 4 and 2.

Both are scored by :func:`benchmarks.planted.score_pairs` on the same images.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance
from tqdm import tqdm

from benchmarks.phash import DISTANCES, pairs_within, phashes
from benchmarks.planted import group_pairs, plant_share, score_pairs
from index.build import BuildOptions
from instdisc.bundled import bundled_checkpoint, resolve
from instdisc.explore.calibrate import TARGET_PRECISION
from instdisc.explore.collection import Collection
from instdisc.explore.embeddings import NATIVE_RECIPE
from instdisc.explore.explorer import Explorer
from instdisc.explore.featurisers import recipe_embedder
from instdisc.explore.reports import write_duplicates
from instdisc.images import is_image_name, load_image
from instdisc.resolution import sample_sizes
from instdisc.trained import Checkpoint

SHARES = (0.005, 0.05, 0.2)
# how the images become vectors: the index's own recipe, or the encoder's native side alone (what copies need:
# no 1.5x enlargement that blurs the edits' differences away, no whitening fitted for class search)
RECIPES = {"index": BuildOptions(), "native": NATIVE_RECIPE,  # native: what find_duplicates --embedding native scores
           "native-whitened": BuildOptions(scales=NATIVE_RECIPE.scales, whiten=True)}
SIZES = (100, 5000)
# the fixed thresholds of the curve beside ``auto`` (its best point keeps auto's target precision)
CURVE_THRESHOLDS = np.round(np.arange(0.85, 0.99999, 0.0025), 4)
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


def case(originals: list, paths: list[str], share: float, ckpt: Checkpoint, seed: int,
         recipe: str = "index") -> dict:
    """One planted set: ours (``recipe`` of :data:`RECIPES`) at ``auto`` and pHash at each distance."""
    images, pairs = plant_share(originals, share, seed)
    names = paths + [f"planted/{k}/{paths[a]}" for a, _, k in pairs]
    n = len(originals)
    t0 = time.perf_counter()
    coll = in_memory(images, names, recipe_embedder(ckpt, originals, RECIPES[recipe]))
    t1 = time.perf_counter()
    ex = Explorer(coll, seed=seed, featuriser="bundled")
    dup = ex.duplicates("auto")
    t2 = time.perf_counter()
    cal = dup.calibration
    ours = score_pairs(group_pairs(dup.groups), pairs, n)
    out = {"originals": n, "planted": len(pairs), "share": share,
           "true_share_with_copy": len(pairs) / len(images),
           "ours": {"threshold": cal.threshold, "expected_precision": dup.expected_precision,
                    "expected_recall": dup.expected_recall, "reached": cal.reached,
                    "estimated_share_with_copy": cal.prevalence,
                    "expected_recall_by_edit": cal.pixel_recall_by_edit or cal.recall_by_edit,
                    "embedding_alone": {"expected_precision": cal.precision, "expected_recall": cal.recall,
                                        "expected_recall_by_edit": cal.recall_by_edit},
                    "pixel_check": None if dup.pixel is None else {
                        "floor": dup.pixel.floor, "threshold": dup.pixel.threshold,
                        "band_pairs": dup.pixel.band_pairs, "checked": dup.pixel.checked,
                        "passed": len(dup.pixel.pairs), "seconds": dup.pixel.seconds},
                    **asdict(ours), "groups": len(dup.groups),
                    "seconds": {"embed": t1 - t0, "graph_calibrate_group": t2 - t1}}}
    out["ours"]["curve"] = threshold_curve(ex, pairs, n)
    best = [c for c in out["ours"]["curve"] if c["precision"] >= TARGET_PRECISION]
    out["ours"]["best_at_target"] = max(best, key=lambda c: (c["recall"], -c["threshold"])) if best else None
    t3 = time.perf_counter()
    hashes = phashes(images, progress=False)
    out["phash_seconds"] = time.perf_counter() - t3
    for d in DISTANCES:
        out[f"phash_le{d}"] = asdict(score_pairs(pairs_within(hashes, d), pairs, n))
    return out


def threshold_curve(ex: Explorer, pairs: list[tuple[int, int, str]], originals: int) -> list[dict]:
    """The finder at fixed thresholds (similar tier off) on the same vectors: what the best threshold could
    give, so that a miss at ``auto`` reads as the threshold's fault or the embedding's."""
    rows = []
    for t in CURVE_THRESHOLDS:
        s = score_pairs(group_pairs(ex.duplicates(float(t), similar="off").groups), pairs, originals)
        rows.append({"threshold": float(t), "precision": s.precision, "recall": s.recall,
                     "recall_by_edit": s.recall_by_edit, "own_pairs": s.own_pairs})
    return rows


def folder_encoder(root: Path, encoder: str) -> Path:
    """``encoder`` as ``build_index.py --checkpoint`` reads it: ``general`` chooses by the folder's image sizes."""
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and is_image_name(p.name))
    return resolve(encoder, sample_sizes(root, files))


def measure(folders: dict[str, Path], sizes: tuple[int, ...] = SIZES, shares: tuple[float, ...] = SHARES,
            seed: int = 0, record=None, encoder: str = "general", recipes: tuple[str, ...] = ("index",)) -> list[dict]:
    """Every folder x size x share x recipe (see the module doc); rows appended to ``record`` as they finish."""
    torch.set_num_threads(1)
    rows = []
    for name, root in folders.items():
        path = folder_encoder(root, encoder)
        ckpt = Checkpoint.load(str(path))
        for size in sizes:
            originals, paths = folder_sample(root, size, seed)
            for share, recipe in ((s, r) for s in shares for r in recipes):
                t = time.perf_counter()
                row = {"folder": name, "root": str(root), "size": size, "encoder": path.parent.name
                       if path.parent.parent.name == "models" else str(path), "encoder_sha256": ckpt.sha256,
                       "recipe": recipe, **case(originals, paths, share, ckpt, seed, recipe),
                       "seconds": time.perf_counter() - t}
                rows.append(row)
                o = row["ours"]
                print(f"{name} {row['originals']} +{row['planted']} {row['encoder']} {recipe}: "
                      f"ours t={o['threshold']:.4f} "
                      f"P={o['precision']:.3f} (exp {o['expected_precision']:.3f}) R={o['recall']:.3f} "
                      f"(exp {o['expected_recall']:.3f}) {o['recall_by_edit']} own={o['own_pairs']}; "
                      f"phash<=10 P={row['phash_le10']['precision']:.3f} R={row['phash_le10']['recall']:.3f}",
                      flush=True)
                if record is not None:
                    record.add(row)
                    record.save(partial=True)
    return rows


def markdown_table(rows: list[dict]) -> str:
    """docs/explore.md's table: per planted set, ours at ``auto`` (expected beside measured, the pixel check's
    share of its band) and pHash <= 10 on the same images.

    Example:
        >>> rows = json.loads(Path("results/duplicates/planted_5000.json").read_text())["results"]  # doctest: +SKIP
        >>> print(markdown_table(rows))  # doctest: +SKIP
    """
    out = ["| folder (encoder, vectors) | originals + copies | `auto` threshold | pixel check: passed / pairs in "
           "band | precision (expected) | precision, a copy's pairs in its original's group right | precision, "
           "own pairs counted false | recall (expected) | crop / colour / JPEG / resize recall | pHash ≤ 10: "
           "precision, recall; crop |",
           "|---|---|---|---|---|---|---|---|---|---|"]

    def kinds(s: dict) -> str:
        by = s["recall_by_edit"]
        return " / ".join(f"{by[k]:.2f}" if k in by else "-" for k in ("crop", "colour", "jpeg", "resize"))

    for r in rows:
        o, p = r["ours"], r["phash_le10"]
        check = o.get("pixel_check")
        band = f"{check['passed']:,} / {check['band_pairs']:,}" if check else "-"
        crop = f"{p['recall_by_edit']['crop']:.2f}" if "crop" in p["recall_by_edit"] else "-"
        grouped = f"{o['precision_original_grouped']:.3f}" if "precision_original_grouped" in o else "-"
        out.append(f"| {r['folder']} ({r['encoder']}, {r['recipe']}) | {r['originals']:,} + {r['planted']:,} | "
                   f"{o['threshold']:.4f} | {band} | "
                   f"{o['precision']:.3f} ({o['expected_precision']:.3f}) | {grouped} | {o['precision_all']:.3f} | "
                   f"{o['recall']:.3f} ({o['expected_recall']:.3f}) | {kinds(o)} | {p['precision']:.3f}, "
                   f"{p['recall']:.3f}; {crop} |")
    return "\n".join(out)


def edited_copy(img: Image.Image) -> bytes:
    """Resized to 40 px, brightness x1.15, JPEG quality 60 (the one copy of the 101-image folder)."""
    out = ImageEnhance.Brightness(img.convert("RGB").resize((40, 40), Image.Resampling.BICUBIC)).enhance(1.15)
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=60)
    return buf.getvalue()


def folder_101(test_dir: Path, work: Path, seed: int = 0) -> dict:
    """100 seeded images of ``test_dir`` plus one edited copy of the first, indexed with the bundled encoder
    (as ``build_index.py --images``) and searched for duplicates at ``auto``, as a new user would."""
    from index.build import BuildOptions, build

    files = sorted(p for p in test_dir.rglob("*") if p.is_file() and is_image_name(p.name))
    picked = [files[i] for i in np.random.default_rng(seed).choice(len(files), 100, replace=False)]
    imgs = work / "images"
    imgs.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(picked):
        shutil.copy(f, imgs / f"{i:03d}{f.suffix}")
    (imgs / "copy.jpg").write_bytes(edited_copy(load_image(picked[0])))
    build(bundled_checkpoint(), work / "index", images=imgs, options=BuildOptions(progress=False), overwrite=True)
    t = time.perf_counter()
    ex = Explorer.open(work / "index")
    dup = ex.duplicates("auto")
    paths = write_duplicates(work / "report", ex.collection, dup)
    v, names = ex.collection.vectors, [Path(p).name for p in ex.collection.paths]
    a, b = names.index(f"000{picked[0].suffix}"), names.index("copy.jpg")
    nearest_other = np.sort((v[b] @ v.T)[[i for i in range(len(v)) if i not in (a, b)]])[-1]
    return {"originals": [str(f) for f in picked], "copy_of": str(picked[0]),
            "copy_score_to_original": float(v[a] @ v[b]), "copy_score_to_nearest_other": float(nearest_other),
            "summary": dup.calibration.summary(), "threshold": dup.threshold,
            "groups": [[names[r] for r in g.rows] for g in dup.groups],
            "tiers": {t: c.to_dict() for t, c in dup.tier_counts().items()},
            "calibration": dup.calibration.to_dict(), "seconds": time.perf_counter() - t,
            "report": {k: str(p) for k, p in paths.items()}}
