"""Latency of the search handler, end to end: decode the upload, embed, search, thumbnails, captions.

    python -m benchmarks.app_queries --index indexes/cifar10 [--n 200] [--k 20] [--threads 1] [--url http://127.0.0.1:7860/]

Queries are files of the index's own collection (a fixed, spread-out sample), uploaded as
Gradio would hand them over. Reports p50 / p90 / p99 of ``SearchHandlers.ui_search`` and its
parts; with ``--url``, also of the same search through the running app's HTTP API
(gradio_client, so upload + queue + JSON included).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from instdisc.evaluation.stats import latency_summary
from instdisc.web.handlers import ANY, SearchHandlers
from instdisc.web.render import status


def summary(ms: list[float]) -> dict:
    return latency_summary(ms=ms, digits=2)


def query_files(h: SearchHandlers, n: int) -> list[Path]:
    """``n`` files of the index's own collection, spread evenly over it (a fixed sample)."""
    paths = h.facts.all_paths() or []
    pick = np.linspace(0, len(paths) - 1, min(n, len(paths))).astype(int) if paths else []
    return [h.index.root / paths[i] for i in pick]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", default="indexes/cifar10")
    p.add_argument("--n", type=int, default=200, help="number of queries")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--url", default=None, help="also time the HTTP API of an app running there")
    args = p.parse_args(argv)

    import torch

    from index.search import SearchIndex

    if args.threads:
        torch.set_num_threads(args.threads)
    idx = SearchIndex.open(args.index, device=args.device)
    h = SearchHandlers(idx)
    files = query_files(h, args.n)
    if not files:
        raise SystemExit("no query files found in the index")
    h.ui_search({"path": str(files[0])}, args.k, ANY, ANY)  # warm-up
    total, embed, search, render = [], [], [], []
    for f in files:
        t0 = time.perf_counter()
        res = h.search({"path": str(f), "orig_name": f.name}, args.k, ANY, ANY)
        t1 = time.perf_counter()
        h.tiles.gallery(res.hits)
        status(res)
        t2 = time.perf_counter()
        total.append((t2 - t0) * 1e3)
        embed.append(res.embed_ms)
        search.append(res.search_ms)
        render.append((t2 - t1) * 1e3)
    out = {"index": str(args.index), "count": len(idx), "device": idx.device, "torch_threads": torch.get_num_threads(),
           "k": args.k, "handler_end_to_end": summary(total), "embed": summary(embed), "search": summary(search),
           "thumbnails_and_captions": summary(render)}
    if args.url:
        from gradio_client import Client, handle_file

        client = Client(args.url, verbose=False)
        client.predict(handle_file(str(files[0])), args.k, api_name="/search")
        api = []
        for f in files[: min(len(files), 50)]:
            t0 = time.perf_counter()
            client.predict(handle_file(str(f)), args.k, api_name="/search")
            api.append((time.perf_counter() - t0) * 1e3)
        out["http_api_round_trip"] = summary(api)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
