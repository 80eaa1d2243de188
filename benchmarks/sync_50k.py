"""Sync and watch at 50,000 images: ``python -m benchmarks.sync_50k --out results/sync/sync_50k.json``.

1. A folder of 50,000 CIFAR-10 training JPEGs (hard links, ``--source``, 5,000 per class folder), indexed by
   ``--sync`` into an empty index (a build, with the bundled encoder).
2. 5,000 files are moved to another sub-folder, 1,000 deleted and 1,000 new ones (CIFAR-10 test JPEGs) added;
   one ``sync`` is timed part by part. Moved files must not be re-embedded (counted by the report and by a spy on
   the embedding function), and what the index holds must equal a fresh build's: every stored vector is compared
   with a fresh embedding of a sample of files (moved ones included), every path and label with a fresh scan,
   and with ``--fresh`` the whole folder is rebuilt and the answers to 200 queries compared (paths and scores).
3. ``--watch``: a watcher runs on the folder while 1,000 more files are copied in; the time from the end of the
   copy until all of them are searchable through a ``SearchIndex`` opened with ``follow=True`` is measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.common import cpu_model
from instdisc.fsutil import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]


def _link_tree(src: Path, dst: Path, per_class: int, offset: int = 0) -> list[Path]:
    out = []
    for cls in sorted(p for p in src.iterdir() if p.is_dir()):
        files = sorted(cls.glob("*.jpg"))[offset: offset + per_class]
        (dst / cls.name).mkdir(parents=True, exist_ok=True)
        for f in files:
            os.link(f, dst / cls.name / f.name)
            out.append(dst / cls.name / f.name)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="data/cifar10",
                   help="CIFAR-10 extracted as train/<class>/*.jpg and test/<class>/*.jpg (the shared archive)")
    p.add_argument("--out", default="results/sync/sync_50k.json")
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed)")
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--moved", type=int, default=5_000)
    p.add_argument("--deleted", type=int, default=1_000)
    p.add_argument("--added", type=int, default=1_000)
    p.add_argument("--sample", type=int, default=2_000, help="stored vectors compared with a fresh embedding")
    p.add_argument("--fresh", action="store_true", help="also rebuild the whole folder and compare 200 answers")
    p.add_argument("--watch", type=int, default=1_000, help="files copied in while watching (0: skip)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--scales", nargs="+", type=float, default=None,
                   help="embedding sides as multiples of 32 px (default: the bundled encoder's recipe, 1 1.5)")
    p.add_argument("--note", default="")
    p.add_argument("--machine", default="",
                   help="a description of the machine, recorded beside the facts read from it")
    args = p.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import index.sync as sync_mod
    from index.build import BuildOptions, build
    from index.search import SearchIndex
    from index.watch import watch
    from instdisc import bundled

    src = Path(args.source)
    work = Path(args.work or tempfile.mkdtemp(prefix="sync50k-"))
    folder, idx = work / "photos", work / "index"
    shutil.rmtree(work, ignore_errors=True)
    encoder = str(bundled.resolve(bundled.THUMBNAIL))  # the encoder the 32 px CIFAR-10 files get
    opts = BuildOptions(progress=False, scales=tuple(args.scales) if args.scales else None)
    rec: dict = {"command": "python -m benchmarks.sync_50k " + " ".join(sys.argv[1:] if argv is None else argv),
                 "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                 "git_commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                              text=True).stdout.strip(),
                 "machine": {"description": args.machine or None, "cpu": cpu_model(),
                             "python": platform.python_version(),
                             "cores": os.cpu_count(),
                             "torch_threads": torch.get_num_threads(), "loadavg_start": os.getloadavg()},
                 "note": args.note}
    t = time.perf_counter()
    files = _link_tree(src / "train", folder, args.n // 10)
    rec["prepare_s"] = round(time.perf_counter() - t, 2)
    first = sync_mod.sync(idx, folder, encoder, opts)
    rec["initial"] = {"images": first.count, "build_s": round(first.times.total, 1)}
    print(f"built {first.count} in {first.times.total:.0f} s", flush=True)

    rng = random.Random(0)
    rng.shuffle(files)
    moved, deleted = files[: args.moved], files[args.moved: args.moved + args.deleted]
    for f in moved:
        dest = folder / "moved" / f.parent.name / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(f, dest)
    for f in deleted:
        f.unlink()
    new_dir = work / "new"
    new = _link_tree(src / "test", new_dir, args.added // 10)
    for f in new:
        dest = folder / "new" / f.parent.name / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.link(f, dest)

    embedded: list[str] = []
    real = sync_mod.embed_files

    def spy(embedder, root, paths, progress):
        embedded.extend(paths)
        return real(embedder, root, paths, progress)

    sync_mod.embed_files = spy
    r = sync_mod.sync(idx, folder, None, opts)
    sync_mod.embed_files = real
    moved_rel = {f"moved/{f.parent.name}/{f.name}" for f in moved}
    t_ = r.times
    rec["sync"] = {
        "moved": r.moved, "removed": r.removed, "added": r.added, "changed": r.changed, "unchanged": r.unchanged,
        "embedded": r.embedded, "moved_files_re_embedded": len(moved_rel & set(embedded)),
        "seconds": {k: round(v, 2) for k, v in vars(t_).items()},
        "seconds_beyond_embedding": round(t_.total - t_.embed, 2),
        "count": r.count}
    print(r.summary(), flush=True)

    with SearchIndex.open(idx, device="cpu") as s:
        rows = s.rows()
        by_path = {row.path: row for row in rows}
        sample = rng.sample(sorted(moved_rel), min(len(moved_rel), args.sample // 2))
        sample += rng.sample(sorted(set(by_path) - moved_rel), args.sample - len(sample))
        stored = s.vectors([by_path[p].id for p in sample])
        fresh_vecs = s.embed_images([folder / p for p in sample])
        diff = float(np.abs(stored - fresh_vecs).max())
        from index.build import open_source
        from instdisc.conventions import labels_and_splits

        _, scanned = open_source(folder)
        labels, _ = labels_and_splits(scanned)
        rec["equality"] = {"sample": len(sample), "max_abs_vector_difference": diff,
                           "paths_equal_a_fresh_scan": sorted(by_path) == scanned,
                           "labels_equal_a_fresh_scan": [by_path[p].label for p in scanned] == labels}
    if args.fresh:
        fresh = work / "fresh"
        t = time.perf_counter()
        build(encoder, fresh, folder, opts)
        q = np.random.default_rng(1).standard_normal((200, 128)).astype(np.float32)
        with SearchIndex.open(idx, device="cpu") as a, SearchIndex.open(fresh, device="cpu") as b:
            ans = [[(h.path, round(h.score, 5)) for h in row] for row in a.search_vectors(q, 50)]
            ref = [[(h.path, round(h.score, 5)) for h in row] for row in b.search_vectors(q, 50)]
        rec["equality"]["fresh_build_s"] = round(time.perf_counter() - t, 1)
        rec["equality"]["answers_equal_a_fresh_build_200x50"] = ans == ref
    print(json.dumps(rec["equality"]), flush=True)

    if args.watch:
        stop = threading.Event()
        reports = []
        th = threading.Thread(target=lambda: reports.append(watch(
            folder, idx, lambda: sync_mod.sync(idx, folder, None, opts), stop)), daemon=True)
        app = SearchIndex.open(idx, device="cpu", follow=True)
        start_count = len(app)
        th.start()
        time.sleep(5)  # the watcher's first (empty) sync
        more = _link_tree(src / "test", work / "more", args.watch // 10, offset=args.added // 10)
        t0 = time.perf_counter()
        for f in more:
            dest = folder / "copied" / f.parent.name / f.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dest)
        copy_end = time.perf_counter()
        while len(app) < start_count + len(more):
            app.refresh()
            time.sleep(0.1)
            if time.perf_counter() - copy_end > 600:
                break
        ready = time.perf_counter()
        stop.set()
        th.join(timeout=120)
        stats = reports[0] if reports else None
        rec["watch"] = {"copied": len(more), "copy_s": round(copy_end - t0, 2),
                        "searchable_after_copy_end_s": round(ready - copy_end, 2),
                        "syncs": len(stats.reports) if stats else None,
                        "batches": [{"added": x.added, "seconds": round(x.times.total, 2)}
                                    for x in (stats.reports if stats else [])]}
        print(json.dumps(rec["watch"]), flush=True)
        app.close()
    rec["machine"]["loadavg_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(rec, indent=1) + "\n")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
