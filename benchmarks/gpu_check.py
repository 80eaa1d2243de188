"""One short GPU check: ResNet18 CIFAR training img/s, GPU similarity search, the 200-epoch projection.

    python benchmarks/gpu_check.py --out $OUT/gpu_check.json     # on a GPU machine, ~3-5 min
    python benchmarks/gpu_check.py --quick                        # on a CPU, tiny sizes (smoke test)

Prepared for a GPU machine (H100 / H200) that has torch but perhaps neither FAISS nor
internet nor the CIFAR-10 files, so everything runs on synthetic data of CIFAR's shape:

1. the ``paper-cifar`` training step (ResNet18 width 64, batch 128, full softmax over a 50k
   bank) exactly as ``train_throughput.py`` times it: bf16 autocast + channels_last, then
   the same with ``torch.compile`` on the encoder (compile time reported separately);
2. the per-epoch kNN monitor: embedding 10k test images and the weighted kNN against the
   50k bank (``instdisc.knn``), which ``Trainer.fit`` runs every epoch;
3. exact GPU search (the torch fallback of ``index/backends.py``: ``instdisc.knn.topk_cosine``
   on the device, what ``TorchFlatBackend`` runs when FAISS has no GPU) on 50k and 1M
   clustered 128-d vectors: single-query p50 / p99 and batched queries/s;
4. the projected wall time of the 200-epoch ``paper-cifar`` run: 200 x (50,000 / best img/s
   + kNN monitor), plus the one-off compile time where compile is the faster variant.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from benchmarks import common
from benchmarks.train_throughput import load_images, run_variant
from index.synthetic import clustered_unit_vectors
from instdisc.config import preset
from instdisc.embed import embed
from instdisc.evaluation.stats import latency_summary
from instdisc.knn import knn_accuracy, topk_cosine
from instdisc.model import Encoder
from instdisc.runtime import pick_device, use_bf16


def search_speed(n: int, device: torch.device, queries: int, singles: int) -> dict:
    """Exact top-10 on the device: one query per call, then all queries in one call."""
    bank = torch.from_numpy(clustered_unit_vectors(n, 128, 1000, 1.0, seed=0)).to(device)
    q = torch.from_numpy(clustered_unit_vectors(queries, 128, 1000, 1.0, seed=1))

    def one(i: int) -> None:
        topk_cosine(q[i : i + 1], bank, 10)

    for _ in range(3):  # warm the kernels
        one(0)
    lat = []
    for i in range(singles):
        t0 = time.perf_counter()
        one(i % queries)
        lat.append(time.perf_counter() - t0)  # topk_cosine returns CPU tensors: synchronised
    t0 = time.perf_counter()
    topk_cosine(q, bank, 10)
    batch_s = time.perf_counter() - t0
    return {"n": n, "queries": queries, "batch_qps": round(queries / batch_s, 1),
            **{f"single_{k}": v for k, v in latency_summary(lat).items()}}


def knn_monitor_seconds(device: torch.device, bf16: bool, n_bank: int, n_test: int, width: int) -> float:
    """One epoch's kNN monitor: embed the test split, weighted kNN (k = 200) against the bank."""
    enc = Encoder("resnet18", width, True, 128).to(device).to(memory_format=torch.channels_last)
    imgs, _ = load_images(None, n_test)
    bank = torch.nn.functional.normalize(torch.randn(n_bank, 128), dim=1).to(device)
    labels = torch.randint(0, 10, (n_bank,))
    embed(enc, imgs[:512], device, bf16)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    q = embed(enc, imgs, device, bf16)
    knn_accuracy(q, torch.randint(0, 10, (n_test,)), bank, labels, ks=(1, 200))
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="default: the GPU when present")
    p.add_argument("--steps", type=int, default=60, help="timed training steps per variant")
    p.add_argument("--warmup", type=int, default=15)
    p.add_argument("--no-compile", action="store_true")
    common.add_standard_args(p, "gpu_check", "width 8, 512 images, tiny search")
    args = p.parse_args(argv)
    common.use_threads(args.threads)
    dev = pick_device(args.device)
    cfg = preset("paper-cifar")
    width, n_train, n_test, sizes, singles = cfg.width, 50_000, 10_000, [50_000, 1_000_000], 200
    if args.quick:
        width, n_train, n_test, sizes, singles = 8, 512, 256, [2000], 10
        args.steps, args.warmup = 2, 1
    bf16 = use_bf16(dev, cfg.precision)
    rec = common.Record("gpu_check", vars(args), args.out)
    rec.data["device"] = str(dev)
    images, _ = load_images(None, n_train)
    train = []
    for compiled in (False, True) if not args.no_compile else (False,):
        t0 = time.perf_counter()
        try:
            r = run_variant("ours", width, bf16, True, 0, compiled, args.warmup, args.steps, images,
                            cfg.batch_size, str(dev))
        except Exception as e:  # a compile that fails on this machine is a result
            r = {"error": str(e).splitlines()[0][:300]}
        r.update(variant="bf16 + channels_last" + (" + torch.compile" if compiled else ""), width=width,
                 case_wall_s=round(time.perf_counter() - t0, 1))
        train.append(rec.add(r))
        rec.save(partial=True)
        print(f"{r['variant']}: {r.get('images_per_s', r.get('error'))} img/s", flush=True)
    knn_s = knn_monitor_seconds(dev, bf16, n_train, n_test, width)
    rec.data["knn_monitor_seconds_per_epoch"] = round(knn_s, 3)
    rec.data["search"] = [search_speed(n, dev, 1000 if not args.quick else 50, singles) for n in sizes]
    best = max((r for r in train if "images_per_s" in r), key=lambda r: r["images_per_s"])
    epoch_s = n_train / best["images_per_s"] + knn_s
    compile_s = best.get("compile_first_step_s") or 0.0
    rec.data["projection"] = {
        "preset": "paper-cifar", "epochs": cfg.epochs, "images_per_epoch": n_train, "variant": best["variant"],
        "images_per_s": best["images_per_s"], "knn_monitor_s_per_epoch": round(knn_s, 2),
        "epoch_s": round(epoch_s, 2), "compile_s": round(compile_s, 1),
        "total_minutes": round((cfg.epochs * epoch_s + compile_s) / 60, 1),
        "note": "synthetic uint8 images of CIFAR's shape (augmentation cost does not depend on content)",
    }
    rec.save()
    common.table(train, ["variant", "width", "images_per_s", "step_ms", "compile_first_step_s"], f"training, {dev}")
    common.table(rec.data["search"], ["n", "single_p50_ms", "single_p99_ms", "batch_qps"], f"exact search, {dev}")
    common.table([rec.data["projection"]], ["preset", "epochs", "images_per_s", "epoch_s", "total_minutes"],
                 "projected paper-cifar run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
