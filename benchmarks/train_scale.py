"""What data-parallel training moves and holds per step: the numbers behind docs/scaling.md.

    python benchmarks/train_scale.py [--out benchmarks/results/train_scale.json] [--skip-timing]
    python benchmarks/train_scale.py --quick      # smoke test: counts + one tiny timed step

Counted exactly from this repository's encoders: parameters, hence the bytes DDP all-reduces
per step (fp32 gradients), the bytes of the all-gather that keeps the memory bank identical on
every rank (features + indices of the global batch), and the bank every rank holds for N
images. Measured on this machine: forward + backward images/s of the paper-imagenet encoder
(ResNet50, 224 px) on the CPU, the basis of the CPU-vs-GPU argument in the doc.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from benchmarks import common
from instdisc.config import preset
from instdisc.model import Encoder
from instdisc.runtime import autocast, use_bf16

BANK_SIZES = (50_000, 1_281_167, 100_000_000, 1_000_000_000)  # CIFAR-10, ImageNet-1k, 100M, 1B


def encoder_of(name: str) -> Encoder:
    cfg = preset(name)
    return Encoder(cfg.arch, cfg.width, cfg.cifar_stem, cfg.low_dim)


def time_forward_backward(name: str, batch: int, iters: int, image_size: int | None = None) -> dict:
    cfg = preset(name)
    enc = encoder_of(name).to(memory_format=torch.channels_last)
    bf16 = use_bf16(torch.device("cpu"), "auto")
    size = image_size or cfg.image_size
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    times = []
    for i in range(iters + 1):  # the first iteration warms oneDNN up and is not counted
        t0 = time.perf_counter()
        with autocast(torch.device("cpu"), bf16):
            f = enc(x)
        f.sum().backward()
        if i:
            times.append(time.perf_counter() - t0)
    return {"preset": name, "batch": batch, "image_size": size, "bf16": bf16, "threads": torch.get_num_threads(),
            "images_per_s": round(batch * len(times) / sum(times), 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--skip-timing", action="store_true")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--iters", type=int, default=3)
    common.add_standard_args(p, "train_scale", "the timed step on 2 images of 64 px")
    args = p.parse_args(argv)
    common.use_threads(args.threads)
    rec = common.Record("train_scale", vars(args), args.out)
    for name in ("paper-cifar", "cpu-cifar", "paper-imagenet"):
        cfg = preset(name)
        params = sum(p.numel() for p in encoder_of(name).parameters())
        rec.add({
            "preset": name, "arch": cfg.arch, "width": cfg.width, "image_size": cfg.image_size,
            "global_batch": cfg.batch_size, "parameters": params,
            "gradient_allreduce_bytes_per_step": 4 * params,  # fp32 gradients, whatever the rank count
            "bank_allgather_bytes_per_step": cfg.batch_size * (4 * cfg.low_dim + 8),  # features + int64 index
            "bank_bytes_per_rank": {str(n): 4 * cfg.low_dim * n for n in BANK_SIZES},
        })
        print(f"{name}: {params / 1e6:.2f} M parameters, all-reduce {4 * params / 2**20:.1f} MiB/step, "
              f"bank all-gather {cfg.batch_size * (4 * cfg.low_dim + 8) / 2**10:.0f} KiB/step", flush=True)
    if not args.skip_timing:
        batch, iters, size = (2, 1, 64) if args.quick else (args.batch, args.iters, None)
        rec.data["cpu_forward_backward"] = time_forward_backward("paper-imagenet", batch, iters, size)
        print(f"paper-imagenet forward+backward on this CPU: {rec.data['cpu_forward_backward']}", flush=True)
    rec.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
