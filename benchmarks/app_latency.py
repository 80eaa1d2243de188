"""The app end to end: upload-to-results latency with 1, 8 and 32 concurrent clients (loopback).

    python benchmarks/app_latency.py [--index indexes/cifar10]     # ~2 min
    python benchmarks/app_latency.py --quick --index INDEX_DIR      # smoke test

Starts ``python app.py --index INDEX --port FREE`` as a subprocess on 127.0.0.1, waits until
it answers, then for each concurrency level runs that many client threads, each with its
own ``gradio_client.Client``, uploading files of the index's own collection (a fixed,
spread-out sample, ``webapp.bench.query_files``) to the ``/search`` API (k = 20) and waiting
for the JSON results: the time of one ``predict`` call is upload + queue + decode + embed +
search + response. The request count per level is bounded (``--requests``, at least 2 per
client) and so is its time (``--level-seconds``); the app is stopped at the end.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

from benchmarks import common
from evaluation.stats import latency_summary


def run_level(url: str, files: list[Path], clients: int, requests: int, k: int, max_seconds: float) -> dict:
    """``clients`` threads, ``requests`` uploads in all; per-request seconds and failures."""
    from gradio_client import Client, handle_file

    per_client = max(2, -(-requests // clients))
    conns = [Client(url, verbose=False) for _ in range(clients)]
    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients)
    deadline = [0.0]

    def worker(c: int) -> None:
        start.wait()
        for r in range(per_client):
            if time.time() > deadline[0]:
                break
            f = files[(c * per_client + r) % len(files)]
            t0 = time.perf_counter()
            try:
                conns[c].predict(handle_file(str(f)), k, api_name="/search")
                with lock:
                    lat.append(time.perf_counter() - t0)
            except Exception as e:  # a failed request is counted, not fatal
                with lock:
                    errors.append(str(e)[:200])

    conns[0].predict(handle_file(str(files[0])), k, api_name="/search")  # warm-up
    deadline[0] = time.time() + max_seconds
    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    for c in conns:
        c.close()
    return {"clients": clients, "requests": len(lat), "failed": len(errors), "errors": errors[:3],
            "requests_per_s": round(len(lat) / wall, 2), "wall_s": round(wall, 2),
            **latency_summary(lat)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", default="indexes/cifar10")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=96, help="requests per concurrency level (bounded)")
    p.add_argument("--level-seconds", type=float, default=120.0, help="time box per level")
    p.add_argument("--k", type=int, default=20)
    common.add_standard_args(p, "app_latency", "1 and 4 clients, 8 requests", threads=False)
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.requests, args.level_seconds = [1, 4], 8, 30.0
    if not Path(args.index).is_dir():
        raise SystemExit(f"no index at {args.index}; build one with scripts/build_index.py")
    from index.search import SearchIndex
    from webapp.bench import query_files
    from webapp.browser import app_process
    from webapp.handlers import SearchHandlers

    idx = SearchIndex.open(args.index, device="cpu")
    files = query_files(SearchHandlers(idx), 200)
    count = len(idx)
    del idx
    rec = common.Record("app_latency", vars(args), args.out)
    rec.data["index"] = {"path": str(args.index), "count": count}
    with app_process(args.index) as (url, _proc):  # app.py on 127.0.0.1, stopped on the way out
        for c in args.clients:
            row = rec.add(run_level(url, files, c, args.requests, args.k, args.level_seconds))
            print(f"{c} clients: p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, {row['requests_per_s']} req/s",
                  flush=True)
            rec.save(partial=True)
    rec.save()
    rec.data["table"] = common.table(rec.data["results"], ["clients", "requests", "failed", "p50_ms", "p99_ms",
                                                          "mean_ms", "requests_per_s"],
                                     f"app upload-to-results, index of {count:,} images")
    rec.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
