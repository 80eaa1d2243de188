"""What the duplicate finder's pixel check costs a pair, on one thread and on every core.

    python benchmarks/pixel_check_speed.py --index INDEX_DIR [--floor 0.5] [--max-pairs 2000] [--quick]

The kNN pairs of the index scoring from ``--floor`` up are checked (``explore.pixelcheck.check_band``:
each image decoded from its file once, at reduced size where it is a JPEG, then matched), twice per
thread count; the second run of each is reported beside the first (the page cache warm). The
finder checks at most ``pixelcheck.MAX_PAIRS`` pairs a run, so seconds per pair x that bounds what
the check adds. ``--quick`` indexes 24 synthetic pictures with the thumbnail encoder instead, 100 pairs.
Writes ``results/duplicates/pixel_check_speed.json``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import ROOT, Record, add_standard_args
from instdisc.explore import Explorer
from instdisc.explore.pixelcheck import MAX_PAIRS, check_band


def _synthetic_index(tmp: Path) -> Path:
    from index.build import BuildOptions, build
    from instdisc.bundled import bundled_checkpoint

    rng = np.random.default_rng(0)
    (tmp / "imgs").mkdir()
    for i in range(24):
        small = rng.integers(0, 256, (8, 8, 3), np.uint8)
        Image.fromarray(small).resize((160, 120), Image.Resampling.BICUBIC).save(tmp / "imgs" / f"{i}.jpg", quality=90)
    build(bundled_checkpoint("thumbnail"), tmp / "idx", images=tmp / "imgs", options=BuildOptions(progress=False))
    return tmp / "idx"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", help="an index folder with its image files (required unless --quick)")
    p.add_argument("--floor", type=float, default=0.5, help="lowest cosine of the pairs checked (default 0.5)")
    p.add_argument("--max-pairs", type=int, default=2000, help="pairs checked per run (default 2000)")
    add_standard_args(p, "pixel_check_speed", "24 synthetic pictures, thumbnail encoder, 100 pairs", threads=False)
    args = p.parse_args(argv)
    if args.quick:
        args.max_pairs = 100
    if args.out.endswith("benchmarks/results/pixel_check_speed.json"):
        args.out = str(ROOT / "results" / "duplicates" / "pixel_check_speed.json")
    if not args.quick and not args.index:
        p.error("--index is required (or --quick)")
    rec = Record("pixel_check_speed", vars(args), args.out)
    with tempfile.TemporaryDirectory() as tmp:
        index = _synthetic_index(Path(tmp)) if args.quick else Path(args.index)
        ex = Explorer.open(index)
        graph = ex.graph()
        for workers in sorted({1, os.cpu_count() or 1}):
            for attempt in (1, 2):
                c = check_band(ex.collection, graph, args.floor, 1.0, max_pairs=args.max_pairs, workers=workers)
                row = rec.add({"index": str(index), "images": len(ex.collection), "workers": workers,
                               "attempt": attempt, "pairs_checked": c.checked, "pairs_in_band": c.band_pairs,
                               "passed": len(c.pairs), "unreadable": c.unreadable, "seconds": c.seconds,
                               "ms_per_pair": 1000 * c.seconds / max(1, c.checked),
                               "seconds_at_max_pairs": c.seconds / max(1, c.checked) * MAX_PAIRS})
                print(f"{workers} thread(s), run {attempt}: {row['pairs_checked']} pairs in {row['seconds']:.1f} s, "
                      f"{row['ms_per_pair']:.2f} ms a pair; {MAX_PAIRS:,} pairs: {row['seconds_at_max_pairs']:.0f} s")
    rec.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
