"""The README's main command, end to end: scripts/quickstart.sh trains, indexes and serves; run again,
it reuses the finished run and index; interrupted mid-training, the next call resumes the run (issue 20,
item 7). Real processes on the tiny shapes collection, a real HTTP check of the served page."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from benchmarks.browser import free_port, wait_until_up
from instdisc import checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _start(data: Path, run: Path, index: Path, budget: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "DATA": str(data), "RUN": str(run), "INDEX": str(index), "PORT": str(port),
           "TIME_BUDGET": budget}
    proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "quickstart.sh")], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    return proc, port


def _serve_then_stop(proc: subprocess.Popen, port: int, timeout: float = 240) -> str:
    """Wait until the page answers 200, then stop the whole process group; returns the output."""
    try:
        wait_until_up(f"http://127.0.0.1:{port}/", proc, timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    return out


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _epochs(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_quickstart_trains_resumes_an_interrupted_run_serves_then_reuses(shapes_root: Path, tmp_path: Path) -> None:
    """One life of the README command (three real runs, kept in one test because each costs a set-up
    check, an import of torch and Gradio and a served page): interrupted in the first epoch of its plan,
    resumed to the end of that plan (the epochs done before the stop kept, not retrained), indexed and
    served; then run again with nothing left to do."""
    run, index = tmp_path / "run", tmp_path / "index"
    proc, port = _start(shapes_root, run, index, "20s")
    lines: list[str] = []
    planned = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "time budget" in line:  # the epochs are planned and the first epoch is under way
                planned.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if not planned.wait(180):
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("no plan within 3 minutes:\n" + "".join(lines))
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal: the whole foreground group
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:  # it went on to serve: show what it printed
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("quickstart did not stop on SIGINT:\n" + "".join(lines)) from None
    reader.join(10)
    out = "".join(lines)
    assert proc.returncode != 0 and not (index / "manifest.json").exists(), out  # stopped before indexing
    c = checkpoint.load(run / "checkpoint.pt")
    stopped = {"epochs": c["config"]["epochs"], "epoch": c["epoch"], "plan": c["plan"], "history": c["history"]}
    if "stopped after the last epoch" in out and stopped["epochs"] == 1:
        pytest.skip("on this machine the 20 s budget planned a single epoch: nothing was left to interrupt")
    # stopped early in its plan, with a checkpoint: epochs are left for the next call to resume
    assert "stopped at epoch" in out and "stopped after the last epoch" not in out, out
    assert stopped["plan"] and stopped["epoch"] < stopped["epochs"], stopped
    logged = (run / "metrics.jsonl").read_text() if (run / "metrics.jsonl").exists() else ""

    assert "time budget" in out  # the first run planned its epochs from the budget

    out = _serve_then_stop(*_start(shapes_root, run, index, "20s"))
    assert "serving http://127.0.0.1" in out
    epochs = _epochs(run)
    # every epoch of the plan once, none twice; the resumed run re-paces after each epoch
    # (instdisc.budget.repace), so its plan may end at another epoch than the one planned at the stop
    final = checkpoint.load(run / "checkpoint.pt")
    assert epochs == list(range(final["config"]["epochs"] + 1)) and final["epoch"] == final["config"]["epochs"]
    assert final["epoch"] > stopped["epoch"]  # the resumed run trained the epochs that were left ...
    # ... after the ones done before the stop, kept as they were (wall-clock timings included: not retrained)
    assert (run / "metrics.jsonl").read_text().startswith(logged)
    assert final["history"][: len(stopped["history"])] == stopped["history"]
    assert json.loads((index / "manifest.json").read_text())["count"] == 240  # the bank of the 240 training images
    before = {p: _digest(p) for p in (run / "checkpoint.pt", index / "manifest.json")}
    mtimes = {p: p.stat().st_mtime_ns for p in before}

    out = _serve_then_stop(*_start(shapes_root, run, index, "20s"))  # again: nothing to train, nothing to build
    assert "time budget" not in out and "serving http://127.0.0.1" in out
    assert {p: _digest(p) for p in before} == before
    assert {p: p.stat().st_mtime_ns for p in before} == mtimes
    assert _epochs(run) == epochs
