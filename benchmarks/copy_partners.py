"""The planted copies the finder groups with an image other than their original, shown: is that other
image a duplicate of the original (the folder's own), or a mistake?

The strict precision of :func:`benchmarks.planted.score_pairs` counts a copy's pair with anything but its
original as false; where the original has a duplicate of its own in the folder (a re-scan, the same photo
filed twice), the copy is a duplicate of that one too. This writes, for one planted set measured as
``scripts/measure_explore.py duplicates`` does, every such pair as a contact-sheet row (original, copy,
the other image) with the other image's pixel-check score and pHash distance against the original, so the
pairs can be judged by eye and by a measure independent of the embedding:

    python benchmarks/copy_partners.py --folder data/caltech-heldout --size 1319 --share 0.05 --encoder photo \\
        --out results/duplicates/copy_partners_heldout_5pct
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.duplicates_measure import RECIPES, folder_encoder, folder_sample, in_memory
from benchmarks.phash import phashes, popcount
from benchmarks.planted import group_pairs, plant_share
from instdisc.explore.explorer import Explorer
from instdisc.explore.featurisers import recipe_embedder
from instdisc.explore.pixelcheck import THRESHOLD, pair_score
from instdisc.explore.sheets import SheetRow, contact_sheet
from instdisc.trained import Checkpoint


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folder", type=Path, required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--share", type=float, required=True)
    p.add_argument("--encoder", default="general")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    originals, paths = folder_sample(args.folder, args.size, args.seed)
    ckpt = Checkpoint.load(str(folder_encoder(args.folder, args.encoder)))
    images, pairs = plant_share(originals, args.share, args.seed)
    n = len(originals)
    names = paths + [f"planted/{k}/{paths[a]}" for a, _, k in pairs]
    ex = Explorer(in_memory(images, names, recipe_embedder(ckpt, originals, RECIPES["index"])), seed=args.seed)
    reported = group_pairs(ex.duplicates("auto").groups)
    original = {c: a for a, c, _ in pairs}
    hashes = phashes(images, progress=False)
    rows, sheet = [], []
    for a, b in sorted(reported):
        if b not in original or a == original[b]:
            continue
        o = original[b]
        row = {"original": names[o], "copy": names[b], "other": names[a],
               "other_original_pixel_score": pair_score(images[a], images[o]),
               "other_original_phash_distance": int(popcount(hashes[a:a + 1] ^ hashes[o:o + 1])[0]),
               "other_original_grouped": (min(a, o), max(a, o)) in reported}
        rows.append(row)
        sheet.append(SheetRow(f"{names[b]}: pixel {row['other_original_pixel_score']:.2f}, pHash "
                              f"{row['other_original_phash_distance']}", [images[o], images[b], images[a]],
                              ["original", "copy", "other"]))
    args.out.mkdir(parents=True, exist_ok=True)
    if sheet:
        contact_sheet(sheet, tile=128).save(args.out / "contact_sheet.png")
    summary = {"command": " ".join(["python benchmarks/copy_partners.py", *(argv or [])]), "folder": str(args.folder),
               "size": n, "share": args.share, "encoder_sha256": ckpt.sha256, "pairs": rows,
               "with_copy_pairs": sum(b in original for _, b in reported),
               "other_is_pixel_duplicate": sum(r["other_original_pixel_score"] >= THRESHOLD for r in rows),
               "other_within_phash_10": sum(r["other_original_phash_distance"] <= 10 for r in rows)}
    (args.out / "pairs.json").write_text(json.dumps(summary, indent=1))
    print(f"{len(rows)} copy pairs with an image other than the original; the other is the original's duplicate "
          f"by pixels in {summary['other_is_pixel_duplicate']}, within pHash 10 in {summary['other_within_phash_10']}")
    return summary


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
