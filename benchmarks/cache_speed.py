"""Training's data path from the memory-mapped decode cache vs from an in-RAM tensor, and its disk cost.

    python benchmarks/cache_speed.py [--images 2000] [--side 80] [--quick]

A synthetic collection is decoded once into the cache (``instdisc.data.load_folder``); then the
same random training batches (index a batch of 128 rows + the batched augmentation to 64 px,
what ``Trainer._local_batch`` does) are timed from the memory-mapped cache, from the mapped cache
under a RAM cap (``--max-ram``, pages dropped and re-read from the page cache), and from a copy
in RAM. Writes ``results/photos/cache_speed.json``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.common import ROOT, Record, add_standard_args, time_calls, use_threads
from instdisc.augment import BatchAugment
from instdisc.data import load_folder

BATCH = 128
TRAIN_SIZE = 64


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--side", type=int, default=80, help="stored side (1.25 x the 64 px training size)")
    p.add_argument("--batches", type=int, default=20)
    add_standard_args(p, "cache_speed", "200 images, 3 batches")
    args = p.parse_args(argv)
    if args.out.endswith("benchmarks/results/cache_speed.json"):
        args.out = str(ROOT / "results" / "photos" / "cache_speed.json")
    if args.quick:
        args.images, args.batches = 200, 3
    use_threads(args.threads)
    rec = Record("cache_speed", vars(args), args.out)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["INSTDISC_CACHE"] = str(Path(tmp) / "cache")
        root = Path(tmp) / "imgs"
        rng = np.random.default_rng(0)
        for i in range(args.images):
            d = root / f"{i // 500:03d}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (96, 128, 3), np.uint8)).save(d / f"{i}.jpg", quality=90)
        coll = load_folder(root, TRAIN_SIZE, store_size=args.side, progress=False)
        cache_bytes = coll.report.cache_bytes
        capped = load_folder(root, TRAIN_SIZE, store_size=args.side, max_ram=cache_bytes // 4, progress=False)
        ram = coll.images.as_subclass(torch.Tensor).contiguous().clone()
        aug = BatchAugment(TRAIN_SIZE)
        gen = torch.Generator().manual_seed(0)
        for name, images in (("memmap", coll.images), ("memmap, RAM cap = cache/4", capped.images),
                             ("in RAM", ram)):
            def step(images=images) -> None:
                idx = torch.randint(0, images.shape[0], (BATCH,), generator=gen)
                batch = images[idx]
                aug.apply(batch, aug.sample(BATCH, args.side, args.side, gen))

            secs = time_calls(step, args.batches, warmup=2)
            rec.add({"path": name, "images_per_s": round(BATCH * len(secs) / sum(secs), 1),
                     "median_batch_ms": round(1000 * float(np.median(secs)), 2)})
            print(rec.data["results"][-1], flush=True)
    rec.save(stored_side=args.side, train_size=TRAIN_SIZE, cache_bytes=cache_bytes,
             bytes_per_image=round(cache_bytes / args.images, 1), batch=BATCH,
             note="batch = index 128 random rows + BatchAugment to 64 px; page cache warm")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
