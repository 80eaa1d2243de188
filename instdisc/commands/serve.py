"""Search web app: find the images of an index that look most like a query image.

    python app.py [--index indexes/cifar10] [--host 127.0.0.1] [--port 7860] [--share]

Build the index first (see README / docs/app.md):

    python scripts/build_index.py --checkpoint RUN_DIR/checkpoint.pt --out indexes/cifar10

Serves the Gradio page at / and the REST API at /api (docs at /api/docs) in one process;
see docs/app.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_INDEX = "indexes/cifar10"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", default=DEFAULT_INDEX, help=f"index folder (default: {DEFAULT_INDEX})")
    p.add_argument("--checkpoint", default=None, help="encoder checkpoint (default: the one the index records)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: the GPU when present)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also open a public Gradio share link")
    p.add_argument("--mmap", action="store_true", help="memory-map the index vectors instead of loading them")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for embedding (torch) and searching (FAISS) queries; 1 is fastest on a "
                        "busy machine")
    args = p.parse_args(argv)

    index_dir = Path(args.index)
    if not index_dir.is_dir():
        print(f"error: no index at {index_dir}. Build one with\n"
              f"  python scripts/build_index.py --checkpoint RUN_DIR/checkpoint.pt --out {index_dir}",
              file=sys.stderr)
        return 2
    from index.batcher import set_search_threads  # imported late: torch/faiss take a while
    from index.search import SearchIndex
    from instdisc.web.handlers import SearchHandlers
    from instdisc.web.server import launch

    if args.threads:
        set_search_threads(args.threads)
    try:
        idx = SearchIndex.open(index_dir, checkpoint=args.checkpoint, device=args.device, mmap=args.mmap,
                               follow=True)  # an --add, --remove or --sync is served without a restart
    except Exception as e:  # a missing/corrupt index or checkpoint: say so, no traceback
        print(f"error: cannot open index {index_dir}: {e}", file=sys.stderr)
        return 2
    print(f"index {index_dir}: {len(idx):,} images under {idx.root}, search on {idx.device}", flush=True)
    launch(SearchHandlers(idx), host=args.host, port=args.port, share=args.share)
    return 0


if __name__ == "__main__":
    sys.exit(main())
