"""Command lines of ``scripts/find_duplicates.py`` and ``scripts/explore_index.py`` (argument parsing and
printing only; the work is in :class:`instdisc.explore.explorer.Explorer` and :mod:`instdisc.explore.reports`)."""

from __future__ import annotations

import argparse
import sys
import time

from .calibrate import PIXEL_FLOOR_PERCENTILE, PREVALENCE, SAMPLES, TARGET_PRECISION
from .collection import COMPUTED
from .embeddings import EMBEDDING, EMBEDDINGS
from .errors import ExploreError
from .explorer import PIXEL_AUTO, CalibrationOptions, Explorer
from .neighbours import K
from .projection import METHODS
from .reports import write_clusters, write_duplicates, write_map
from .similar import DEFAULT as SIMILAR_DEFAULT
from .similar import PERCENTILE, SIMILAR


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", required=True, help="index folder made by scripts/build_index.py")
    p.add_argument("--out", required=True, help="report folder to write")
    p.add_argument("--seed", type=int, default=0, help="seeds sampling, k-means and projections (default 0)")
    p.add_argument("--device", default="cpu",
                   help="device for re-embedding edited images and, with --embedding native, the index (default cpu)")


def _duplicate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--embedding", default=EMBEDDING, choices=EMBEDDINGS,
                   help="the vectors pairs are scored with: 'index' (the index's stored vectors, its checkpoint's "
                   "recipe) or 'native' (every image re-embedded at the checkpoint's native side, not whitened; "
                   f"computed on first use and cached with the index; default {EMBEDDING})")
    p.add_argument("--threshold", default="auto",
                   help="cosine similarity for a near-duplicate pair, or 'auto' (calibrated on the index, the share "
                   "of images with a copy estimated from it; default)")
    p.add_argument("--pixel-check", default=PIXEL_AUTO,
                   help="promote pairs below the threshold whose pixels show an edited copy (aligned band-pass "
                   "correlation of thumbnails, after undoing a crop): 'auto' (default: with --threshold auto, from "
                   f"the cosine {100 - PIXEL_FLOOR_PERCENTILE:g} %% of synthetic copies score above), 'off', or the "
                   "lowest cosine to check")
    p.add_argument("--guard", type=float, default=None,
                   help="every two members of a group must score at least this (default 2*t^2-1: chains break)")
    p.add_argument("--similar", default=SIMILAR_DEFAULT,
                   help="similar shots (the same scene twice, not copies; marked 'review', never 'remove'): pairs "
                   "from this cosine similarity up to the near-duplicate threshold among images in no duplicate "
                   f"group; 'auto' (default) = the {100 - PERCENTILE:g} %% of those images with the most similar "
                   f"look-alike (the {PERCENTILE:g}th percentile of their nearest-neighbour scores), 'off', or a "
                   "number in (0, 1] below the near-duplicate threshold")
    p.add_argument("--similar-guard", type=float, default=None,
                   help="every two members of a similar-shot group must score at least this (default 2*s^2-1)")
    p.add_argument("--k", type=int, default=K, help=f"neighbours considered per image (default {K})")
    p.add_argument("--samples", type=int, default=SAMPLES,
                   help=f"auto: images edited to calibrate the threshold (default {SAMPLES})")
    p.add_argument("--target-precision", type=float, default=TARGET_PRECISION,
                   help=f"auto: the expected precision to reach (default {TARGET_PRECISION})")
    p.add_argument("--prevalence", type=float, default=PREVALENCE,
                   help="auto: share of images that have a copy (default: estimated from the index)")


def _open(args) -> Explorer:
    return Explorer.open(args.index, device=args.device, seed=args.seed, k=getattr(args, "k", K),
                         embedding=getattr(args, "embedding", EMBEDDING))


def _run(fn, args) -> int:
    try:
        fn(args)
    except ExploreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _duplicates(args) -> None:
    t0 = time.perf_counter()
    ex = _open(args)
    opened = time.perf_counter() - t0
    print(ex.collection.embedding.describe())
    reembedded = " and re-embedding it" if ex.collection.embedding.source == COMPUTED else ""
    opts = CalibrationOptions(args.samples, args.target_precision, args.prevalence)
    dup = ex.duplicates(args.threshold, args.guard, opts, args.similar, args.similar_guard, args.pixel_check)
    if dup.calibration is not None:
        print(dup.calibration.summary())
    if dup.expectation():
        print(dup.expectation())
    paths = write_duplicates(args.out, ex.collection, dup)
    total = time.perf_counter() - t0
    tiers = dup.tier_counts()
    sim = tiers[SIMILAR]
    similar = (f"{sim.groups} similar-shot ({sim.images} images, {sim.pairs} pairs, to review; threshold "
               f"{sim.threshold:.4f}, {dup.similar.chosen_by})" if sim.threshold is not None
               else f"no similar shots ({dup.similar.chosen_by})")
    print(f"{len(dup.all_groups)} groups, {dup.images_in_groups} images: {tiers['exact'].groups} exact "
          f"({tiers['exact'].images} images, {tiers['exact'].pairs} pairs; same bytes or pixels), "
          f"{tiers['near'].groups} near-duplicate ({tiers['near'].images} images, {tiers['near'].pairs} pairs; "
          f"threshold {dup.threshold:.4f}, chain guard {dup.guard:.4f}), {similar}; "
          f"{len(ex.collection)} vectors ({dup.graph_method} kNN, {ex.collection.embedding.name} embedding); "
          f"{total:.1f} s ({opened:.1f} s opening the index{reembedded})")
    for p in paths.values():
        print(f"  {p}")


def _clusters(args) -> None:
    ex = _open(args)
    c = ex.clusters(args.clusters)
    paths = write_clusters(args.out, ex.collection, c)
    agree = f", purity {c.purity:.3f}, NMI {c.nmi:.3f} on {c.labelled} labelled" if c.purity is not None else ""
    print(f"{c.k} clusters ({c.chosen_by}), largest {c.sizes[0]}, smallest {c.sizes[-1]}{agree}; {c.seconds:.1f} s")
    for p in paths.values():
        print(f"  {p}")


def _map(args) -> None:
    ex = _open(args)
    proj = ex.map(args.method)
    c = ex.clusters(args.clusters)
    paths = write_map(args.out, ex.collection, proj, c)
    print(f"{proj.method} map of {len(proj.rows)} points, coloured by {c.k} clusters; {proj.seconds:.1f} s")
    for p in paths.values():
        print(f"  {p}")


def find_duplicates_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Duplicate groups of an index in three tiers, exact (same bytes or "
                                "pixels), near-duplicate (edited copies) and similar shots (the same scene twice; "
                                "to review, never removed): groups.json, duplicates.csv (keep/remove/review per "
                                "file and the rule that decided), contact_sheet.png. See docs/explore.md.")
    _common(p)
    _duplicate_args(p)
    return _run(_duplicates, p.parse_args(argv))


def explore_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Explore an index: duplicates, clusters, a 2-D map. See docs/explore.md.")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("duplicates", help="the same as scripts/find_duplicates.py")
    _common(d)
    _duplicate_args(d)
    d.set_defaults(fn=_duplicates)
    for name, fn, helptext in (("clusters", _clusters, "k-means clusters: clusters.json, clusters.png"),
                               ("map", _map, "2-D map: map.png, map.json")):
        s = sub.add_parser(name, help=helptext)
        _common(s)
        s.add_argument("--clusters", default="auto", help="k, or 'auto' (silhouette on a sample; default)")
        if name == "map":
            s.add_argument("--method", default=METHODS[0], choices=METHODS, help="projection (default pca)")
        s.set_defaults(fn=fn)
    args = p.parse_args(argv)
    return _run(args.fn, args)
