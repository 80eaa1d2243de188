"""The README's main command, end to end: scripts/quickstart.sh trains, indexes and serves; run again,
it reuses the finished run and index; interrupted mid-training, the next call resumes the run. Real
processes on the tiny shapes collection, a real HTTP check of the served page."""

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


# Loaded by every Python process of a quickstart started with it on PYTHONPATH: each outgoing connection is
# written to a log and refused, so a download is attempted for real and nothing leaves the machine.
NO_NETWORK = '''
import os, socket

def _refuse(self, address, *args, **kwargs):
    with open(os.environ["NETWORK_LOG"], "a") as f:
        f.write(repr(address) + "\\n")
    raise ConnectionRefusedError(f"network refused by the test: {address!r}")

socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
_getaddrinfo = socket.getaddrinfo

def _resolve(host, *args, **kwargs):
    if host not in ("127.0.0.1", "localhost", "::1", None):
        with open(os.environ["NETWORK_LOG"], "a") as f:
            f.write(f"resolve {host}\\n")
        raise socket.gaierror(f"name resolution refused by the test: {host}")
    return _getaddrinfo(host, *args, **kwargs)

socket.getaddrinfo = _resolve
'''


def _offline_env(tmp_path: Path, **extra: str) -> tuple[dict[str, str], Path]:
    site = tmp_path / "site"
    site.mkdir(parents=True)
    (site / "sitecustomize.py").write_text(NO_NETWORK)
    log = tmp_path / "network.log"
    env = {k: v for k, v in os.environ.items() if k not in ("DATA", "SHARED_CIFAR")}
    env.update(PYTHONPATH=str(site), NETWORK_LOG=str(log), INSTDISC_CACHE=str(tmp_path / "cache"),
               RUN=str(tmp_path / "run"), INDEX=str(tmp_path / "index"), PORT="0", **extra)
    return env, log


def test_quickstart_without_the_shared_copy_or_a_network_stops_at_once_and_says_how_to_set_data(tmp_path: Path):
    """On a machine with neither the shared CIFAR-10 archive nor a network, the main command tries the
    download, is refused, and stops with a message naming DATA; no connection leaves the machine."""
    env, log = _offline_env(tmp_path, SHARED_CIFAR=str(tmp_path / "no-such-archive.tar.gz"))
    p = subprocess.run(["bash", str(ROOT / "scripts" / "quickstart.sh")], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    out = p.stdout + p.stderr
    assert p.returncode != 0, out
    assert "data: cifar10" in out  # no shared copy: the download was chosen
    assert "could not download CIFAR-10" in out and "DATA=FOLDER bash scripts/quickstart.sh" in out, out
    assert log.exists() and log.read_text().strip(), "the download was never attempted"
    assert not (tmp_path / "run" / "checkpoint.pt").exists() and not (tmp_path / "index").exists()


def test_quickstart_prefers_the_shared_copy_and_data_overrides_both(tmp_path: Path, shapes_root: Path):
    """With the shared archive present the quickstart trains on it (no download); DATA wins over both. Each
    run is stopped as soon as training has announced its images."""
    import tarfile

    archive = tmp_path / "cifar10-jpeg.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(shapes_root, arcname="shapes")
    for data, expect in ((None, str(archive)), (str(shapes_root), str(shapes_root))):
        env, log = _offline_env(tmp_path / ("shared" if data is None else "data"), SHARED_CIFAR=str(archive),
                                **({"DATA": data} if data else {}))
        proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "quickstart.sh")], cwd=ROOT, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        lines = []
        try:
            for line in proc.stdout:
                lines.append(line)
                if line.startswith("training on "):
                    break
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        out = "".join(lines)
        assert f"data: {expect}\n" in out and "training on 240 images" in out, out
        assert not log.exists(), log.read_text()  # nothing tried the network
