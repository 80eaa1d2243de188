"""Measure the exploration tools (docs/explore.md); JSON to results/explore/.

    python scripts/measure_explore.py planted --data ../shared/datasets/cifar10-jpeg.tar.gz \
        [--checkpoint RUN/checkpoint.pt] [--train 4000 --test 1000 --plant 200] --out results/explore/planted.json
    python scripts/measure_explore.py timing --n 50000 --out results/explore/timing_50k.json
    python scripts/measure_explore.py duplicates --folder cifar10=data/cifar10 \
        --folder photos=data/caltech101-half [--sizes 100 5000 --shares 0.005 0.05 0.2] \
        --out results/duplicates/planted.json      # the finder at auto against pHash (imagehash)
    python scripts/measure_explore.py folder101 --data data/cifar10/test --work /tmp/folder101 \
        --out results/duplicates/folder_101/result.json   # 100 images + 1 edited copy, bundled encoder
"""

import argparse
import json
import sys
from pathlib import Path

from benchmarks.common import Record
from benchmarks.duplicates_measure import RECIPES, SHARES, SIZES, folder_101, git_commit, measure
from benchmarks.explore_measure import TEST_IMAGES, TRAIN_IMAGES, planted, timing
from benchmarks.planted import PLANTED
from instdisc.fsutil import atomic_write_text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    a = sub.add_parser("planted")
    a.add_argument("--data", required=True)
    a.add_argument("--checkpoint", default=None, help="adds the trained and a random-init encoder to raw pixels")
    a.add_argument("--train", type=int, default=TRAIN_IMAGES)
    a.add_argument("--test", type=int, default=TEST_IMAGES)
    a.add_argument("--plant", type=int, default=PLANTED)
    b = sub.add_parser("timing")
    b.add_argument("--n", type=int, required=True)
    for s in (a, b):
        s.add_argument("--out", required=True, help="the JSON; planted also writes cross_split_<featuriser>.png "
                                                  "beside it, so give each collection its own folder")
        s.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("duplicates")
    c.add_argument("--folder", action="append", required=True, metavar="NAME=DIR",
                   help="an image folder to plant copies in (repeatable)")
    c.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    c.add_argument("--shares", type=float, nargs="+", default=list(SHARES))
    c.add_argument("--encoder", default="general",
                   help="general (the bundled encoder that fits each folder), thumbnail, photo or a checkpoint")
    c.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), default=["index"],
                   help="how images become vectors: the index's own recipe, or the native side alone")
    c.add_argument("--out", required=True, help="the JSON (rewritten after every case)")
    c.add_argument("--seed", type=int, default=0)
    f = sub.add_parser("folder101")
    f.add_argument("--data", required=True, help="a folder of images (CIFAR-10's test/)")
    f.add_argument("--work", required=True, help="scratch folder for the images, the index and the report")
    f.add_argument("--out", required=True)
    f.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.what == "folder101":
        rec = Record("duplicates_folder_101", vars(args), out)
        rec.data["command"] = "python scripts/measure_explore.py " + " ".join(sys.argv[1:] if argv is None else argv)
        rec.data["git_commit"] = git_commit()
        rec.add(folder_101(Path(args.data), Path(args.work), args.seed))
        rec.save()
        print(json.dumps(rec.data["results"][0]["groups"]), rec.data["results"][0]["summary"])
        return 0
    if args.what == "duplicates":
        folders = {}
        for spec in args.folder:
            name, sep, path = spec.partition("=")
            if not sep or not Path(path).is_dir():
                p.error(f"--folder wants NAME=DIR with an existing DIR, got {spec!r}")
            folders[name] = Path(path)
        rec = Record("duplicates_planted", vars(args), out)
        rec.data["command"] = "python scripts/measure_explore.py " + " ".join(sys.argv[1:] if argv is None else argv)
        rec.data["git_commit"] = git_commit()
        measure(folders, tuple(args.sizes), tuple(args.shares), args.seed, rec, args.encoder, tuple(args.recipes))
        rec.save()
        return 0
    if args.what == "planted":
        res = planted(args.data, args.checkpoint, out.parent, args.train, args.test, args.plant, args.seed)
    else:
        res = timing(args.n, seed=args.seed)
    res["command"] = "python scripts/measure_explore.py " + " ".join(sys.argv[1:] if argv is None else argv)
    atomic_write_text(out, json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "featurisers"}, indent=1)[:2000])
    for name, f in res.get("featurisers", {}).items():
        print(f"{name}: threshold {f['threshold']:.4f}, precision {f['precision']:.3f} (expected "
              f"{f['expected_precision']:.3f} at the calibration's prevalence, "
              f"{f['expected_precision_at_planted_share']:.3f} at the planted share), "
              f"recall {f['recall']:.3f} (expected {f['expected_recall']:.3f}), "
              f"{f['cross_split_groups']} cross-split groups; k=10 purity {f['clusters_k10']['purity']:.3f} "
              f"NMI {f['clusters_k10']['nmi']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
