"""The training loop: batches of instance indices, batched augmentation, explicit bank update.

Runs are reproducible and resumable exactly: the epoch's order comes from a generator
seeded by (seed, epoch); every other random draw (augmentation, NCE noise) comes from one
``torch.Generator`` whose state is checkpointed; the schedule is a pure function of the
global step. Ctrl-C (SIGINT) or SIGTERM finishes the current step, writes a checkpoint and
stops, and ``resume`` continues from that step as if nothing had happened.

Data-parallel (``torchrun``, see :mod:`instdisc.distributed`): ``batch_size`` is the global
batch. Every rank draws the same global batch and its augmentation and noise parameters from
the same generator, then encodes only its contiguous slice; DDP averages the gradients, the
batch's features and indices are all-gathered so every rank applies the same bank update,
and rank 0 alone runs the kNN monitor and writes files. So sample j of a step sees the same
augmentation and noise whatever the number of ranks, and with ``sync_bn`` (BatchNorm over
the global batch) an N-process run follows the 1-process run (tests/test_distributed.py),
and can be resumed with another number of processes.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from . import checkpoint
from . import distributed as ddp
from .augment import BatchAugment
from .config import TrainConfig
from .data import DataError, ImageCollection
from .embed import embed
from .fsutil import atomic_write_text
from .knn import knn_accuracy
from .method import InstDisc
from .runtime import autocast, compile_module, pick_device, use_bf16


class Interrupted(Exception):
    """Training stopped on request after writing a checkpoint."""


def lr_at(cfg: TrainConfig, epoch_float: float) -> float:
    """Learning rate as a pure function of (fractional) epoch, so resume needs no scheduler state."""
    if cfg.warmup_epochs and epoch_float < cfg.warmup_epochs:
        return cfg.lr * (epoch_float + 1e-8) / cfg.warmup_epochs
    if cfg.schedule == "step":
        return cfg.lr * 0.1 ** sum(int(epoch_float) >= s for s in cfg.lr_steps)
    if cfg.schedule == "cosine":
        t = (epoch_float - cfg.warmup_epochs) / max(1e-8, cfg.epochs - cfg.warmup_epochs)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    raise ValueError(f"unknown schedule {cfg.schedule!r}; choose step or cosine")


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Full batches only (a 1-image batch would break BatchNorm); at least one step."""
    return max(1, n // batch_size)


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        train: ImageCollection,
        evalset: ImageCollection | None,
        out_dir: str | os.PathLike,
        device: str | None = None,
        progress: bool = True,
    ) -> None:
        self.cfg = cfg
        self.train_set = train
        self.eval_set = evalset if (evalset is not None and evalset.has_labels and train.has_labels) else None
        self.out = Path(out_dir)
        if ddp.is_main():  # the other ranks of a data-parallel run write nothing
            self.out.mkdir(parents=True, exist_ok=True)
        self.device = ddp.current_device(pick_device(device))
        self.bf16 = use_bf16(self.device, cfg.precision)
        self.rank, self.world = ddp.rank(), ddp.world_size()
        self.is_main = self.rank == 0
        self.progress = progress and self.is_main
        if cfg.batch_size % self.world:
            raise ValueError(f"batch_size {cfg.batch_size} (the global batch) must be divisible by the "
                             f"{self.world} processes")
        torch.manual_seed(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        model = InstDisc(cfg, len(train))
        if cfg.sync_bn and self.world > 1:
            model.encoder = ddp.global_batchnorm(model.encoder, self.device)
        self.model = model.to(self.device).to(memory_format=torch.channels_last)
        if cfg.compile:
            compile_module(self.model.encoder, self.device)
        self.model.bank.reset_random(self.gen)
        self.parallel = ddp.data_parallel(self.model, self.device)  # the model itself in one process
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        self.augment = BatchAugment(cfg.image_size)
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.history: list[dict] = []
        self.elapsed = 0.0
        self.bank_ready = False
        self.epoch_loss = [0.0, 0]  # running (sum, steps) of the current epoch, for exact resume
        self._stop_requested = False

    # ------------------------------------------------------------ state

    def state(self) -> dict:
        return {
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "bank_ready": self.bank_ready,
            "epoch_loss": list(self.epoch_loss),
            "rng": {"gen": self.gen.get_state(), "torch": torch.get_rng_state()},
            "dataset": self.train_set.meta(),
            "history": self.history,
            "elapsed": self.elapsed,
        }

    def save(self) -> Path:
        """Write the checkpoint (rank 0 only: every rank holds the same state)."""
        path = self.out / "checkpoint.pt"
        if self.is_main:
            checkpoint.save(path, self.state())
        return path

    @classmethod
    def resume(
        cls,
        path: str | os.PathLike,
        train: ImageCollection,
        evalset: ImageCollection | None,
        out_dir: str | os.PathLike | None = None,
        device: str | None = None,
        progress: bool = True,
        epochs: int | None = None,
        compile: bool | None = None,
    ) -> Trainer:
        """``epochs`` extends (or shortens) the schedule; ``compile`` overrides the saved choice
        (it changes speed, not the method; compiled kernels may round differently)."""
        ckpt = checkpoint.load(path)
        cfg = TrainConfig.from_dict(ckpt["config"])
        if epochs is not None and epochs != cfg.epochs:
            cfg = replace(cfg, epochs=epochs)
        if compile is not None:
            cfg = replace(cfg, compile=compile)
        if ckpt["dataset"]["paths"] != train.paths:
            raise DataError(
                f"the data given ({len(train)} images under {train.root}) is not the data this checkpoint was "
                f"trained on ({len(ckpt['dataset']['paths'])} images under {ckpt['dataset']['root']}); "
                "resume needs the same files"
            )
        out = out_dir if out_dir is not None else Path(path).parent
        t = cls(cfg, train, evalset, out, device, progress)
        t.model.load_state_dict(ckpt["model"])
        t.optimizer.load_state_dict(ckpt["optimizer"])
        t.epoch, t.step_in_epoch, t.global_step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]
        t.bank_ready = ckpt.get("bank_ready", True)
        t.epoch_loss = list(ckpt.get("epoch_loss", [0.0, 0]))
        t.gen.set_state(ckpt["rng"]["gen"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        t.history = list(ckpt.get("history", []))
        t.elapsed = float(ckpt.get("elapsed", 0.0))
        # metrics.jsonl becomes the checkpoint's history again: a run killed after logging an epoch but
        # before checkpointing it would otherwise log that epoch twice (or leave a line cut short)
        if t.is_main:
            atomic_write_text(t.out / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in t.history))
        return t

    # ------------------------------------------------------------ pieces

    def features(self, coll: ImageCollection) -> torch.Tensor:
        return embed(self.model.encoder, coll.images, self.device, self.bf16)

    def warm_start_bank(self) -> None:
        """Fill the bank from the untrained encoder instead of random vectors (bank_init=encoder).

        Data-parallel: each rank embeds its contiguous shard and the shards are all-gathered.
        """
        n = len(self.train_set)
        lo, hi = ddp.shard_range(n, self.rank, self.world)
        local = embed(self.model.encoder, self.train_set.images[lo:hi], self.device, self.bf16)
        feats = ddp.all_gather_rows(local.to(self.device), n)
        self.model.bank.fill(torch.arange(n), feats)

    def evaluate(self) -> dict:
        """Weighted kNN (k = knn_k) and 1-NN of the eval split against the memory bank.

        Data-parallel: computed once, on rank 0, and its result sent to the others.
        """
        if self.eval_set is None:
            return {}
        if self.world > 1:
            return ddp.broadcast_object(self._knn() if self.is_main else None)  # type: ignore[return-value]
        return self._knn()

    def _knn(self) -> dict:
        q = self.features(self.eval_set)
        acc = knn_accuracy(
            q, self.eval_set.labels, self.model.bank.features, self.train_set.labels,
            ks=(1, self.cfg.knn_k), temperature=self.cfg.temperature,
        )
        return {"knn_top1": acc[self.cfg.knn_k], "knn_1nn": acc[1]}

    def _order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.train_set), generator=g)

    def _log(self, row: dict) -> None:
        self.history.append(row)
        if not self.is_main:
            return
        with (self.out / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _request_stop(self, signum, frame) -> None:  # noqa: ANN001
        self._stop_requested = True

    def _local_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(augmented images, instance indices, noise rows) of this rank's slice of the global batch ``idx``.

        Every random parameter is drawn for the whole global batch, in the order a single process
        draws them, so one process gets exactly the batch it always got and sample j gets the same
        augmentation and noise on any number of ranks.
        """
        size = self.train_set.image_size
        draw = self.augment.sample(len(idx), size, size, self.gen)
        noise = self.model.sample_noise(idx, self.gen)
        if self.world > 1:
            b = len(idx) // self.world
            lo, hi = self.rank * b, (self.rank + 1) * b
            idx, draw = idx[lo:hi], draw.rows(lo, hi)
            noise = None if noise is None else noise[lo:hi]
        x = self.augment.apply(self.train_set.images[idx].to(self.device, non_blocking=True), draw)
        return x.contiguous(memory_format=torch.channels_last), idx, noise

    # ------------------------------------------------------------ loop

    def fit(
        self, stop_after_steps: int | None = None, on_step: Callable[[int, float], None] | None = None
    ) -> list[dict]:
        """Train to ``cfg.epochs``; stop early (with a checkpoint) after ``stop_after_steps`` steps
        of this call or on SIGINT/SIGTERM, raising :class:`Interrupted`.

        ``on_step(global_step, loss)`` sees every step's loss (the global batch's mean).
        """
        cfg, model = self.cfg, self.model
        n = len(self.train_set)
        spe = steps_per_epoch(n, cfg.batch_size)
        bs = min(cfg.batch_size, n)
        if bs % self.world:
            raise ValueError(f"the global batch of {bs} images does not split over {self.world} processes")
        handlers = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                handlers[sig] = signal.signal(sig, self._request_stop)
            except ValueError:  # not the main thread
                pass
        steps_this_call = 0
        try:
            if not self.bank_ready:
                if cfg.bank_init == "encoder":
                    self.warm_start_bank()
                elif cfg.bank_init != "random":
                    raise ValueError(f"bank_init must be random or encoder, got {cfg.bank_init!r}")
                self.bank_ready = True
                if not self.history and self.eval_set is not None:
                    self._log({"epoch": 0, **self.evaluate()})
            model.train()
            while self.epoch < cfg.epochs:
                order = self._order(self.epoch)
                t0 = time.time()
                bar = tqdm(range(self.step_in_epoch, spe), desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                           disable=not self.progress, unit="step", leave=False)
                for step in bar:
                    limit = stop_after_steps is not None and steps_this_call >= stop_after_steps
                    stop = self._stop_requested or limit
                    if ddp.any_true(stop):  # every rank stops at the same step
                        self.step_in_epoch = step
                        self.elapsed += time.time() - t0
                        self.save()
                        ddp.barrier()  # the checkpoint is complete before any rank exits
                        raise Interrupted(f"stopped at epoch {self.epoch + 1}, step {step}; checkpoint saved")
                    lr = lr_at(cfg, self.epoch + step / spe)
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
                    x, idx, noise = self._local_batch(order[step * bs : (step + 1) * bs])
                    with autocast(self.device, self.bf16):
                        loss, feats = self.parallel(x, idx, self.gen, noise)
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    self.optimizer.step()
                    feats = feats.detach()
                    model.update_bank(ddp.all_gather_cat(idx.to(feats.device)), ddp.all_gather_cat(feats))
                    self.global_step += 1
                    steps_this_call += 1
                    loss_value = ddp.mean_value(loss)
                    if on_step is not None:
                        on_step(self.global_step, loss_value)
                    if not math.isfinite(loss_value):
                        raise FloatingPointError(f"loss became {loss_value} at epoch {self.epoch + 1} step {step}")
                    self.epoch_loss = [self.epoch_loss[0] + loss_value, self.epoch_loss[1] + 1]
                    rate = (step - self.step_in_epoch + 1) * bs / max(1e-9, time.time() - t0)
                    bar.set_postfix(loss=f"{loss_value:.3f}", img_s=f"{rate:.0f}", lr=f"{lr:.4f}")
                seconds = time.time() - t0
                self.elapsed += seconds
                done_steps = spe - self.step_in_epoch
                self.epoch += 1
                self.step_in_epoch = 0
                row = {
                    "epoch": self.epoch,
                    "loss": self.epoch_loss[0] / max(1, self.epoch_loss[1]),
                    "lr": lr_at(cfg, self.epoch - 1 + (spe - 1) / spe),
                    "images_per_s": done_steps * bs / max(seconds, 1e-9),
                    "seconds": seconds,
                }
                self.epoch_loss = [0.0, 0]
                last = self.epoch == cfg.epochs
                if self.eval_set is not None and (last or (cfg.knn_every and self.epoch % cfg.knn_every == 0)):
                    row.update(self.evaluate())
                row["elapsed"] = self.elapsed
                self._log(row)
                self.save()
                if self.progress:
                    shown = ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch")
                    tqdm.write(f"epoch {self.epoch}/{cfg.epochs}: {shown}")
        finally:
            for sig, h in handlers.items():
                signal.signal(sig, h)
        ddp.barrier()  # rank 0 has written the last checkpoint before any rank exits
        return self.history
