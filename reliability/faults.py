"""kill -9 during checkpoint and index writes, then restart: what survives, and is it the right thing.

Two ways to kill:

* **injected** (deterministic): ``INSTDISC_FAULT_KILL=GLOB:PHASE:N`` makes the N-th atomic write of
  a matching file SIGKILL its own process mid-write, before or right after the rename (see
  :mod:`instdisc.fsutil`);
* **timed** (realistic): SIGKILL from outside at seeded random moments of a real run.

After each kill the on-disk state must be exactly the previous generation or exactly the new
one -- never a mix, never a half-written file read -- and rerunning the command must finish
the job with the same result as a run that was never interrupted.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from instdisc.fsutil import FAULT_ENV, stale_temps

from .inputs import ROOT, run_script

QUERY_SEED = 0
N_QUERIES = 8


# ---------------------------------------------------------------- training


def train_args(data: Path, out: Path, epochs: int, *extra: str) -> list[str]:
    return ["scripts/train.py", "--data", str(data), "--out", str(out), "--preset", "tiny", "--epochs", str(epochs),
            "--batch-size", "16", "--precision", "fp32", "--no-progress", *extra]


def _fault_env(spec: str) -> dict:
    return {**os.environ, FAULT_ENV: spec}


def _metrics_epochs(run: Path) -> list:
    import json

    p = run / "metrics.jsonl"
    if not p.exists():
        return []
    rows = []
    for line in p.read_text().splitlines():
        try:
            rows.append(json.loads(line).get("epoch"))
        except ValueError:
            rows.append("unparseable line")
    return rows


def same_weights(a: Path, b: Path) -> bool:
    """Two checkpoints with bit-identical model state (encoder, bank, objective buffers)."""
    import torch

    from instdisc.checkpoint import load

    ma, mb = load(a)["model"], load(b)["model"]
    return ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)


def kill_checkpoint_write(data: Path, work: Path, phase: str, nth: int = 2, epochs: int = 3,
                          reference: Path | None = None) -> dict:
    """Train, SIGKILL inside the ``nth`` checkpoint write, check what loads, resume, compare to ``reference``."""
    from instdisc.checkpoint import load

    run = work / f"ckpt-{phase}"
    shutil.rmtree(run, ignore_errors=True)
    r = run_script(train_args(data, run, epochs), env=_fault_env(f"checkpoint.pt:{phase}:{nth}"))
    ck_path = run / "checkpoint.pt"
    temps = [p.name for p in stale_temps(ck_path)]
    expected_epoch = nth if phase == "after-rename" else nth - 1
    loaded_epoch = load(ck_path)["epoch"] if ck_path.exists() else None
    epochs_logged = _metrics_epochs(run)
    res = run_script(train_args(data, run, epochs, "--resume"))
    out = {
        "scenario": f"train: kill -9 {phase} checkpoint write #{nth}",
        "killed": r.returncode == -signal.SIGKILL,
        "temp_left_by_kill": temps,
        "loaded_epoch_after_kill": loaded_epoch,
        "expected_epoch_after_kill": expected_epoch,
        "metrics_epochs_after_kill": epochs_logged,
        "resume_returncode": res.returncode,
        "resumed_to_epoch": load(ck_path)["epoch"] if res.returncode == 0 else None,
        "metrics_epochs_after_resume": _metrics_epochs(run),
        "temps_after_resume": [p.name for p in stale_temps(ck_path)],
    }
    if reference is not None and res.returncode == 0:
        out["equals_uninterrupted_run"] = same_weights(ck_path, reference)
    out["survived"] = bool(
        out["killed"] and loaded_epoch == expected_epoch and res.returncode == 0 and out["resumed_to_epoch"] == epochs
        and out["metrics_epochs_after_resume"] == list(range(1, epochs + 1)) and not out["temps_after_resume"]
        and out.get("equals_uninterrupted_run", True) and (phase != "mid" or temps))
    if res.returncode != 0:
        out["resume_stderr"] = res.stderr[-1000:]
    return out


# ---------------------------------------------------------------- index


def snapshot(index_dir: Path, queries: np.ndarray | None = None) -> dict | str:
    """What a reader sees: generation, count, ids and the answers to fixed queries; or the error it gets."""
    from index.errors import IndexDirError
    from index.search import SearchIndex

    try:
        idx = SearchIndex.open(index_dir, device="cpu")
    except IndexDirError as e:
        return f"IndexDirError: {e}"
    try:
        if queries is None:
            queries = fixed_queries(idx.dim)
        hits = idx.search_vectors(queries, 5)
        return {"generation": idx.manifest["generation"], "count": len(idx),
                "ids": idx._store.ids().tolist(),
                "answers": [[(h.id, h.path, round(h.score, 3)) for h in row] for row in hits]}
    finally:
        idx.close()


def fixed_queries(dim: int) -> np.ndarray:
    return np.random.default_rng(QUERY_SEED).standard_normal((N_QUERIES, dim)).astype(np.float32)


def same_state(a: dict | str, b: dict | str) -> bool:
    """Equal as a reader sees them, generation names aside (a rerun makes a new one)."""
    if isinstance(a, str) or isinstance(b, str):
        return False
    return a["count"] == b["count"] and a["ids"] == b["ids"] and a["answers"] == b["answers"]


def leftovers(index_dir: Path) -> list[str]:
    """Files no current manifest names: orphaned generations and temp files."""
    import json

    try:
        files = json.loads((index_dir / "manifest.json").read_text())["files"]
        named = {files["index"], files["db"], "manifest.json", ".lock"}
    except (OSError, ValueError, KeyError):
        named = {".lock"}
    return sorted(p.name for p in index_dir.iterdir() if p.name not in named)


def kill_index_write(args: list[str], index_dir: Path, target: str, phase: str, before: dict | str,
                     reference: dict | str, scenario: str) -> dict:
    """Run ``scripts/build_index.py ARGS`` with a kill at ``target``/``phase``; check, rerun, check again.

    ``before``: the snapshot a reader must still see after the kill (the previous generation, or an
    error for a first build); ``reference``: the snapshot of the same command never interrupted.
    """
    r = run_script(["scripts/build_index.py", *args, "--no-progress"], env=_fault_env(f"{target}:{phase}"))
    killed = r.returncode == -signal.SIGKILL
    left = leftovers(index_dir) if index_dir.exists() else []
    after_kill = snapshot(index_dir)
    new_visible = phase == "after-rename" and target == "manifest.json"
    expected = reference if new_visible else before
    if isinstance(expected, str):
        state_ok = isinstance(after_kill, str) and "manifest.json is missing" in after_kill
    else:
        state_ok = same_state(after_kill, expected)
    rerun = run_script(["scripts/build_index.py", *args, "--no-progress"])  # the restart
    final = snapshot(index_dir)
    out = {
        "scenario": scenario, "kill_at": f"{target}:{phase}", "killed": killed, "files_left_by_kill": left,
        "reader_after_kill": "new generation" if new_visible else ("previous generation" if not isinstance(
            expected, str) else "clear error: no index yet"),
        "reader_saw_expected_state": state_ok,
        "rerun_returncode": rerun.returncode,
        "final_equals_uninterrupted": same_state(final, reference),
        "leftovers_after_rerun": leftovers(index_dir),
    }
    out["survived"] = bool(killed and state_ok and out["final_equals_uninterrupted"]
                           and rerun.returncode == 0 and not out["leftovers_after_rerun"])
    if rerun.returncode != 0:
        out["rerun_stderr"] = rerun.stderr[-1000:]
    return out


def copy_index(src: Path, dst: Path) -> Path:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------- timed kills from outside


def timed_kills(cmd_args: list[str], check, delays: list[float], timeout: float = 600) -> list[dict]:
    """Start ``python CMD_ARGS`` once per delay, SIGKILL it after that many seconds (or let it finish),
    then ``check()`` -> dict with a boolean ``ok``. The process always starts from the state the
    previous kill left, so later kills also test restarting after earlier ones."""
    results = []
    for delay in delays:
        proc = subprocess.Popen([sys.executable, *cmd_args], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        t0 = time.monotonic()
        try:
            proc.wait(timeout=delay)
            finished = True
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=timeout)
            finished = False
        results.append({"delay_s": round(delay, 2), "finished_before_kill": finished,
                        "returncode": proc.returncode, "ran_s": round(time.monotonic() - t0, 2), **check()})
    return results
