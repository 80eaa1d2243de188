"""The three reliability runs end to end, each on a fresh workspace, each returning a JSON-able report.

``inputs``: the corpus through training, ``--images`` ingest, ``--add``, the handlers and the
HTTP API. ``faults``: injected kills at every write phase of checkpoints, builds and adds,
plus seeded timed kills from outside. ``load``: concurrent API clients against the running app.
``scripts/reliability.py`` calls these and writes ``results/reliability/*.json``.
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
    from index.search import SearchIndex
    from webapp.browser import running_app
    from webapp.handlers import SearchHandlers

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


def faults_report(work: Path, timed: int = 6, seed: int = 0) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    data = work / "data"
    write_ordinary(data, 48)
    t0 = time.monotonic()
    reference = _train(data, work / "reference-run", 3)
    train_s = time.monotonic() - t0
    results = [faults.kill_checkpoint_write(data, work, phase, reference=reference) for phase in PHASES]

    base = work / "base"
    _build(reference, base, data / "a")
    ref_add = faults.copy_index(base, work / "ref-add")
    t0 = time.monotonic()
    r = run_script(["scripts/build_index.py", "--out", str(ref_add), "--add", str(data / "b"), "--no-progress"])
    add_s = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    before, after_add = faults.snapshot(base), faults.snapshot(ref_add)
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
    timed_results = _timed(work, data, reference, base, before, after_add, timed, seed, train_s,
                           add_s) if timed else {}
    return {"injected": results, "injected_survived": sum(r["survived"] for r in results),
            "injected_total": len(results), "timed": timed_results, "machine": machine()}


def _timed(work: Path, data: Path, reference: Path, base: Path, before: dict, after_add: dict, n: int,
           seed: int, train_s: float, add_s: float) -> dict:
    """Seeded random SIGKILLs from outside: training (resumed after each) and --add (rerun after each),
    at 40-100 % of the time an uninterrupted run took here (start-up is most of it on a busy machine)."""
    from instdisc.checkpoint import CheckpointError, load

    rng = random.Random(seed)
    run = work / "timed-run"
    shutil.rmtree(run, ignore_errors=True)
    epochs = 3

    def train_check() -> dict:
        ck = run / "checkpoint.pt"
        try:
            epoch = load(ck)["epoch"] if ck.exists() else None
            ok = True
        except CheckpointError as e:
            epoch, ok = str(e), False
        return {"checkpoint_epoch": epoch, "temp_files": len(list(run.glob(".checkpoint.pt.*.tmp"))), "ok": ok}

    train_runs = []
    for delay in [rng.uniform(0.4, 1.0) * train_s for _ in range(n)]:
        extra = ("--resume",) if (run / "checkpoint.pt").exists() else ()
        train_runs += faults.timed_kills(faults.train_args(data, run, epochs, *extra), train_check, [delay])
    extra = ("--resume",) if (run / "checkpoint.pt").exists() else ()
    last = run_script(faults.train_args(data, run, epochs, *extra))
    finished = last.returncode == 0 and faults.same_weights(run / "checkpoint.pt", reference)

    d = faults.copy_index(base, work / "timed-add")

    def add_check() -> dict:
        s = faults.snapshot(d)
        state = "previous" if faults.same_state(s, before) else "new" if faults.same_state(s, after_add) else "MIX"
        return {"reader_sees": state, "uncommitted_files_left": len(faults.leftovers(d)), "ok": state != "MIX"}

    add_runs = []
    for delay in [rng.uniform(0.4, 1.0) * add_s for _ in range(n)]:
        if add_check()["reader_sees"] == "new":  # done: start again from the old index
            d = faults.copy_index(base, work / "timed-add")
        add_runs += faults.timed_kills(["scripts/build_index.py", "--out", str(d), "--add", str(data / "b"),
                                        "--no-progress"], add_check, [delay])
    return {"seed": seed, "uninterrupted_train_s": round(train_s, 1), "uninterrupted_add_s": round(add_s, 1),
            "train": train_runs, "train_finished_equal_to_uninterrupted": finished,
            "add": add_runs, "all_ok": all(r["ok"] for r in train_runs + add_runs) and finished}


# ---------------------------------------------------------------- load


def load_report(work: Path, clients: int, per_client: int, k: int = 10, n_images: int = 64) -> dict:
    """A tiny index (``n_images`` ordinary images), the app in a subprocess, then the load."""
    from webapp.browser import app_process

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
