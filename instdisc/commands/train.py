"""Train an instance-discrimination encoder on a folder, an archive or CIFAR-10.

    python scripts/train.py --data PATH --out RUN_DIR [--preset NAME] [--epochs N] [--resume]
    # fine-tune the bundled encoder that fits the images (or any checkpoint) instead of starting from random
    python scripts/train.py --data PATH --out RUN_DIR --init general --time-budget 10m
    # the resolution and stem come from a sample of the images' sizes unless --preset / --image-size say;
    # RUN_DIR/ingest.json lists formats, unreadable files, refused links and duplicates
    # data-parallel on N GPUs (or CPU processes with gloo); --batch-size is the global batch
    torchrun --nproc_per_node=N scripts/train.py --data PATH --out RUN_DIR [--sync-bn] [--resume]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from instdisc import bundled, distributed
from instdisc.checkpoint import CheckpointError
from instdisc.checkpoint import load as load_checkpoint
from instdisc.cli import add_config_flags, adopt_architecture, parse_ram, preset_names, resolve_training
from instdisc.config import TrainConfig, embed_size
from instdisc.conventions import split_dirs
from instdisc.data import DataError, load_splits, random_subset, resolve_source
from instdisc.imagecache import RAM_ENV, max_ram_from_env
from instdisc.images import ImageError
from instdisc.ingest import REPORT_NAME, write_reports
from instdisc.plots import plot_training
from instdisc.resolution import sample_sizes
from instdisc.scan import scan
from instdisc.train import Interrupted, Trainer
from instdisc.trained import Checkpoint


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="image folder, .tar/.tar.gz archive, or 'cifar10' (downloads)")
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt, metrics.jsonl, curves.png")
    p.add_argument("--preset", choices=preset_names(), default=None,
                   help="default: chosen from the images' sizes (cpu-cifar for thumbnails, cpu-photos for photos; "
                        "paper-cifar on a GPU)")
    p.add_argument("--max-ram", type=parse_ram, default=None,
                   help=f"cap on the RSS of the memory-mapped decoded images (2G, 512M; default ${RAM_ENV} or none)")
    p.add_argument("--resume", action="store_true", help="continue RUN_DIR/checkpoint.pt exactly")
    p.add_argument("--init", default=None, metavar="general|thumbnail|photo|CHECKPOINT",
                   help="start from these encoder weights (fine-tuning): 'general' for the bundled encoder that "
                        "fits the images' sizes, 'thumbnail' or 'photo' for one of them, or a checkpoint; the "
                        "architecture and input size are taken from it")
    p.add_argument("--labels", choices=["auto", "folders", "none"], default="auto",
                   help="class-per-folder labels, used only for the kNN monitor")
    p.add_argument("--strict", action="store_true", help="stop on an unreadable image instead of skipping it")
    p.add_argument("--device", default=None, help="cuda, cpu, cuda:1 ... (default: the GPU when present)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--no-progress", action="store_true")
    add_config_flags(p)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    ctx, _ = distributed.init(args.device)  # joins torchrun's process group; nothing in one process
    say = print if ctx.is_main else (lambda *a, **k: None)
    try:
        max_ram = args.max_ram or max_ram_from_env()
        train_dir = split_dirs(resolve_source(args.data))[0]
        resumed = (TrainConfig.from_dict(load_checkpoint(out / "checkpoint.pt")["config"])
                   if args.resume and (out / "checkpoint.pt").exists() else None)
        sample = sample_sizes(train_dir, scan(train_dir))
        preset_name, cfg, res = resolve_training(args, sample, torch.cuda.is_available(), resumed)
        init = None
        if args.init and resumed is None:
            if args.init == bundled.NAME:
                choice = bundled.choose(sample)
                say(f"--init {args.init}: {choice.reason}", flush=True)
            init = Checkpoint.load(bundled.resolve(args.init, sample))
        if init is not None:
            cfg, res = adopt_architecture(args, cfg, init.config, sample, args.init)
        side = embed_size(cfg)
        say(f"resolution {res.image_size} px, {'CIFAR' if cfg.cifar_stem else 'ImageNet'} stem: {res.reason}"
            + (f"; whole images embedded at {side} px (--embed-scale {cfg.embed_scale:g})"
               if side != cfg.image_size else ""), flush=True)
        with distributed.main_first():  # one decode per node; the other ranks read the cache
            train, evalset = load_splits(args.data, cfg.image_size, args.labels, args.strict,
                                         progress=not args.no_progress and ctx.is_main, store_size=res.store_size,
                                         max_ram=max_ram)
        reports = {"train": train.report, **({"eval": evalset.report} if evalset is not None else {})}
        for r in reports.values():
            say(r.summary(), flush=True)
        train = random_subset(train, cfg.subset, cfg.seed)
        say(f"training on {len(train)} images from {train.root}"
            + (f", evaluating on {len(evalset)}" if evalset is not None else "")
            + (f", {ctx.world} processes" if ctx.world > 1 else ""), flush=True)
        if args.resume:
            trainer = Trainer.resume(out / "checkpoint.pt", train, evalset, out, args.device,
                                     not args.no_progress, epochs=args.epochs, compile=args.compile,
                                     announce=True)
        else:
            if (out / "checkpoint.pt").exists():
                raise DataError(f"{out}/checkpoint.pt exists: pass --resume to continue it, or choose another --out")
            trainer = Trainer(cfg, train, evalset, out, args.device, not args.no_progress, announce=True)
            if init is not None:
                trainer.start_from(init.encoder().state_dict(), {"path": str(init.path), "sha256": init.sha256})
                say(f"fine-tuning from {init.path} (sha256 {init.sha256[:12]}...)", flush=True)
        if ctx.is_main:
            write_reports(out / REPORT_NAME, reports, {"resolution": res.to_dict(), "max_ram": max_ram})
        say(f"preset {preset_name} on {trainer.device} (bf16 {trainer.bf16}): {trainer.cfg.to_dict()}", flush=True)
        history = trainer.fit()
    except Interrupted as e:
        launcher = f"torchrun --nproc_per_node={ctx.world}" if ctx.world > 1 else "python"
        say(f"\n{e}. Continue with: {launcher} scripts/train.py --data {args.data} --out {out} --resume",
            file=sys.stderr)
        return 130
    except (DataError, CheckpointError, ImageError, ValueError) as e:
        print(f"error{f' (rank {ctx.rank})' if ctx.world > 1 else ''}: {e}", file=sys.stderr)
        return 2
    finally:
        distributed.cleanup()
    if ctx.is_main:
        plot_training(history, out / "curves.png")
    last = history[-1] if history else {}
    say(f"done: {out / 'checkpoint.pt'}; final " + ", ".join(f"{k} {v:.4g}" for k, v in last.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
