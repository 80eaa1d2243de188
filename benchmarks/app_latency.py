"""The app end to end: upload-to-results latency with 1, 8, 32 and 64 concurrent clients (loopback),
through the Gradio API and through the REST API.

    python benchmarks/app_latency.py [--index indexes/cifar10]     # ~10 min on 2 cores
    python benchmarks/app_latency.py --quick --index INDEX_DIR      # smoke test

Starts ``python app.py --index INDEX --port FREE`` as a subprocess on 127.0.0.1, waits until
it answers, then for each path and concurrency level runs that many client threads uploading
files of the index's own collection (a fixed, spread-out sample, ``benchmarks.app_queries.query_files``)
and waiting for the JSON results (k = 20): ``gradio`` -- plain HTTP against the page's ``/search``
API, as a browser does it (upload, start the event, read its result stream; one ``httpx.Client``
and one Gradio session each); ``rest`` -- one ``httpx.Client`` each, ``POST /api/search`` with the file
as multipart; ``gradio_client`` (on request) -- one ``gradio_client.Client`` each, whose own
threads and 50 ms polling cost ~200 ms of CPU per request on the client side. All share the
app's batcher. Per level: the app process's CPU time per answered request and this process's
(the clients'), so a slow path says which side of the socket the time went to. The request
count per level is bounded (``--requests``, at least 2 per client) and so is its time
(``--level-seconds``); the app process's peak RSS (VmHWM) is recorded after each level; the
app is stopped at the end.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

from benchmarks import common
from instdisc.evaluation.stats import latency_summary

PATHS = ("gradio", "rest", "gradio_client")
DEFAULT_PATHS = ("gradio", "rest")


class RestClient:
    """``POST /api/search`` with a multipart file, shaped like gradio_client's ``predict`` for run_level."""

    def __init__(self, url: str) -> None:
        import httpx

        self.http = httpx.Client(base_url=url, timeout=120)

    def search(self, path: Path, k: int) -> dict:
        r = self.http.post("/api/search", files={"image": (path.name, path.read_bytes())}, data={"k": str(k)})
        r.raise_for_status()
        return r.json()

    def close(self) -> None:
        self.http.close()


class GradioHttpClient:
    """The page's ``/search`` API over plain HTTP, as a browser or curl speaks it: upload, start the
    event, read its stream (:class:`reliability.load.SearchClient`)."""

    def __init__(self, url: str) -> None:
        from reliability.load import SearchClient

        self.client = SearchClient(url)

    def search(self, path: Path, k: int) -> dict:
        return self.client.search(path.name, path.read_bytes(), k)

    def close(self) -> None:
        self.client.close()


class GradioClient:
    """The page's ``/search`` API through the ``gradio_client`` library (measured: ~7x the app's own
    CPU per request on the client side, so on one 2-core machine it measures the library)."""

    def __init__(self, url: str) -> None:
        from gradio_client import Client

        self.client = Client(url, verbose=False)

    def search(self, path: Path, k: int) -> dict:
        from gradio_client import handle_file

        return self.client.predict(handle_file(str(path)), k, api_name="/search")

    def close(self) -> None:
        self.client.close()


def run_level(url: str, files: list[Path], clients: int, requests: int, k: int, max_seconds: float,
              path: str = "gradio", app_pid: int | None = None) -> dict:
    """``clients`` threads, ``requests`` uploads in all, through ``path``; per-request seconds and failures.

    With ``app_pid``, the CPU time per answered request is split between the app process and this
    one (the client threads), so a slow path says which side of the socket the time went to."""
    from reliability.load import cpu_seconds_of

    make = {"gradio": GradioHttpClient, "gradio_client": GradioClient, "rest": RestClient}[path]
    per_client = max(2, -(-requests // clients))
    conns = [make(url) for _ in range(clients)]
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
                conns[c].search(f, k)
                with lock:
                    lat.append(time.perf_counter() - t0)
            except Exception as e:  # a failed request is counted, not fatal
                with lock:
                    errors.append(str(e)[:200])

    conns[0].search(files[0], k)  # warm-up
    deadline[0] = time.time() + max_seconds
    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    app_cpu0, own_cpu0 = (cpu_seconds_of(app_pid) if app_pid else None), time.process_time()
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    own_cpu = time.process_time() - own_cpu0
    app_cpu1 = cpu_seconds_of(app_pid) if app_pid else None
    for c in conns:
        c.close()
    per = max(1, len(lat))
    cpu = {"client_cpu_ms_per_request": round(1e3 * own_cpu / per, 1)}
    if app_cpu0 is not None and app_cpu1 is not None:
        cpu["app_cpu_ms_per_request"] = round(1e3 * (app_cpu1 - app_cpu0) / per, 1)
    return {"path": path, "clients": clients, "requests": len(lat), "failed": len(errors), "errors": errors[:3],
            "requests_per_s": round(len(lat) / wall, 2), "wall_s": round(wall, 2), **cpu,
            **latency_summary(lat)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", default="indexes/cifar10")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--paths", nargs="+", default=list(DEFAULT_PATHS), choices=PATHS,
                   help="gradio: the Gradio API over plain HTTP; rest: POST /api/search; gradio_client: the "
                        "Gradio API through the gradio_client library")
    p.add_argument("--requests", type=int, default=96, help="requests per concurrency level (bounded)")
    p.add_argument("--level-seconds", type=float, default=120.0, help="time box per level")
    p.add_argument("--k", type=int, default=20)
    common.add_standard_args(p, "app_latency", "1 and 4 clients, 8 requests, both paths", threads=False)
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.requests, args.level_seconds = [1, 4], 8, 30.0
    if not Path(args.index).is_dir():
        raise SystemExit(f"no index at {args.index}; build one with scripts/build_index.py")
    from benchmarks.app_queries import query_files
    from benchmarks.browser import app_process
    from index.search import SearchIndex
    from instdisc.web.handlers import SearchHandlers
    from reliability.load import peak_rss_mb

    idx = SearchIndex.open(args.index, device="cpu")
    files = query_files(SearchHandlers(idx), 200)
    count = len(idx)
    del idx
    rec = common.Record("app_latency", vars(args), args.out)
    rec.data["index"] = {"path": str(args.index), "count": count}
    with app_process(args.index) as (url, proc):  # app.py on 127.0.0.1, stopped on the way out
        for path in args.paths:
            for c in args.clients:
                row = run_level(url, files, c, args.requests, args.k, args.level_seconds, path, proc.pid)
                row = rec.add({**row, "app_peak_rss_mb": peak_rss_mb(proc.pid)})
                print(f"{path}, {c} clients: p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, "
                      f"{row['requests_per_s']} req/s, peak RSS {row['app_peak_rss_mb']} MB", flush=True)
                rec.save(partial=True)
    rec.save()
    columns = ["path", "clients", "requests", "failed", "p50_ms", "p99_ms", "mean_ms", "requests_per_s",
               "app_cpu_ms_per_request", "client_cpu_ms_per_request", "app_peak_rss_mb"]
    rec.data["table"] = common.table(rec.data["results"], columns, f"app upload-to-results, index of {count:,} images")
    rec.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
