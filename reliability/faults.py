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


TIMING_KEYS = frozenset({"elapsed", "seconds", "wall", "images_per_s"})  # wall-clock figures: never equal run to run


def _is_timing(key) -> bool:
    return isinstance(key, str) and (key in TIMING_KEYS or key.endswith(("_seconds", "_per_s", "_s", "_wall")))


def differences(a, b, where: str = "") -> list[str]:
    """Where two loaded checkpoints (or parts of them) differ, bit for bit: every tensor (encoder, bank,
    objective buffers, optimiser moments, RNG states), every counter and every logged metric, the
    wall-clock timings aside."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype \
            and a.shape == b.shape and torch.equal(a, b)
        return [] if same else [where or "tensor"]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys {sorted(map(str, a.keys() ^ b.keys()))}"]
        return [d for k in a if not _is_timing(k) for d in differences(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            return [f"{where}: length {len(a)} vs {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} vs {b!r}"]


def checkpoint_differences(a: Path, b: Path) -> list[str]:
    from instdisc.checkpoint import load

    return differences(load(a), load(b))


def same_weights(a: Path, b: Path) -> bool:
    """Two checkpoints with the same state bit for bit: model (encoder, bank, objective buffers), optimiser,
    schedule position, RNG states and metric history (timings aside)."""
    return not checkpoint_differences(a, b)


def kill_checkpoint_write(data: Path, work: Path, phase: str, reference: Path, nth: int = 2,
                          epochs: int = 3) -> dict:
    """Train, SIGKILL inside the ``nth`` checkpoint write, check what loads, resume, compare to ``reference``
    (the checkpoint of the same command run without interruption: required, so "bit-identical to an
    uninterrupted run" is always measured, never assumed)."""
    from instdisc.checkpoint import load

    if not Path(reference).is_file():
        raise FileNotFoundError(f"reference checkpoint {reference} does not exist: train it uninterrupted first")
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
        "scenario": f"train: kill -9 {phase} checkpoint write {nth}",
        "killed": r.returncode == -signal.SIGKILL,
        "temp_left_by_kill": temps,
        "loaded_epoch_after_kill": loaded_epoch,
        "expected_epoch_after_kill": expected_epoch,
        "metrics_epochs_after_kill": epochs_logged,
        "resume_returncode": res.returncode,
        "resumed_to_epoch": load(ck_path)["epoch"] if res.returncode == 0 else None,
        "metrics_epochs_after_resume": _metrics_epochs(run),
        "temps_after_resume": [p.name for p in stale_temps(ck_path)],
        "equals_uninterrupted_run": res.returncode == 0 and same_weights(ck_path, reference),
    }
    out["survived"] = bool(
        out["killed"] and loaded_epoch == expected_epoch and res.returncode == 0 and out["resumed_to_epoch"] == epochs
        and out["metrics_epochs_after_resume"] == list(range(1, epochs + 1)) and not out["temps_after_resume"]
        and out["equals_uninterrupted_run"] and (phase != "mid" or temps))
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
        return {"generation": idx.manifest.generation, "count": len(idx),
                "ids": idx.ids().tolist(),
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
        named = {files["index"], files["db"], "manifest.json", ".lock", "ingest.json", "sync.json"}
    except (OSError, ValueError, KeyError):
        named = {".lock", "ingest.json", "sync.json"}  # the last ingest and sync reports (index/build.py, sync.py)
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

IGNORED_FILES = {".lock"}  # an index writer's lock file: taking the lock is not work done


def fingerprint(folder: Path) -> dict[str, tuple[int, int]]:
    """relative path -> (size, mtime_ns) of every file under ``folder`` (the lock file aside)."""
    if not folder.exists():
        return {}
    out = {}
    for p in folder.rglob("*"):
        try:
            if p.is_file() and p.name not in IGNORED_FILES:
                st = p.stat()
                out[str(p.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
        except FileNotFoundError:  # renamed or removed while we looked
            continue
    return out


def run_watched(cmd_args: list[str], watch: Path, kill_after: float | None = None,
                after_first_write: bool = False, poll_s: float = 0.01, timeout: float = 600) -> dict:
    """Run ``python CMD_ARGS``, watching the files under ``watch``; SIGKILL it ``kill_after`` seconds after
    its start (or, with ``after_first_write``, after the first change it made under ``watch``), or let
    it finish when ``kill_after`` is None.

    Returns what happened: ``finished_before_kill``, ``returncode``, ``ran_s``, ``first_write_s`` (when
    the first change under ``watch`` was seen, None if none), ``wrote`` (the files under ``watch``
    differ from before the start) and ``interrupted_work``: killed while running *and* after it had
    written something -- only such a kill says anything about surviving a crash mid-job. A kill
    that came after the command had finished, or before it wrote anything, did not interrupt work.
    """
    before = fingerprint(watch)
    proc = subprocess.Popen([sys.executable, *cmd_args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    first_write = None
    killed = False
    while proc.poll() is None:
        now = time.monotonic() - t0
        if first_write is None and fingerprint(watch) != before:
            first_write = now
        if kill_after is not None:
            start = first_write if after_first_write else 0.0
            if start is not None and now >= start + kill_after:
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
        if now > timeout:
            proc.kill()
            proc.wait()
            raise TimeoutError(f"{cmd_args} ran over {timeout} s")
        time.sleep(poll_s)
    proc.wait(timeout=timeout)
    ran = time.monotonic() - t0
    wrote = fingerprint(watch) != before
    if first_write is None and wrote:
        first_write = ran  # the change came between the last look and the end
    return {"finished_before_kill": not killed, "returncode": proc.returncode, "ran_s": round(ran, 2),
            "first_write_s": None if first_write is None else round(first_write, 2), "wrote": wrote,
            "interrupted_work": killed and wrote}


def timed_kills(cmd_args: list[str], watch: Path, check, delays: list[float], after_first_write: bool = True,
                prepare=None, timeout: float = 600) -> list[dict]:
    """One run of ``python CMD_ARGS`` per delay, SIGKILLed ``delay`` seconds after its first write under
    ``watch`` (or after its start with ``after_first_write=False``), then ``check()`` -> dict with a
    boolean ``ok``. ``prepare()``, when given, runs before each attempt (a fresh state to kill).
    Each record says whether the kill ``interrupted_work`` (see :func:`run_watched`); only those count."""
    results = []
    for delay in delays:
        if prepare is not None:
            prepare()
        r = run_watched(cmd_args, watch, delay, after_first_write=after_first_write, timeout=timeout)
        results.append({"delay_s": round(delay, 2), "delay_from": "first write" if after_first_write else "start",
                        **r, **check()})
    return results


def count_timed(runs: list[dict]) -> dict:
    """How many timed kills interrupted real work and how many of those left a good state; the kills
    that hit nothing (finished first, or nothing written yet) are counted apart, never as survived."""
    hit = [r for r in runs if r.get("interrupted_work")]
    return {"kills": len(runs), "interrupted_work": len(hit), "survived": sum(bool(r["ok"]) for r in hit),
            "finished_before_kill": sum(bool(r["finished_before_kill"]) for r in runs),
            "killed_before_any_write": sum(not r["finished_before_kill"] and not r.get("interrupted_work")
                                           for r in runs)}
