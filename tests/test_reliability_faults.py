"""kill -9 during writes: the fault hook itself, a checkpoint write (then --resume), and an index
update (then rerun). Real subprocesses, real SIGKILL. The full matrix -- every phase of every
file of checkpoints, --add, rebuilds and first builds, plus timed kills from outside -- is
``python scripts/reliability.py --part faults``, and for --add also the ``slow`` test below
(``INSTDISC_SLOW_TESTS=1 pytest -m slow tests/test_reliability_faults.py``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from index.build import BuildOptions, build
from instdisc.fsutil import FAULT_ENV, stale_temps
from reliability import faults
from reliability.corpus import write_ordinary
from reliability.inputs import run_script

ROOT = Path(__file__).resolve().parents[1]
needs_slow = pytest.mark.skipif(os.environ.get("INSTDISC_SLOW_TESTS") != "1",
                                reason="the full kill matrix (about 2 minutes): INSTDISC_SLOW_TESTS=1")


def _write(path: Path, data: bytes, spec: str, times: int = 1) -> subprocess.CompletedProcess:
    code = ("import sys; from pathlib import Path; from instdisc.fsutil import atomic_write_bytes\n"
            f"for _ in range({times}): atomic_write_bytes(Path(sys.argv[1]), {data!r})")
    return subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, env={**os.environ, FAULT_ENV: spec},
                          capture_output=True, timeout=60)


@pytest.mark.parametrize("phase,visible,temp_size", [("mid", b"old", 500), ("before-rename", b"old", 1000),
                                                     ("after-rename", b"n" * 1000, None)])
def test_fault_hook_kills_the_writer_at_each_phase(tmp_path: Path, phase, visible, temp_size):
    f = tmp_path / "data.bin"
    f.write_bytes(b"old")
    r = _write(f, b"n" * 1000, f"data.bin:{phase}")
    assert r.returncode == -signal.SIGKILL
    assert f.read_bytes() == visible  # the old file or the whole new one, never a part
    temps = stale_temps(f)
    assert [t.stat().st_size for t in temps] == ([temp_size] if temp_size else [])


def test_fault_hook_counts_writes_and_ignores_other_files(tmp_path: Path):
    f = tmp_path / "data.bin"
    assert _write(f, b"x", "other.bin:mid").returncode == 0 and f.read_bytes() == b"x"
    r = _write(f, b"y", "data.bin:mid:3", times=5)
    assert r.returncode == -signal.SIGKILL and f.read_bytes() == b"y"  # two writes done, the third killed
    assert _write(f, b"z", "data.bin:sideways").returncode == 1  # a typo in the phase is an error, not a no-op


def test_atomic_writes_keep_normal_file_permissions(tmp_path: Path):
    from instdisc.fsutil import atomic_write_bytes

    umask = os.umask(0o022)
    os.umask(umask)
    atomic_write_bytes(tmp_path / "new.bin", b"x")
    assert (tmp_path / "new.bin").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    (tmp_path / "new.bin").chmod(0o640)
    atomic_write_bytes(tmp_path / "new.bin", b"y")
    assert (tmp_path / "new.bin").stat().st_mode & 0o777 == 0o640  # a replaced file keeps its mode


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("plain")
    write_ordinary(d, 32)
    return d


def test_kill_during_checkpoint_write_then_resume(plain: Path, tmp_path: Path):
    r = faults.kill_checkpoint_write(plain, tmp_path, "mid", nth=2, epochs=2)
    assert r["killed"] and r["temp_left_by_kill"]  # a half-written temp file was really there
    assert r["loaded_epoch_after_kill"] == 1  # ... and the last good checkpoint is what loads
    assert r["metrics_epochs_after_kill"] == [1, 2]  # epoch 2 was logged, then lost with the kill
    assert r["resume_returncode"] == 0 and r["resumed_to_epoch"] == 2
    assert r["metrics_epochs_after_resume"] == [1, 2]  # not [1, 2, 2]
    assert r["temps_after_resume"] == [] and r["survived"]


@pytest.fixture(scope="module")
def add_setup(tiny_run: Path, plain: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An index of plain/a (built in-process), and the state a clean ``--add plain/b`` gives (via the script)."""
    work = tmp_path_factory.mktemp("faults")
    base = work / "base"
    build(tiny_run / "checkpoint.pt", base, images=plain / "a", options=BuildOptions(progress=False,
                                                                                     index_type="flat"))
    ref = faults.copy_index(base, work / "ref")
    r = run_script(["scripts/build_index.py", "--out", str(ref), "--add", str(plain / "b"), "--no-progress"])
    assert r.returncode == 0, r.stderr
    return {"work": work, "base": base, "before": faults.snapshot(base), "after": faults.snapshot(ref)}


def test_kill_during_add_commit_keeps_the_previous_generation(add_setup: dict, plain: Path):
    before, after = add_setup["before"], add_setup["after"]
    assert before["count"] == 16 and after["count"] == 32
    d = faults.copy_index(add_setup["base"], add_setup["work"] / "killed")
    r = faults.kill_index_write(["--out", str(d), "--add", str(plain / "b")], d, "manifest.json", "mid",
                                before, after, "add")
    assert r["killed"] and any(n.startswith("index-") for n in r["files_left_by_kill"])  # new data was written
    assert r["reader_saw_expected_state"]  # ... but a reader still gets exactly the old generation
    assert r["rerun_returncode"] == 0 and r["final_equals_uninterrupted"]
    assert r["leftovers_after_rerun"] == [] and r["survived"]


@pytest.mark.slow
@needs_slow
@pytest.mark.parametrize("target", ["index-*.faiss", "meta-*.sqlite", "manifest.json"])
@pytest.mark.parametrize("phase", ["mid", "before-rename", "after-rename"])
def test_kill_anywhere_in_an_add(add_setup: dict, plain: Path, target: str, phase: str):
    d = faults.copy_index(add_setup["base"], add_setup["work"] / f"k-{phase}-{target[:5]}")
    r = faults.kill_index_write(["--out", str(d), "--add", str(plain / "b")], d, target, phase,
                                add_setup["before"], add_setup["after"], "add")
    assert r["survived"], r
