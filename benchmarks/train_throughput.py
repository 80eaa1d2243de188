"""Training throughput (images/s, steady state): our training step against the reference-style pipeline.

    python benchmarks/train_throughput.py            # cpu-cifar (width 16) and ResNet18 (width 64), ~10 min
    python benchmarks/train_throughput.py --quick    # smoke test on 512 synthetic images, seconds

*ours* is the step ``instdisc.train.Trainer.fit`` runs: a uint8 batch indexed out of the
decoded collection, ``BatchAugment`` on the whole batch, channels_last, bf16 autocast where
``runtime.use_bf16`` says so, ``InstDisc`` forward with the full non-parametric softmax over
the 50k-row bank, backward, SGD step, explicit bank update. *reference* is what the
authors' code (lemniscate.pytorch) does: per-image PIL transforms (RandomResizedCrop(32,
scale=(0.2, 1)), ColorJitter(0.4, 0.4, 0.4, 0.4), RandomGrayscale(0.2), RandomHorizontalFlip,
ToTensor, Normalize) in a torch DataLoader (2 workers and 0) feeding the same network and
objective in fp32, contiguous memory format.

Each variant runs in a fresh subprocess (its peak RSS is its own): ``--warmup`` steps
untimed, then ``--steps`` timed; images/s = timed images / timed wall time (data waits
included). The ablations switch off one of our changes at a time (bf16, channels_last, the
objective's bf16 matmul, batched augmentation -> PIL DataLoader) and try
``torch.compile`` on the encoder (its compile time is reported, and the case is time-boxed).
A last row runs ``Trainer.fit`` itself for one short epoch, as a check that the replicated
step is the real one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import common
from instdisc.augment import IMAGENET_MEAN, IMAGENET_STD, BatchAugment
from instdisc.config import TrainConfig
from instdisc.method import InstDisc, StepOutput
from instdisc.plots import pyplot
from instdisc.runtime import autocast, compile_module, pick_device, use_bf16

DEFAULT_DATA = common.ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
PROFILED = ("ours", "reference, 0 workers")
PHASES = ("data", "augment", "forward", "backward", "optimizer", "bank_update")

# name -> (pipeline, bf16, channels_last, workers, compile); bf16=None means "as runtime.use_bf16 says"
VARIANTS: dict[str, tuple[str, bool | None, bool, int, bool]] = {
    "reference, 2 workers": ("reference", False, False, 2, False),
    "reference, 0 workers": ("reference", False, False, 0, False),
    "ours": ("ours", None, True, 0, False),
    "ours - bf16 (fp32)": ("ours", False, True, 0, False),
    "ours - bf16 objective (objective in fp32)": ("fp32-objective", None, True, 0, False),
    "ours - channels_last": ("ours", None, False, 0, False),
    "ours - batched augment (PIL DataLoader, 2 workers)": ("pil", None, True, 2, False),
    "ours + torch.compile": ("ours", None, True, 0, True),
    "Trainer.fit (one short epoch)": ("trainer", None, True, 0, False),
}


# ---------------------------------------------------------------- data


def load_images(data: str | None, n: int | None, size: int = 32) -> tuple[torch.Tensor, str]:
    """(N, 3, S, S) uint8: the decoded CIFAR-10 training split, or random pixels for smoke tests."""
    if data and Path(data).exists():
        from instdisc.data import load_folder, resolve_source, split_dirs

        train_dir, _ = split_dirs(resolve_source(data))
        images = load_folder(train_dir, size, progress=False).images
        source = str(data)
    else:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (n or 50_000, 3, size, size), dtype=torch.uint8, generator=g)
        source = "synthetic uniform uint8 pixels"
    if n:
        images = images[:n]
    return images.contiguous(), source


class PILInstanceDataset(torch.utils.data.Dataset):
    """lemniscate's CIFAR10Instance: an HWC uint8 array, PIL per item, returns (image, index)."""

    def __init__(self, images: torch.Tensor, size: int = 32) -> None:
        from torchvision import transforms as T

        self.data = images.permute(0, 2, 3, 1).numpy()
        self.transform = T.Compose([
            T.RandomResizedCrop(size, scale=(0.2, 1.0)),
            T.ColorJitter(0.4, 0.4, 0.4, 0.4),
            T.RandomGrayscale(p=0.2),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[i])), i


def pil_batches(images: torch.Tensor, batch_size: int, workers: int):
    """Endless (x, idx) batches from a shuffled DataLoader, as the reference training loop reads them."""
    loader = torch.utils.data.DataLoader(PILInstanceDataset(images, images.shape[-1]), batch_size=batch_size,
                                         shuffle=True, num_workers=workers, drop_last=True,
                                         persistent_workers=workers > 0)
    while True:
        yield from loader


def tensor_batches(n: int, batch_size: int, seed: int = 0):
    """Endless shuffled index batches, as ``Trainer.fit`` draws them."""
    epoch = 0
    while True:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        for s in range(n // batch_size):
            yield order[s * batch_size : (s + 1) * batch_size]
        epoch += 1


# ---------------------------------------------------------------- one variant


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_variant(pipeline: str, width: int, bf16: bool | None, channels_last: bool, workers: int, compile: bool,
                warmup: int, steps: int, images: torch.Tensor, batch_size: int = 128,
                device: str | None = None, profile: int = 0) -> dict:
    """Steady-state images/s and per-phase seconds of one training-step variant."""
    dev = pick_device(device)
    cfg = TrainConfig(width=width, batch_size=batch_size, epochs=1, knn_every=0)
    bf16 = use_bf16(dev, cfg.precision) if bf16 is None else bf16
    if pipeline == "trainer":
        return run_trainer(cfg, images, warmup + steps, dev, bf16)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = InstDisc(cfg, len(images)).to(dev)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    model.bank.reset_random(gen)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    compile_s = None
    if compile:
        compile_module(model.encoder, dev)  # what TrainConfig.compile (--compile) does
    augment = BatchAugment(cfg.image_size)
    dev_images = images.to(dev)
    source = pil_batches(images, batch_size, workers) if pipeline in ("reference", "pil") else \
        tensor_batches(len(images), batch_size)
    model.train()

    def step() -> list[float]:
        """One training step; the clock before each phase and after the last."""
        t = [time.perf_counter()]
        if pipeline in ("reference", "pil"):
            x, idx = next(source)
            t.append(time.perf_counter())
            x = x.to(dev, non_blocking=True).contiguous(memory_format=fmt)
        else:
            idx = next(source)
            t.append(time.perf_counter())
            x = augment(dev_images[idx.to(dev)], gen).contiguous(memory_format=fmt)
        sync(dev)
        t.append(time.perf_counter())
        with autocast(dev, bf16):
            if pipeline == "fp32-objective":  # only the encoder under autocast, the objective in fp32
                feats = model.encoder(x).float()
                with torch.autocast(dev.type, enabled=False):
                    out = model.objective(feats, idx, model.bank, model.sample_noise(idx, gen))
                    loss = out.loss
                    out = StepOutput(loss, feats.detach(), out.positive_prob)
            else:
                out = model([x], idx, model.sample_noise(idx, gen))
                loss = out.loss
        sync(dev)
        t.append(time.perf_counter())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sync(dev)
        t.append(time.perf_counter())
        opt.step()
        sync(dev)
        t.append(time.perf_counter())
        model.update_bank(idx, out)
        loss.item()
        t.append(time.perf_counter())
        return t

    totals = dict.fromkeys(PHASES, 0.0)
    wall = 0.0
    for i in range(warmup + steps):
        t = step()
        if compile and i == 0:
            compile_s = t[-1] - t[0]
        if i >= warmup:
            for name, a, b in zip(PHASES, t[:-1], t[1:], strict=True):
                totals[name] += b - a
            wall += t[-1] - t[0]
    timed = steps * batch_size
    out = {"images_per_s": round(timed / wall, 1), "step_ms": round(wall * 1000 / steps, 1),
           "breakdown_ms": {k: round(v * 1000 / steps, 2) for k, v in totals.items()},
           "bf16": bf16, "channels_last": channels_last, "compile_first_step_s": compile_s,
           "device": str(dev), "peak_rss_mib": round(common.peak_rss_mib(), 1)}
    if profile:  # after the timed steps, so the profiler's overhead is not in the figures above
        out["profile"] = profile_steps(step, profile)
    return out


def profile_steps(step, n: int, top: int = 15) -> dict:
    """Where a step's time goes, by operator: self time per step of the ``top`` costliest ops."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        wall_ms = (time.perf_counter() - t0) * 1000 / n
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total_us = sum(e.self_cpu_time_total for e in events)
    ops = [{"op": e.key, "calls_per_step": round(e.count / n, 1), "self_ms_per_step": round(
            e.self_cpu_time_total / 1000 / n, 2), "share": round(e.self_cpu_time_total / total_us, 3)}
           for e in events[:top]]
    return {"steps": n, "profiled_step_ms": round(wall_ms, 1), "ops": ops}


def run_trainer(cfg: TrainConfig, images: torch.Tensor, steps: int, dev: torch.device, bf16: bool) -> dict:
    """``Trainer.fit`` on the first ``steps`` batches as one epoch: its own images_per_s (warm-up included)."""
    import tempfile

    from instdisc.data import ImageCollection
    from instdisc.train import Trainer

    steps = min(steps, len(images) // cfg.batch_size)
    n = steps * cfg.batch_size
    coll = ImageCollection("synthetic", [f"{i}.png" for i in range(n)], images[:n],
                           torch.full((n,), -1, dtype=torch.long), [])
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        hist = Trainer(cfg, coll, None, out, device=str(dev), progress=False).fit()
        wall = time.perf_counter() - t0
    return {"images_per_s": round(hist[-1]["images_per_s"], 1), "step_ms": round(hist[-1]["seconds"] * 1000 / steps,
            1), "bf16": bf16, "channels_last": True, "device": str(dev), "fit_wall_s": round(wall, 1),
            "note": f"one epoch of {n} images (bank of {n} rows), first steps included, checkpoint save excluded",
            "peak_rss_mib": round(common.peak_rss_mib(), 1)}


# ---------------------------------------------------------------- driver


def case_main(argv: list[str]) -> int:
    """Subprocess entry: one variant, JSON on the last stdout line."""
    p = argparse.ArgumentParser()
    p.add_argument("--case", required=True)
    p.add_argument("--width", type=int, required=True)
    p.add_argument("--warmup", type=int, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--n-images", type=int, default=None)
    p.add_argument("--data", default=None)
    p.add_argument("--profile", type=int, default=0)
    a = p.parse_args(argv)
    images, source = load_images(a.data, a.n_images)
    pipeline, bf16, cl, workers, comp = VARIANTS[a.case]
    res = run_variant(pipeline, a.width, bf16, cl, workers, comp, a.warmup, a.steps, images, profile=a.profile)
    res.update(workers=workers, images=len(images), data=source)
    print(json.dumps(res))
    return 0


def plot(rec: common.Record) -> Path:
    plt = pyplot()
    widths = sorted({r["width"] for r in rec.data["results"]})
    fig, axes = plt.subplots(1, len(widths), figsize=(7 * len(widths), 4.5), squeeze=False)
    for ax, w in zip(axes[0], widths, strict=True):
        rows = [r for r in rec.data["results"] if r["width"] == w and "breakdown_ms" in r]
        left = np.zeros(len(rows))
        for phase in PHASES:
            vals = np.array([r["breakdown_ms"][phase] for r in rows])
            ax.barh(range(len(rows)), vals, left=left, label=phase)
            left += vals
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([f"{r['variant']} ({r['images_per_s']:.0f} img/s)" for r in rows], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("ms per step of 128 images")
        ax.set_title(f"ResNet18 width {w}")
    axes[0][0].legend(fontsize=8)
    return common.save_figure(fig, rec, "Training step breakdown (steady state)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--case" in argv:
        return case_main(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA), help="CIFAR-10 source (random pixels if missing)")
    p.add_argument("--widths", type=int, nargs="+", default=[16, 64])
    p.add_argument("--steps", type=int, nargs="+", default=[30, 6], help="timed steps per width")
    p.add_argument("--warmup", type=int, nargs="+", default=[4, 2], help="untimed steps per width")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--compile-max-width", type=int, default=16,
                   help="try torch.compile only up to this width (its compile takes minutes on 2 cores)")
    p.add_argument("--compile-timeout", type=float, default=420.0, help="time box of the torch.compile case (s)")
    p.add_argument("--profile", type=int, default=3,
                   help="after timing, profile this many steps of 'ours' and 'reference, 0 workers' by operator")
    common.add_standard_args(p, "train_throughput", "width 8, 512 synthetic images, 2 steps")
    args = p.parse_args(argv)
    if args.quick:
        args.widths, args.steps, args.warmup, args.data, args.profile = [8], [2], [1], None, 1
        args.variants = [v for v in args.variants if "compile" not in v]
    n_images = 512 if args.quick else None
    common.use_threads(args.threads)
    rec = common.Record("train_throughput", vars(args), args.out)
    for w, steps, warm in zip(args.widths, args.steps, args.warmup, strict=True):
        for name in args.variants:
            if VARIANTS[name][4] and w > args.compile_max_width:
                continue
            cli = ["--case", name, "--width", str(w), "--warmup", str(warm), "--steps", str(steps)]
            cli += ["--data", args.data] if args.data else ["--n-images", str(n_images)]
            if name in PROFILED:
                cli += ["--profile", str(args.profile)]
            timeout = args.compile_timeout if VARIANTS[name][4] else None
            try:
                res = common.run_case_subprocess(__file__, cli, timeout=timeout)
            except Exception as e:  # a failed or timed-out variant is a result too
                res = {"error": str(e).splitlines()[0][:300]}
            row = rec.add({"width": w, "variant": name, "warmup_steps": warm, "timed_steps": steps, **res})
            print(f"width {w} | {name}: {row.get('images_per_s', row.get('error'))} img/s", flush=True)
            rec.save(partial=True)
    summarise(rec)
    rec.save()
    cols = ["width", "variant", "images_per_s", "vs_best_reference", "step_ms", "peak_rss_mib"]
    rec.data["table"] = common.table(rec.data["results"], cols, "training throughput")
    rows = [{"width": r["width"], "variant": r["variant"], **r.get("breakdown_ms", {})} for r in rec.data["results"]]
    rec.data["breakdown_table"] = common.table(rows, ["width", "variant", *PHASES], "ms per step")
    rec.data["plot"] = str(plot(rec))
    rec.save()
    return 0


def summarise(rec: common.Record) -> None:
    """Ratio of every variant to the best reference (DataLoader) variant of the same width."""
    ratios = {}
    for w in {r["width"] for r in rec.data["results"]}:
        rows = [r for r in rec.data["results"] if r["width"] == w and "images_per_s" in r]
        ref = max((r["images_per_s"] for r in rows if r["variant"].startswith("reference")), default=None)
        for r in rows:
            if ref:
                r["vs_best_reference"] = round(r["images_per_s"] / ref, 2)
        ours = next((r for r in rows if r["variant"] == "ours"), None)
        if ref and ours:
            ratios[str(w)] = {"ours_images_per_s": ours["images_per_s"], "best_reference_images_per_s": ref,
                              "ratio": round(ours["images_per_s"] / ref, 2)}
    rec.data["ratios"] = ratios


if __name__ == "__main__":
    sys.exit(main())
