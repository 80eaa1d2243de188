"""kill -9 during writes: the fault hook itself, a checkpoint write (then --resume), an index update, a
rebuild and a first build (then rerun), each compared with the same command run without interruption.
Real subprocesses, real SIGKILL. The full matrix -- every phase of every file of checkpoints, --add,
rebuilds and first builds, plus timed kills from outside -- is ``python scripts/measure_reliability.py
--part faults``, and for the index also the ``slow`` tests below
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


@pytest.fixture(scope="module")
def reference_run(plain: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoint of the same 2-epoch command, never interrupted (a separate process, as the killed one)."""
    run = tmp_path_factory.mktemp("reference") / "run"
    r = run_script(faults.train_args(plain, run, 2))
    assert r.returncode == 0, r.stderr
    return run / "checkpoint.pt"


def test_kill_during_checkpoint_write_then_resume_equals_the_uninterrupted_run(plain: Path, tmp_path: Path,
                                                                                reference_run: Path):
    r = faults.kill_checkpoint_write(plain, tmp_path, "mid", reference_run, nth=2, epochs=2)
    assert r["killed"] and r["temp_left_by_kill"]  # a half-written temp file was really there
    assert r["loaded_epoch_after_kill"] == 1  # ... and the last good checkpoint is what loads
    assert r["metrics_epochs_after_kill"] == [1, 2]  # epoch 2 was logged, then lost with the kill
    assert r["resume_returncode"] == 0 and r["resumed_to_epoch"] == 2
    assert r["metrics_epochs_after_resume"] == [1, 2]  # not [1, 2, 2]
    assert r["temps_after_resume"] == []
    resumed = tmp_path / "ckpt-mid" / "checkpoint.pt"
    assert faults.checkpoint_differences(resumed, reference_run) == []  # weights, bank, optimiser, RNG, metrics
    assert r["equals_uninterrupted_run"] and r["survived"]


def test_checkpoint_comparison_sees_a_one_ulp_change(reference_run: Path, tmp_path: Path):
    """The "bit-identical" check is not vacuous: one bank entry moved by one float step is a difference,
    and so is an optimiser moment, a step counter or a logged loss."""
    import torch

    from instdisc import checkpoint

    ck = checkpoint.load(reference_run)
    ck["model"]["bank.features"][3, 5] = torch.nextafter(ck["model"]["bank.features"][3, 5], torch.tensor(2.0))
    ck["global_step"] += 1
    ck["history"][-1]["loss"] += 1e-12
    ck["history"][-1]["seconds"] += 5.0  # a timing: not a difference
    checkpoint.save(tmp_path / "changed.pt", {k: v for k, v in ck.items() if k not in ("format", "version")})
    where = sorted(d.split(":")[0] for d in faults.checkpoint_differences(reference_run, tmp_path / "changed.pt"))
    assert where == [".global_step", f".history[{len(ck['history']) - 1}].loss", ".model.bank.features"]
    with pytest.raises(FileNotFoundError, match="uninterrupted"):
        faults.kill_checkpoint_write(Path("nowhere"), tmp_path, "mid", tmp_path / "missing.pt")


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


def _build_args(checkpoint: Path, images: Path, out: Path, *extra: str) -> list[str]:
    return ["--checkpoint", str(checkpoint), "--out", str(out), "--images", str(images), "--index-type", "flat",
            *extra]


@pytest.fixture(scope="module")
def full_build(tiny_run: Path, plain: Path, add_setup: dict) -> dict:
    """What a reader sees of the index of all of plain (a and b) built by ``scripts/build_index.py`` without
    interruption (a separate process, as the killed ones)."""
    ref = add_setup["work"] / "full-ref"
    r = run_script(["scripts/build_index.py", *_build_args(tiny_run / "checkpoint.pt", plain, ref), "--no-progress"])
    assert r.returncode == 0, r.stderr
    return faults.snapshot(ref)


def test_kill_during_a_rebuild_keeps_the_previous_index(add_setup: dict, full_build: dict, tiny_run: Path,
                                                        plain: Path):
    """``--overwrite`` of an existing index killed while its new manifest is half written: the new index and
    metadata files are complete on disk, yet a reader still gets exactly the previous index; the rerun gives
    what the uninterrupted build gives and leaves no orphaned generation behind."""
    before = add_setup["before"]
    assert before["count"] == 16 and full_build["count"] == 32
    d = faults.copy_index(add_setup["base"], add_setup["work"] / "rebuild-killed")
    r = faults.kill_index_write(_build_args(tiny_run / "checkpoint.pt", plain, d, "--overwrite"), d,
                                "manifest.json", "mid", before, full_build, "rebuild")
    left = r["files_left_by_kill"]
    assert r["killed"] and any(n.startswith("index-") for n in left) and any(n.startswith("meta-") for n in left)
    assert any(n.startswith(".manifest.json.") for n in left)  # the half-written manifest, never renamed
    assert r["reader_after_kill"] == "previous generation" and r["reader_saw_expected_state"]
    assert faults.same_state(faults.snapshot(d), full_build)  # after the rerun: the full collection
    assert r["rerun_returncode"] == 0 and r["final_equals_uninterrupted"]
    assert r["leftovers_after_rerun"] == [] and r["survived"]


def test_kill_during_a_first_build_leaves_no_index_then_the_rerun_builds_it(add_setup: dict, full_build: dict,
                                                                            tiny_run: Path, plain: Path):
    """A first build killed while writing its metadata database: no manifest, so opening the folder is a
    clear "no index" error, not a half-built index; the same command again builds what the uninterrupted
    build gives and clears what the killed one left."""
    d = add_setup["work"] / "first-killed"
    r = faults.kill_index_write(_build_args(tiny_run / "checkpoint.pt", plain, d), d, "meta-*.sqlite", "mid",
                                "no index yet", full_build, "first build")
    left = r["files_left_by_kill"]
    assert r["killed"] and any(n.startswith("index-") for n in left) and any(n.startswith(".meta-") for n in left)
    assert "manifest.json" not in left
    assert r["reader_after_kill"] == "clear error: no index yet" and r["reader_saw_expected_state"]
    assert r["rerun_returncode"] == 0 and r["final_equals_uninterrupted"]
    assert faults.same_state(faults.snapshot(d), full_build)
    assert r["leftovers_after_rerun"] == [] and r["survived"]


@pytest.mark.slow
@needs_slow
@pytest.mark.parametrize("target", ["index-*.faiss", "meta-*.sqlite", "manifest.json"])
@pytest.mark.parametrize("phase", ["mid", "before-rename", "after-rename"])
def test_kill_anywhere_in_a_rebuild_or_a_first_build(add_setup: dict, full_build: dict, tiny_run: Path, plain: Path,
                                                     target: str, phase: str):
    d = faults.copy_index(add_setup["base"], add_setup["work"] / f"rk-{phase}-{target[:5]}")
    r = faults.kill_index_write(_build_args(tiny_run / "checkpoint.pt", plain, d, "--overwrite"), d, target, phase,
                                add_setup["before"], full_build, "rebuild")
    assert r["survived"], r
    if target == "manifest.json" and phase == "after-rename":
        return  # a first build has no earlier state to keep: the new index is simply there
    d = add_setup["work"] / f"fk-{phase}-{target[:5]}"
    r = faults.kill_index_write(_build_args(tiny_run / "checkpoint.pt", plain, d), d, target, phase,
                                "no index yet", full_build, "first build")
    assert r["survived"], r


# ---------------------------------------------------------------- timed kills: did they hit anything?

# waits, writes a.txt, waits, writes b.txt: a kill before a.txt hit nothing, one between the two hit work
SLOW_WRITER = ("import sys, time; from pathlib import Path; d = Path(sys.argv[1]); d.mkdir(exist_ok=True); "
               "time.sleep(0.5); (d / 'a.txt').write_text('a'); time.sleep(3); (d / 'b.txt').write_text('b')")


def test_timed_kill_records_whether_it_interrupted_work(tmp_path: Path):
    out = tmp_path / "out"
    cmd = ["-c", SLOW_WRITER, str(out)]
    early = faults.run_watched(cmd, out, kill_after=0.05)  # before the first write
    assert early["finished_before_kill"] is False and early["returncode"] == -signal.SIGKILL
    assert early["wrote"] is False and early["first_write_s"] is None and early["interrupted_work"] is False
    assert not (out / "a.txt").exists()

    mid = faults.run_watched(cmd, out, kill_after=0.3, after_first_write=True)
    assert mid["returncode"] == -signal.SIGKILL and mid["wrote"] and mid["interrupted_work"]
    # both times are rounded to 0.01 s, so their difference may be up to 0.01 short of the real one
    assert mid["first_write_s"] >= 0.5 and mid["ran_s"] - mid["first_write_s"] >= 0.3 - 0.011
    assert (out / "a.txt").exists() and not (out / "b.txt").exists()  # killed between the two writes

    (out / "a.txt").unlink()
    whole = faults.run_watched(cmd, out, kill_after=None)  # never killed: ran to the end
    assert whole["finished_before_kill"] and whole["returncode"] == 0 and whole["wrote"]
    assert whole["interrupted_work"] is False and (out / "b.txt").read_text() == "b"


def test_only_kills_that_interrupted_work_are_counted_as_survived():
    runs = [{"finished_before_kill": True, "interrupted_work": False, "ok": True},
            {"finished_before_kill": False, "interrupted_work": False, "ok": True},
            {"finished_before_kill": False, "interrupted_work": True, "ok": True},
            {"finished_before_kill": False, "interrupted_work": True, "ok": False}]
    assert faults.count_timed(runs) == {"kills": 4, "interrupted_work": 2, "survived": 1,
                                        "finished_before_kill": 1, "killed_before_any_write": 1}
    legacy = [{"finished_before_kill": True, "ok": True}, {"finished_before_kill": False, "ok": True}]
    assert faults.count_timed(legacy)["interrupted_work"] == 0  # records without the field prove nothing
