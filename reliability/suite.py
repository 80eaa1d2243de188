"""The three reliability runs end to end, each on a fresh workspace, each returning a JSON-able report.

``inputs``: the corpus through training, ``--images`` ingest, ``--add``, the handlers and the
HTTP API. ``faults``: injected kills at every write phase of checkpoints, builds and adds,
plus seeded timed kills from outside. ``load``: concurrent API clients against the running app.
``scripts/measure_reliability.py`` calls these and writes ``results/reliability/*.json``.
"""

from __future__ import annotations

import platform
import random
import shutil
import time
from pathlib import Path

from . import faults, inputs
from .corpus import KINDS, write_corpus, write_ordinary
from .inputs import run_script
from .load import run_load

PHASES = ("mid", "before-rename", "after-rename")
INDEX_TARGETS = ("index-*.faiss", "meta-*.sqlite", "manifest.json")


def machine() -> dict:
    import os

    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "cpu_count": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
            "loadavg": [round(x, 2) for x in os.getloadavg()]}


def _build(checkpoint: Path, out: Path, images: Path) -> None:
    r = run_script(["scripts/build_index.py", "--checkpoint", str(checkpoint), "--out", str(out), "--images",
                    str(images), "--index-type", "flat", "--no-progress"])
    if r.returncode != 0:
        raise RuntimeError(f"index build failed:\n{r.stderr[-2000:]}")


def _train(data: Path, run: Path, epochs: int) -> Path:
    r = run_script(faults.train_args(data, run, epochs))
    if r.returncode != 0:
        raise RuntimeError(f"training failed:\n{r.stderr[-2000:]}")
    return run / "checkpoint.pt"


# ---------------------------------------------------------------- inputs


def inputs_report(work: Path, http: bool = True) -> dict:
    from benchmarks.browser import running_app
    from index.search import SearchIndex
    from instdisc.web.handlers import SearchHandlers

    shutil.rmtree(work, ignore_errors=True)
    corpus = write_corpus(work / "corpus")
    outcomes, facts = [], {}
    o, facts["training"] = inputs.through_training(corpus, work / "run")
    outcomes += o
    decode = inputs.training_decode_checks(corpus)
    facts["training"]["exif_upright"] = decode["exif_upright"]
    ckpt = work / "run" / "checkpoint.pt"
    o, facts["ingest"] = inputs.through_ingest(corpus, ckpt, work / "index")
    outcomes += o
    o, facts["add"] = inputs.through_add(corpus, ckpt, work / "index-add")
    outcomes += o
    with SearchIndex.open(work / "index", device="cpu") as idx:
        o, facts["app"] = inputs.through_handlers(SearchHandlers(idx), corpus)
    outcomes += o
    if http:
        with running_app(work / "index", extra=["--threads", "1"]) as url:
            o, facts["app-http"] = inputs.through_http(url, corpus)
        outcomes += o
    for f in facts.values():
        f.pop("stderr_tail", None)
    return {"kinds": [{"name": k.name, "file": k.filename, "valid": k.valid} for k in KINDS],
            "kinds_tried": len(KINDS), "per_path": inputs.summarise(outcomes), "facts": facts,
            "outcomes": [o.__dict__ for o in outcomes], "machine": machine()}


# ---------------------------------------------------------------- faults


def _fault_setup(work: Path) -> dict:
    """The shared start of every fault scenario: data, an uninterrupted training run (timed and watched),
    an index of half the data, the uninterrupted ``--add`` of the other half (watched), and what a
    reader sees of each."""
    shutil.rmtree(work, ignore_errors=True)
    data = work / "data"
    write_ordinary(data, 48)
    ref_run = work / "reference-run"
    train_ref = faults.run_watched(faults.train_args(data, ref_run, 3), ref_run)
    if train_ref["returncode"] != 0:
        raise RuntimeError("uninterrupted training run failed")
    reference = ref_run / "checkpoint.pt"
    base = work / "base"
    _build(reference, base, data / "a")
    ref_add = faults.copy_index(base, work / "ref-add")
    add_ref = faults.run_watched(["scripts/build_index.py", "--out", str(ref_add), "--add", str(data / "b"),
                                  "--no-progress"], ref_add)
    if add_ref["returncode"] != 0:
        raise RuntimeError("uninterrupted --add failed")
    return {"data": data, "reference": reference, "train_ref": train_ref, "base": base, "add_ref": add_ref,
            "before": faults.snapshot(base), "after_add": faults.snapshot(ref_add)}


def faults_report(work: Path, timed: int = 6, seed: int = 0) -> dict:
    st = _fault_setup(work)
    data, reference, base, before, after_add = st["data"], st["reference"], st["base"], st["before"], st["after_add"]
    results = [faults.kill_checkpoint_write(data, work, phase, reference) for phase in PHASES]
    ref_full = work / "ref-full"
    _build(reference, ref_full, data)
    full = faults.snapshot(ref_full)
    for target in INDEX_TARGETS:
        for phase in PHASES:
            d = faults.copy_index(base, work / "t-add")
            results.append(faults.kill_index_write(["--out", str(d), "--add", str(data / "b")], d, target, phase,
                                                   before, after_add, "build_index --add"))
            d = faults.copy_index(base, work / "t-rebuild")
            args = ["--checkpoint", str(reference), "--out", str(d), "--images", str(data), "--index-type", "flat",
                    "--overwrite"]
            results.append(faults.kill_index_write(args, d, target, phase, before, full,
                                                   "build_index --overwrite (rebuild)"))
            if not (target == "manifest.json" and phase == "after-rename"):  # a first build has no earlier state
                d = work / "t-first"
                shutil.rmtree(d, ignore_errors=True)
                args = ["--checkpoint", str(reference), "--out", str(d), "--images", str(data), "--index-type",
                        "flat"]
                results.append(faults.kill_index_write(args, d, target, phase, "no index yet", full,
                                                       "build_index (first build)"))
    timed_results = timed_report(work, st, timed, seed) if timed else {}
    return {"injected": results, "injected_survived": sum(r["survived"] for r in results),
            "injected_total": len(results), "timed": timed_results, "machine": machine()}


def _window(ref: dict) -> float:
    """Seconds from an uninterrupted run's first write to its end: where a kill interrupts work."""
    return max(0.05, ref["ran_s"] - (ref["first_write_s"] or 0.0))


def timed_only_report(work: Path, n: int = 6, seed: int = 0) -> dict:
    """Only the timed kills (``scripts/measure_reliability.py --part timed``): minutes instead of the
    injected matrix's hour."""
    return {"timed": timed_report(work, _fault_setup(work), n, seed), "machine": machine()}


def timed_report(work: Path, st: dict, n: int, seed: int, epochs: int = 3) -> dict:
    """Seeded random SIGKILLs from outside, each after the killed run's first write, at a delay drawn
    from the window between an uninterrupted run's first write and its end: training from scratch
    (then resumed and compared with the uninterrupted checkpoint) and ``--add`` on a fresh copy of
    the index (then rerun). Every record says whether the kill really interrupted work; the totals
    (:func:`faults.count_timed`) count only those as survived."""
    from instdisc.checkpoint import CheckpointError, load

    data, reference, base, before, after_add = st["data"], st["reference"], st["base"], st["before"], st["after_add"]
    train_ref, add_ref = st["train_ref"], st["add_ref"]
    rng = random.Random(seed)
    run = work / "timed-run"

    def train_check() -> dict:
        ck = run / "checkpoint.pt"
        try:
            epoch = load(ck)["epoch"] if ck.exists() else None
            readable = True
        except CheckpointError as e:
            epoch, readable = str(e), False
        temps = len(list(run.glob(".checkpoint.pt.*.tmp")))
        extra = ("--resume",) if ck.exists() else ()
        res = run_script(faults.train_args(data, run, epochs, *extra))
        equal = res.returncode == 0 and faults.same_weights(ck, reference)
        return {"checkpoint_epoch": epoch, "temp_files": temps, "restart_returncode": res.returncode,
                "equals_uninterrupted_run": equal, "ok": readable and equal}

    train_runs = faults.timed_kills(faults.train_args(data, run, epochs), run, train_check,
                                    [rng.uniform(0.0, 1.0) * _window(train_ref) for _ in range(n)],
                                    prepare=lambda: shutil.rmtree(run, ignore_errors=True))
    d = work / "timed-add"
    add_args = ["scripts/build_index.py", "--out", str(d), "--add", str(data / "b"), "--no-progress"]

    def add_check() -> dict:
        s = faults.snapshot(d)
        state = "previous" if faults.same_state(s, before) else "new" if faults.same_state(s, after_add) else "MIX"
        rerun = run_script(add_args) if state == "previous" else None
        final_ok = faults.same_state(faults.snapshot(d), after_add) and not faults.leftovers(d)
        return {"reader_sees": state, "rerun_returncode": None if rerun is None else rerun.returncode,
                "final_equals_uninterrupted": final_ok, "ok": state != "MIX" and final_ok}

    add_runs = faults.timed_kills(add_args, d, add_check, [rng.uniform(0.0, 1.0) * _window(add_ref) for _ in range(n)],
                                  prepare=lambda: faults.copy_index(base, d))
    return {"seed": seed, "uninterrupted_train": train_ref, "uninterrupted_add": add_ref,
            "train": train_runs, "add": add_runs,
            "counts": {"train": faults.count_timed(train_runs), "add": faults.count_timed(add_runs)},
            "all_ok": all(r["ok"] for r in train_runs + add_runs if r["interrupted_work"])}


# ---------------------------------------------------------------- load


def load_report(work: Path, clients: int, per_client: int, k: int = 10, n_images: int = 64) -> dict:
    """A tiny index (``n_images`` ordinary images), the app in a subprocess, then the load."""
    from benchmarks.browser import app_process

    from .load import listen_addresses

    shutil.rmtree(work, ignore_errors=True)
    data = work / "data"
    rels = write_ordinary(data, n_images)
    ckpt = _train(data, work / "run", 1)
    _build(ckpt, work / "index", data)
    queries = [(Path(r).name, (data / r).read_bytes(), r) for r in rels]
    with app_process(work / "index", extra=["--threads", "1"]) as (url, proc):
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        bound = listen_addresses(proc.pid, port)
        out = run_load(url, queries, clients, per_client, k, pid=proc.pid)
    out.update(index_images=n_images, bound_to=bound, app_threads=1, machine=machine())
    return out
