"""What every benchmark records and prints: machine, versions, date, load, timings, JSON, a table.

A number without the machine and the load it ran under cannot be compared with anything,
so each script wraps its work in :class:`Record`, which stamps the CPU model, core count,
library versions, date and the load average at the start and the end, and writes the JSON
atomically (a killed run never leaves half a file). Peak memory of a case is measured in a
fresh subprocess (``VmHWM`` of /proc/self/status), because ``tracemalloc`` does not see
torch's or FAISS's allocations and a process's high-water mark never goes down.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from instdisc.fsutil import atomic_write_text
from instdisc.plots import save_png

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"



# ---------------------------------------------------------------- load: measured, not assumed


def cpu_seconds() -> dict:
    """CPU seconds so far: ``busy`` for the whole machine (/proc/stat, all cores, idle and iowait excluded)
    and ``own`` for this process plus its waited-for children."""
    t = os.times()
    own = t.user + t.system + t.children_user + t.children_system
    busy = None
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        busy = (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # guest time is already in user
    except (OSError, ValueError, IndexError):
        pass
    return {"busy": busy, "own": own, "time": time.monotonic()}


def measured_load(start: dict, loadavg_start: Sequence[float], loadavg_end: Sequence[float],
                  cores: int | None = None) -> dict:
    """What else ran while a benchmark did: the share of the machine's CPU time other processes used
    (all cores busy = 1.0), and the load averages at the start and the end, with a one-line summary."""
    cores = cores or os.cpu_count() or 1
    end = cpu_seconds()
    wall = max(1e-9, end["time"] - start["time"])
    out = {"cores": cores, "loadavg_start": [round(x, 2) for x in loadavg_start],
           "loadavg_end": [round(x, 2) for x in loadavg_end]}
    if start["busy"] is not None and end["busy"] is not None:
        busy = end["busy"] - start["busy"]
        others = max(0.0, busy - (end["own"] - start["own"]))
        out.update(machine_cpu_busy=round(min(1.0, busy / (wall * cores)), 3),
                   other_processes_cpu=round(min(1.0, others / (wall * cores)), 3))
    out["summary"] = load_summary(out)
    return out


def load_summary(load: dict) -> str:
    la0, la1, cores = load["loadavg_start"], load["loadavg_end"], load["cores"]
    text = f"load average {la0[0]:.1f} at the start and {la1[0]:.1f} at the end on {cores} cores"
    if load.get("other_processes_cpu") is not None:
        return f"other processes used {100 * load['other_processes_cpu']:.0f} % of the CPU while it ran; " + text
    return text + " (the CPU share of other processes was not recorded by this run)"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    """CPU model, cores, memory, bf16 support and the GPU if any."""
    import torch

    from instdisc.runtime import cpu_has_bf16

    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "memory_gib": mem_gib, "cpu_bf16": cpu_has_bf16(),
            "torch_threads": torch.get_num_threads(), "gpu": gpu, "hostname": platform.node()}


def versions() -> dict:
    import numpy
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}
    for name in ("faiss", "torchvision", "gradio"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = None
    return out


class Record:
    """Collects one benchmark's results with its context; ``save`` writes the JSON.

    ``partial=True`` saves may be called as cases finish, so a long run that is stopped
    still leaves what it measured.
    """

    def __init__(self, name: str, args: dict | None = None, out: str | os.PathLike | None = None) -> None:
        self.name = name
        self.out = Path(out) if out else RESULTS / f"{name}.json"
        self.started = time.time()
        self._cpu0 = cpu_seconds()
        self.data: dict = {
            "benchmark": name,
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "args": args or {},
            "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "versions": versions(),
            "loadavg_start": list(os.getloadavg()),
            "results": [],
        }

    def add(self, row: dict) -> dict:
        self.data["results"].append(row)
        return row

    def save(self, partial: bool = False, **extra) -> Path:
        self.data.update(extra)
        self.data["loadavg_end"] = list(os.getloadavg())
        self.data["load"] = measured_load(self._cpu0, self.data["loadavg_start"], self.data["loadavg_end"],
                                          self.data["machine"]["cores"])
        self.data["wall_seconds"] = round(time.time() - self.started, 1)
        self.data["complete"] = not partial
        self.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out, json.dumps(self.data, indent=2, default=_jsonable) + "\n")
        return self.out


def _jsonable(o):  # numpy scalars, paths, tuples
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def use_threads(n: int | None) -> None:
    """Intra-op threads for torch and FAISS here and in every case subprocess started after this.

    On a loaded machine one thread is the robust choice: with 2 OpenMP threads on 2 busy
    cores every parallel region waits for a descheduled partner (measured 8x slower).
    """
    if not n:
        return
    import torch

    os.environ["OMP_NUM_THREADS"] = str(n)
    torch.set_num_threads(n)
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except ImportError:
        pass


@contextlib.contextmanager
def capped_training(max_train: int | None):
    """Train IVF k-means on at most ``max_train`` vectors (the library takes 64 per list; None: no cap).

    A time box for benchmarks: at 10M vectors k-means on the library's 1M-vector sample is most
    of an hour on 2 cores, on 262,144 a few minutes (the JSON records the cap and the sample used).
    """
    from index import auto

    original = auto.train_size
    if max_train:
        auto.train_size = lambda index, n: min(original(index, n), max_train)
    try:
        yield
    finally:
        auto.train_size = original


def add_standard_args(p, name: str, quick_help: str, threads: bool = True) -> None:
    """The flags every benchmark has: ``--threads``, ``--quick`` (its CI smoke test) and ``--out``."""
    if threads:
        p.add_argument("--threads", type=int, default=None, help="torch/FAISS intra-op threads (default: all cores)")
    p.add_argument("--quick", action="store_true", help=f"smoke test: {quick_help}")
    p.add_argument("--out", default=str(RESULTS / f"{name}.json"))


def add_vector_args(p) -> None:
    """The synthetic clustered vectors' flags (``index.synthetic.clustered_unit_vectors``), defaults written once."""
    p.add_argument("--d", type=int, default=128, help="dimension")
    p.add_argument("--centres", type=int, default=1000, help="clusters of the synthetic vectors")
    p.add_argument("--spread", type=float, default=1.0, help="cluster spread of the synthetic vectors")


# ---------------------------------------------------------------- timing


def time_calls(fn: Callable[[], object], repeat: int, warmup: int = 1) -> list[float]:
    """Seconds per call for ``repeat`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


# ---------------------------------------------------------------- memory


def peak_rss_mib() -> float:
    """This process's high-water resident memory (VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    """This process's current resident memory (VmRSS), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the next peak is of what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def run_case_subprocess(script: str | os.PathLike, args: Sequence[str], timeout: float | None = None) -> dict:
    """Run ``script --case ARGS`` in a fresh interpreter and parse the JSON it prints last.

    A fresh process per case makes its VmHWM the peak of that case alone.
    """
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"case {' '.join(args)} failed ({proc.returncode}): " + " | ".join(tail))
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- output


def fmt(v) -> str:
    if isinstance(v, float):
        if v != v:
            return "-"
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
    return "-" if v is None else str(v)


def table(rows: Sequence[dict], columns: Sequence[str], title: str | None = None) -> str:
    """A Markdown table of ``columns`` (missing values as '-'), printed and returned."""
    lines = [f"\n{title}\n"] if title else []
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "---|" * len(columns))
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c)) for c in columns) + " |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def save_figure(fig, rec: Record, title: str) -> Path:
    """Title the figure with the run's machine / versions / date and write it beside the JSON."""
    fig.suptitle(f"{title}\n{stamp(rec)}", fontsize=9)
    fig.tight_layout()
    out = rec.out.with_suffix(".png")
    save_png(fig, out)
    return out


def stamp(rec: Record) -> str:
    """One line for a plot caption: machine, versions, date."""
    m, v = rec.data["machine"], rec.data["versions"]
    return (f"{m['cpu']}, {m['cores']} cores | torch {v['torch']}, faiss {v['faiss']}, numpy {v['numpy']} | "
            f"{rec.data['date'][:10]}")
