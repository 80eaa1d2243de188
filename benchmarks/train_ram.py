"""Peak memory of training on a collection larger than its RAM cap: ``scripts/train.py --max-ram``.

    python benchmarks/train_ram.py [--images 100000] [--caps none 512M] [--budget 2m] [--quick]

A folder of ``--images`` photos (96 x 128 JPEGs of smooth random content, so the folder stays
small on disk; their decode cost is not what is measured) is written once; its decoded cache is
built once by a separate process. Then, for each cap, ``scripts/train.py --data FOLDER
--time-budget B --labels none [--max-ram CAP]`` runs as a child process (the preset and the 64 px
resolution chosen from the images, as for a user's folder) and its whole-process peak RSS is read
from the kernel (``os.wait4``'s ``ru_maxrss``: the child's own high-water mark), beside its wall
time and training images/s. The cache holds 80 px rows (1.25 x the training size), 19,200 bytes an
image: 1.8 GiB for 100k, more than the cap. Writes ``results/photos/train_ram.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import ROOT, Record, add_standard_args
from instdisc.imagecache import parse_bytes

PER_FOLDER = 1000
SAMPLE_S = 0.02  # how often the child's cache residency is read
EMBED_ROWS = 512  # rows one embedding batch reads (instdisc.embed), the residency floor under any cap


def write_folder(root: Path, n: int, seed: int = 0) -> int:
    """n JPEGs of 96 x 128 under root/NNN/ (nested, no classes; at least two folders, so the training run reads
    the collection from ``root`` as the decode step did, not from a lone subfolder); returns the bytes written."""
    rng = np.random.default_rng(seed)
    folders = max(2, -(-n // PER_FOLDER))
    for f in range(folders):
        (root / f"{f:03d}").mkdir(parents=True, exist_ok=True)
    total = 0
    for i in range(n):
        small = rng.integers(0, 256, (6, 8, 3), np.uint8)  # upsampled: smooth, ~3 KB as JPEG
        p = root / f"{i % folders:03d}" / f"{i:06d}.jpg"
        Image.fromarray(small).resize((128, 96), Image.Resampling.BILINEAR).save(p, quality=90)
        total += p.stat().st_size
    return total


def mapped_rss(pid: int, suffix: str) -> int:
    """Resident bytes of ``pid``'s mappings of files whose path ends with ``suffix`` (/proc/PID/smaps)."""
    total, inside = 0, False
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:  # the child has exited, or no /proc
        return 0
    for line in text.splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5:  # a mapping's header line
            inside = len(head) >= 6 and head[-1].endswith(suffix)
        elif inside and line.startswith("Rss:"):
            total += int(head[1]) * 1024
    return total


def run_child(cmd: list[str], env: dict, watch_suffix: str | None = None) -> dict:
    """Run ``cmd``; its wall time, exit status, peak RSS (MiB, the kernel's ru_maxrss for it alone) and, with
    ``watch_suffix``, the peak resident MiB of its mappings of that file, sampled every ``SAMPLE_S``."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]
    done = threading.Event()

    def watch() -> None:
        while not done.wait(SAMPLE_S):
            peak[0] = max(peak[0], mapped_rss(proc.pid, watch_suffix))

    watcher = threading.Thread(target=watch, daemon=True) if watch_suffix else None
    if watcher:
        watcher.start()
    out = proc.stdout.read()  # drained while it runs, so a chatty child never blocks on a full pipe
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    if watcher:
        watcher.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[1:3])} failed ({proc.returncode}): {out[-2000:]}")
    row = {"wall_s": round(time.monotonic() - t0, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}
    if watch_suffix:
        row["cache_rss_peak_mib"] = round(peak[0] / 2**20, 2)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=100_000)
    p.add_argument("--caps", nargs="+", default=["none", "512M"], help="--max-ram values; none: no cap")
    p.add_argument("--budget", default="2m", help="each training run's --time-budget")
    p.add_argument("--work", default=None, help="folder for the photos and the cache (default: a temporary one)")
    add_standard_args(p, "train_ram", "1000 images, the tiny preset for one epoch in batches of 64, caps none / 2M",
                      threads=False)
    args = p.parse_args(argv)
    if args.out.endswith("benchmarks/results/train_ram.json"):
        args.out = str(ROOT / "results" / "photos" / "train_ram.json")
    if args.quick:
        args.images, args.caps = 1000, ["none", "2M"]
    rec = Record("train_ram", vars(args), args.out)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        root, cache = Path(tmp) / "photos", Path(tmp) / "cache"
        t0 = time.monotonic()
        folder_bytes = write_folder(root, args.images)
        written_s = time.monotonic() - t0
        env = {**os.environ, "INSTDISC_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
        env.pop("INSTDISC_MAX_RAM", None)
        decode = run_child([sys.executable, "-c", "import sys, pathlib; from instdisc.data import load_folder; "
                            "load_folder(pathlib.Path(sys.argv[1]), 64, store_size=80, progress=False)",
                            str(root)], env)
        npys = list(cache.rglob("*.npy"))
        if len(npys) != 1:
            raise RuntimeError(f"expected one decoded cache file under {cache}, found {len(npys)}")
        cache_bytes = npys[0].stat().st_size
        print(f"{args.images:,} photos ({folder_bytes / 2**20:.0f} MiB) written in {written_s:.0f} s; decoded in "
              f"{decode['wall_s']} s into a {cache_bytes / 2**30:.2f} GiB cache "
              f"(peak RSS {decode['peak_rss_mib']} MiB)", flush=True)
        quick = ["--preset", "tiny", "--image-size", "64", "--no-cifar-stem", "--epochs", "1", "--batch-size", "64"]
        how = quick if args.quick else ["--time-budget", args.budget]
        for cap in args.caps:
            run = Path(tmp) / f"run-{cap}"
            cmd = [sys.executable, "scripts/train.py", "--data", str(root), "--out", str(run), "--labels", "none",
                   "--no-progress", *how, *([] if cap == "none" else ["--max-ram", cap])]
            cap_mib = None if cap == "none" else round(parse_bytes(cap) / 2**20)
            row = {"max_ram": cap, "max_ram_mib": cap_mib, **run_child(cmd, env, watch_suffix=npys[0].name)}
            epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            trained = [e for e in epochs if e.get("images_per_s")]
            row["epochs"] = trained[-1]["epoch"] if trained else 0
            if len(list(cache.rglob("*.npy"))) != 1:  # the run decoded its own cache: not the file measured
                raise RuntimeError(f"training with --max-ram {cap} did not read the decoded cache {npys[0]}")
            row["images_per_s"] = round(float(np.median([e["images_per_s"] for e in trained])), 1) if trained else None
            rec.add(row)
            print(row, flush=True)
            rec.save(partial=True)
    rec.save(images=args.images, folder_mib=round(folder_bytes / 2**20, 1), cache_bytes=cache_bytes,
             bytes_per_image=round(cache_bytes / args.images, 1), decode=decode, embed_rows=EMBED_ROWS,
             note="peak RSS = the training process's whole high-water mark (ru_maxrss), decode done beforehand; "
                  f"cache_rss_peak_mib = its mappings of the cache file, resident, sampled every {SAMPLE_S} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
