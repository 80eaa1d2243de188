"""Screenshot the search app with real results: start it, upload a query, save a PNG.

    python scripts/screenshot.py --index indexes/cifar10 --out docs/screenshot.png [--query IMAGE]
    # the exploration tabs too: docs/explore_{duplicates,clusters,map}.png
    python scripts/screenshot.py --index indexes/cifar10 --explore docs

Without --query, an image of the collection's test split is used (a ship for CIFAR-10).
Needs /usr/bin/chromium (apt-get install chromium) and the playwright Python package.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.browser import explore_screenshots, running_app, screenshot

PREFERRED = ("ship", "airplane", "automobile", "horse")


def default_query(index_dir: Path) -> Path:
    """A deterministic image, preferably a held-out one (test/ or val/, under or beside the root)."""
    root = Path(json.loads((index_dir / "manifest.json").read_text())["root"])
    # a held-out image when there is one: INDEX_ROOT/test, or the test/ beside an index of train/
    held_out = [d / s for d in (root, root.parent) for s in ("test", "val")]
    base = next((d for d in held_out if d.is_dir()), root)
    folders = sorted(d for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")) or [base]
    by_name = {d.name: d for d in folders}
    folder = next((by_name[n] for n in PREFERRED if n in by_name), folders[len(folders) // 2])
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp"))
    if not files:
        raise SystemExit(f"no images under {folder}; pass --query")
    return files[min(len(files) - 1, 7)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", default="indexes/cifar10")
    p.add_argument("--out", default="docs/screenshot.png")
    p.add_argument("--query", default=None, help="query image (default: one from the test split)")
    p.add_argument("--width", type=int, default=1400)
    p.add_argument("--height", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the app")
    p.add_argument("--explore", metavar="DIR", default=None,
                   help="also save the Duplicates / Clusters / Map tabs as DIR/explore_*.png")
    args = p.parse_args(argv)
    index_dir = Path(args.index)
    query = Path(args.query) if args.query else default_query(index_dir)
    with running_app(index_dir, extra=["--threads", str(args.threads)]) as url:
        info = screenshot(url, query, args.out, args.width, args.height)
        print(f"query {query}\n{info['status']}\nsaved {args.out}")
        if args.explore:
            for path in explore_screenshots(url, args.explore, args.width, args.height).values():
                print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
