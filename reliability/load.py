"""Load on the running app through its HTTP API: many concurrent clients, latency, errors, memory.

Each client is a thread with its own HTTP connection doing what any API user does for one
query: upload the image (``/gradio_api/upload``), start ``/search`` (``/gradio_api/call/search``)
and read the result stream, in one Gradio session per client as a browser tab keeps. Plain
HTTP rather than ``gradio_client`` so that 32 clients cost the 2-core test machine little and
the latencies are the server's (measured: gradio_client spends ~200 ms of client CPU per
request; a client that sends no session makes Gradio build a session state per call, 45-57 ms
of app CPU per request instead of 26-28). A probe thread fetches
the page every half second meanwhile, to show the app stays responsive; the app's peak
resident memory is the kernel's own high-water mark (``VmHWM`` in ``/proc/PID/status``).
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

from instdisc.evaluation.stats import latency_summary

REQUEST_TIMEOUT = 300.0  # seconds; a queued query waits its turn, it must not count as an error early


class ApiError(RuntimeError):
    """The app answered a query with an error (its message is the app's)."""


@dataclass
class SearchClient:
    """One API user: ``search(file, k)`` -> the app's JSON answer, or :class:`ApiError`."""

    url: str
    timeout: float = REQUEST_TIMEOUT

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/") + "/"
        self._http = httpx.Client(timeout=self.timeout)
        # one session per client, as a browser tab or a gradio_client.Client keeps: without one, Gradio
        # builds a fresh session state (the config of every component on the page) for every call
        self.session_hash = uuid.uuid4().hex[:11]

    def close(self) -> None:
        self._http.close()

    def upload(self, name: str, data: bytes) -> str:
        r = self._http.post(self.url + "gradio_api/upload", files={"files": (name, data)})
        if r.status_code != 200:
            raise ApiError(f"upload refused: HTTP {r.status_code} {r.text[:200]}")
        return r.json()[0]

    def call(self, api_name: str, data: list) -> object:
        """Start an event and read its stream to the end: the answer or :class:`ApiError`."""
        r = self._http.post(self.url + f"gradio_api/call/{api_name}",
                            json={"data": data, "session_hash": self.session_hash})
        if r.status_code != 200:
            raise ApiError(f"call refused: HTTP {r.status_code} {r.text[:200]}")
        event_id = r.json()["event_id"]
        event, payload = None, None
        with self._http.stream("GET", self.url + f"gradio_api/call/{api_name}/{event_id}") as s:
            for line in s.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event in ("complete", "error"):
                    payload = line.split(":", 1)[1].strip()
                    break
        if event == "complete" and payload is not None:
            return json.loads(payload)[0]
        message = json.loads(payload) if payload not in (None, "null") else None
        if isinstance(message, dict):  # gradio's error event: {"error": text, "title": ..., ...}
            message = message.get("error") or message
        raise ApiError(str(message or f"no answer (last event {event!r})"))

    def search(self, name: str, data: bytes, k: int = 10) -> dict:
        path = self.upload(name, data)
        file = {"path": path, "orig_name": name, "meta": {"_type": "gradio.FileData"}}
        return self.call("search", [file, k, "(any)", "(any)"])


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident memory so far (kernel high-water mark), in MiB."""
    return _status_kb(pid, "VmHWM")


def cpu_seconds_of(pid: int) -> float | None:
    """User + system CPU seconds the process has used so far, all its threads (``/proc/PID/stat``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    except (OSError, ValueError, IndexError):
        return None


def rss_mb(pid: int) -> float | None:
    return _status_kb(pid, "VmRSS")


def _status_kb(pid: int, key: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def _summary(ms: list[float]) -> dict:
    return latency_summary(ms=ms, digits=1) if ms else {"n": 0}


def run_load(
    url: str, queries: list[tuple[str, bytes, str]], clients: int = 32, per_client: int = 50, k: int = 10,
    pid: int | None = None, probe_every: float = 0.5,
) -> dict:
    """``clients`` threads x ``per_client`` searches each; ``queries`` are (name, bytes, expected top path).

    An answer whose first hit is not the expected path counts as an error too (a query image is
    a file of the index itself, so it must find itself first).
    """
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    done = threading.Event()
    probes: list[tuple[float, int]] = []  # (ms, status)

    def client(c: int) -> None:
        cl = SearchClient(url)
        try:
            start.wait()
            for q in range(per_client):
                name, data, expected = queries[(c * per_client + q) % len(queries)]
                t0 = time.perf_counter()
                try:
                    res = cl.search(name, data, k)
                    ms = (time.perf_counter() - t0) * 1e3
                    ok = res.get("paths", [None])[0] == expected and len(res["ids"]) == k
                    with lock:
                        latencies.append(ms)
                        if not ok:
                            errors.append(f"{name}: wrong answer {res.get('paths', [])[:3]}")
                except Exception as e:  # noqa: BLE001 -- every failure is a counted error
                    with lock:
                        errors.append(f"{name}: {type(e).__name__}: {e}"[:300])
        finally:
            cl.close()

    def probe() -> None:
        with httpx.Client(timeout=REQUEST_TIMEOUT) as http:
            while not done.is_set():
                t0 = time.perf_counter()
                try:
                    status = http.get(url).status_code
                except httpx.HTTPError:
                    status = 0
                probes.append(((time.perf_counter() - t0) * 1e3, status))
                done.wait(probe_every)

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    load_before = os.getloadavg()
    rss_before = rss_mb(pid) if pid else None
    prober = threading.Thread(target=probe, daemon=True)
    start.wait()
    t0 = time.perf_counter()
    prober.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    done.set()
    prober.join()
    load_after = os.getloadavg()
    probe_ms = [ms for ms, _ in probes]
    return {
        "clients": clients, "queries_per_client": per_client, "k": k, "requests": clients * per_client,
        "answered": len(latencies), "errors": len(errors), "error_samples": errors[:10],
        "latency": _summary(latencies), "wall_s": round(wall, 2),
        "throughput_qps": round(len(latencies) / wall, 2) if wall else None,
        "app_pid": pid, "app_rss_before_mb": rss_before, "app_peak_rss_mb": peak_rss_mb(pid) if pid else None,
        "responsive": {"probes": len(probes), "ok": sum(s == 200 for _, s in probes), **_summary(probe_ms)},
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in load_after],
        "cpu_count": os.cpu_count(),
    }


def listen_addresses(pid: int | None, port: int) -> list[str]:
    """Addresses something listens on at TCP ``port`` (from /proc/net/tcp{,6}), e.g. ['127.0.0.1'].

    ``pid`` is only informative (the socket table is per network namespace, not per process).
    """
    import ipaddress

    found = []
    for table, size in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if state != "0A" or int(p, 16) != port:  # 0A = LISTEN
                continue
            raw = bytes.fromhex(addr)
            # the kernel prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, size, 4))
            found.append(str(ipaddress.ip_address(raw)))
    return sorted(set(found))
