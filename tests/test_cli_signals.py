"""Ctrl-C (SIGINT) and SIGTERM through ``scripts/train.py`` end to end, then ``--resume``.

Real subprocesses, real signals. The signal is sent once the progress bar shows that steps of the
first epoch have run, so it lands in the middle of an epoch -- not at the end-of-epoch checkpoint,
which every run writes anyway -- and the test checks that it did (the checkpoint's position is
inside epoch 1). The resumed run must then end bit-identical to a run that was never interrupted
(fp32, tiny preset, tiny data, one thread: deterministic).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from instdisc import checkpoint
from reliability import faults

ROOT = Path(__file__).resolve().parents[1]
BATCH = 8
TRAIN_IMAGES = 240  # conftest's shapes_root: 4 classes x 60 training images (and a test split for the monitor)
STEPS_PER_EPOCH = TRAIN_IMAGES // BATCH
MIN_STEPS_BEFORE_SIGNAL = 3


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "scripts" / "train.py"), "--data", str(data), "--out", str(out), "--preset",
            "tiny", "--epochs", "2", "--batch-size", str(BATCH), "--precision", "fp32", "--threads", "1", *extra]


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(shapes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    r = subprocess.run(_args(shapes_root, run, "--no-progress"), capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert checkpoint.load(run / "checkpoint.pt")["global_step"] == 2 * STEPS_PER_EPOCH
    # no bars, but a log file still gets one line per epoch (a nohup'ed run's only sign of life)
    assert "epoch 1/2: loss" in r.stdout and "epoch 2/2: loss" in r.stdout and "\r" not in r.stdout + r.stderr
    return run


class _Stderr:
    """Collects a child's stderr in a thread (tqdm rewrites its line with \\r, so read raw chunks)."""

    def __init__(self, proc: subprocess.Popen):
        self.text = ""
        self._t = threading.Thread(target=self._pump, args=(proc.stderr,), daemon=True)
        self._t.start()

    def _pump(self, stream) -> None:
        for chunk in iter(lambda: stream.read1(4096), b""):
            self.text += chunk.decode(errors="replace")

    def join(self) -> str:
        self._t.join(timeout=60)
        return self.text


def _steps_shown(text: str) -> int:
    """The largest step count the epoch-1 progress bar has shown ("epoch 1/2: ... | 5/30 [...")."""
    done = [int(m.group(1)) for m in re.finditer(rf"epoch 1/2:[^\r\n|]*\|[^|]*\|\s*(\d+)/{STEPS_PER_EPOCH}\b", text)]
    return max(done, default=0)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_signal_mid_epoch_then_resume_equals_the_uninterrupted_run(shapes_root: Path, tmp_path: Path,
                                                                    reference: Path, sig: signal.Signals):
    run = tmp_path / "run"
    proc = subprocess.Popen(_args(shapes_root, run), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    err = _Stderr(proc)
    deadline = time.monotonic() + 300
    while _steps_shown(err.text) < MIN_STEPS_BEFORE_SIGNAL:
        assert proc.poll() is None, err.join()[-3000:]
        assert time.monotonic() < deadline, err.text[-3000:]
        time.sleep(0.02)
    proc.send_signal(sig)
    proc.wait(timeout=300)
    text = err.join()
    assert proc.returncode == 130, text[-3000:]

    # it stopped inside epoch 1, at the step the message names, and says how to continue
    stopped = re.search(r"stopped at epoch 1, step (\d+); checkpoint saved", text)
    assert stopped, text[-3000:]
    assert "Continue with: python scripts/train.py" in text and "--resume" in text
    ck = checkpoint.load(run / "checkpoint.pt")
    assert ck["epoch"] == 0 and ck["step_in_epoch"] == int(stopped.group(1))
    assert MIN_STEPS_BEFORE_SIGNAL <= ck["step_in_epoch"] < STEPS_PER_EPOCH  # mid-epoch, not the epoch-end save
    assert ck["global_step"] == ck["step_in_epoch"]
    assert [r["epoch"] for r in _rows(run)] == [0]  # only the untrained encoder's kNN row so far

    res = subprocess.run(_args(shapes_root, run, "--resume", "--no-progress"), capture_output=True, text=True,
                         timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    # weights, bank, optimiser, schedule position, RNG states and history: bit for bit (timings aside)
    assert faults.checkpoint_differences(run / "checkpoint.pt", reference / "checkpoint.pt") == []
    assert faults.differences(_rows(run), _rows(reference)) == []  # metrics.jsonl: the same rows, the same losses
    assert [r["epoch"] for r in _rows(run)] == [0, 1, 2]
