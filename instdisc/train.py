"""The training loop: batches of instance indices, batched augmentation, explicit bank update.

Runs are reproducible and resumable exactly: the epoch's order comes from a generator
seeded by (seed, epoch); every other random draw (augmentation, NCE noise) comes from one
``torch.Generator`` whose state is checkpointed; the schedule is a pure function of the
global step. Ctrl-C (SIGINT) or SIGTERM finishes the current step, writes a checkpoint and
stops, and ``resume`` continues from that step as if nothing had happened.

With ``time_budget`` the first steps are timed and the epochs planned to fit (instdisc.budget);
the plan is saved, so a resumed run keeps it. With ``ema`` the weight average evaluates,
refreshes the bank and is exported; with ``refresh_bank`` the bank is re-embedded once at the end.

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

import contextlib
import json
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from . import checkpoint
from . import distributed as ddp
from .augment import SMALL_CROP_SCALE, AugmentConfig, BatchAugment
from .budget import (
    CALIBRATION_STEPS,
    PACE_EPOCHS,
    WARMUP_STEPS,
    Measured,
    Plan,
    plan_epochs,
    repace,
    replan_after_first_epoch,
)
from .config import TrainConfig, embed_size
from .data import DataError, ImageCollection
from .ema import WeightEMA
from .embed import embed
from .fsutil import atomic_write_text
from .knn import knn_accuracy
from .method import InstDisc, StepOutput
from .model import Encoder
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
        t = (epoch_float - cfg.warmup_epochs) / max(1e-8, (cfg.schedule_epochs or cfg.epochs) - cfg.warmup_epochs)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    raise ValueError(f"unknown schedule {cfg.schedule!r}; choose step or cosine")


def neighbour_weight(cfg: TrainConfig, epoch_float: float) -> float:
    """The nearest-neighbour positives' weight at this point of the schedule: ``cfg.neighbours`` from
    ``neighbours_from`` of it on, 0 before (an untrained bank's neighbours are mostly other classes)."""
    length = cfg.schedule_epochs or cfg.epochs
    return cfg.neighbours if cfg.neighbours and epoch_float >= cfg.neighbours_from * length else 0.0


def steps_in_epoch(cfg: TrainConfig, epoch: int, spe: int) -> int:
    """``spe``, except in the last epoch of a fractional schedule (a time budget's plan)."""
    if cfg.schedule_epochs and epoch == cfg.epochs - 1:
        return max(1, min(spe, round((cfg.schedule_epochs - epoch) * spe)))
    return spe


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
        announce: bool = False,
    ) -> None:
        """``progress``: tqdm bars and the plan/epoch lines; ``announce``: the lines without the bars
        (a log file, ``--no-progress``)."""
        self.cfg = cfg
        self.embed_size = embed_size(cfg)  # the final bank refresh, the export, the index and the queries embed at it
        if self.embed_size != cfg.image_size and not cfg.refresh_bank:
            raise ValueError(f"embed_scale {cfg.embed_scale} needs refresh_bank: the bank the training steps write "
                             f"holds {cfg.image_size} px features, the index and the queries embed at "
                             f"{self.embed_size} px")
        self.train_set = train = train.at_eval_size(self.embed_size)
        labelled = evalset is not None and evalset.has_labels and train.has_labels
        self.eval_set = evalset.at_eval_size(self.embed_size) if labelled else None
        self.out = Path(out_dir)
        if ddp.is_main():  # the other ranks of a data-parallel run write nothing
            self.out.mkdir(parents=True, exist_ok=True)
        self.device = ddp.current_device(pick_device(device))
        self.bf16 = use_bf16(self.device, cfg.precision)
        self.rank, self.world = ddp.rank(), ddp.world_size()
        self.is_main = self.rank == 0
        self.progress = progress and self.is_main
        self.announce = (progress or announce) and self.is_main
        if cfg.batch_size % self.world:
            raise ValueError(f"batch_size {cfg.batch_size} (the global batch) must be divisible by the "
                             f"{self.world} processes")
        if cfg.crop_size > train.image_size:
            raise ValueError(f"crop_size {cfg.crop_size} is larger than the images ({train.image_size} px)")
        torch.manual_seed(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        model = InstDisc(cfg, len(train))
        if cfg.sync_bn and self.world > 1:
            model.encoder = ddp.global_batchnorm(model.encoder, self.device)
        self.model = model.to(self.device).to(memory_format=torch.channels_last)
        if cfg.compile:
            compile_module(self.model.encoder, self.device)
        self.model.bank.reset_random(self.gen)
        self.ema = WeightEMA(self.model.encoder, cfg.ema) if cfg.ema > 0 else None
        self.parallel = ddp.data_parallel(self.model, self.device)  # the model itself in one process
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov,
        )
        self.augment = BatchAugment(cfg.crop_size or cfg.image_size)
        self.small_augment = (BatchAugment(cfg.small_crop_size, AugmentConfig(crop_scale=SMALL_CROP_SCALE))
                              if cfg.small_crops else None)
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.history: list[dict] = []
        self.elapsed = 0.0  # seconds in training steps
        self.wall = 0.0  # seconds in fit() altogether (bank fill, steps, monitor, refresh), across resumes
        self.bank_ready = False
        self.refreshed = False
        self.plan = ""  # the time budget's plan, once made
        self.epoch_loss = [0.0, 0]  # running (sum, steps) of the current epoch, for exact resume
        self._stop_requested = False
        self._eval_seconds = 0.0
        self._first_plan: Plan | None = None  # set by the budget's first plan, refined after epoch 1
        self._refresh_estimate = 0.0
        self._clock = time.time()
        self.init_source: dict | None = None  # the checkpoint a fine-tuning run started from (start_from)

    def start_from(self, encoder_state: dict, source: dict) -> None:
        """Fine-tune: begin from these encoder weights. Call before :meth:`fit`, which then fills the bank
        (bank_init=encoder) from them; ``source`` (path, sha256) is saved with the checkpoint."""
        if self.global_step or self.bank_ready:
            raise ValueError("start_from() is for a new run, before fit()")
        self.model.encoder.load_state_dict(encoder_state)
        if self.ema is not None:  # the average starts from the loaded weights, not the random ones
            self.ema = WeightEMA(self.model.encoder, self.cfg.ema)
        self.init_source = dict(source)

    # ------------------------------------------------------------ state

    def state(self) -> dict:
        st = {
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "bank_ready": self.bank_ready,
            "refreshed": self.refreshed,
            "plan": self.plan,
            "epoch_loss": list(self.epoch_loss),
            "rng": {"gen": self.gen.get_state(), "torch": torch.get_rng_state()},
            "dataset": self.train_set.meta(),
            "history": self.history,
            "elapsed": self.elapsed,
            "wall": self.wall_seconds(),
        }
        if self.init_source is not None:
            st["init"] = self.init_source
        if self.ema is not None:
            st["ema_encoder"] = self.ema.module.state_dict()
            st["ema_updates"] = int(self.ema.updates)
        return st

    def save(self) -> Path:
        """Write the checkpoint (rank 0 only: every rank holds the same state)."""
        path = self.out / "checkpoint.pt"
        if self.is_main:
            checkpoint.save(path, self.state())
        return path

    def wall_seconds(self) -> float:
        return self.wall + (time.time() - self._clock)

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
        announce: bool = False,
    ) -> Trainer:
        """``epochs`` extends (or shortens) the schedule; ``compile`` overrides the saved choice
        (it changes speed, not the method; compiled kernels may round differently)."""
        ckpt = checkpoint.load(path)
        cfg = TrainConfig.from_dict(ckpt["config"])
        if epochs is not None and epochs != cfg.epochs:
            cfg = replace(cfg, epochs=epochs, schedule_epochs=0.0)  # a whole-epoch schedule again
        if compile is not None:
            cfg = replace(cfg, compile=compile)
        if ckpt["dataset"]["paths"] != train.paths:
            raise DataError(
                f"the data given ({len(train)} images under {train.root}) is not the data this checkpoint was "
                f"trained on ({len(ckpt['dataset']['paths'])} images under {ckpt['dataset']['root']}); "
                "resume needs the same files"
            )
        out = out_dir if out_dir is not None else Path(path).parent
        t = cls(cfg, train, evalset, out, device, progress, announce)
        t.model.load_state_dict(ckpt["model"])
        t.optimizer.load_state_dict(ckpt["optimizer"])
        if t.ema is not None and "ema_encoder" in ckpt:
            t.ema.module.load_state_dict(ckpt["ema_encoder"])
            t.ema.updates.fill_(int(ckpt.get("ema_updates", 0)))
        t.epoch, t.step_in_epoch, t.global_step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]
        t.bank_ready = ckpt.get("bank_ready", True)
        t.refreshed = bool(ckpt.get("refreshed", False)) and t.epoch >= cfg.epochs
        t.plan = str(ckpt.get("plan", ""))
        t.epoch_loss = list(ckpt.get("epoch_loss", [0.0, 0]))
        t.gen.set_state(ckpt["rng"]["gen"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        t.history = list(ckpt.get("history", []))
        t.init_source = ckpt.get("init")
        t.elapsed = float(ckpt.get("elapsed", 0.0))
        t.wall = float(ckpt.get("wall", t.elapsed))
        # metrics.jsonl becomes the checkpoint's history again: a run killed after logging an epoch but
        # before checkpointing it would otherwise log that epoch twice (or leave a line cut short)
        if t.is_main:
            atomic_write_text(t.out / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in t.history))
        return t

    # ------------------------------------------------------------ pieces

    @property
    def inference_encoder(self) -> Encoder:
        """What evaluates and exports: the weight average when kept, else the live encoder."""
        return self.ema.module if self.ema is not None else self.model.encoder

    def features(self, coll: ImageCollection, side: int | None = None) -> torch.Tensor:
        """(N, d) embeddings of ``coll`` by the inference encoder at ``side`` (default: the run's embed side)."""
        return embed(self.inference_encoder, coll.at_eval_size(side or self.embed_size).images, self.device,
                     self.bf16)

    @property
    def bank_side(self) -> int:
        """Side the bank's rows were embedded at: the training side while the training steps write
        them, the embed side once the final refresh has re-embedded them (what is exported)."""
        return self.embed_size if self.refreshed else self.cfg.image_size

    def warm_start_bank(self) -> None:
        """Fill the bank from the untrained encoder instead of random vectors (bank_init=encoder).

        Data-parallel: each rank embeds its contiguous shard and the shards are all-gathered.
        """
        self.fill_bank(self.model.encoder, self.cfg.image_size)

    def fill_bank(self, encoder: Encoder, side: int) -> None:
        """Every bank row <- ``encoder``'s embedding of its image at ``side`` (warm start, final refresh)."""
        n = len(self.train_set)
        lo, hi = ddp.shard_range(n, self.rank, self.world)
        local = embed(encoder, self.train_set.at_eval_size(side).images[lo:hi], self.device, self.bf16)
        feats = ddp.all_gather_rows(local.to(self.device), n)
        self.model.bank.fill(torch.arange(n), feats)

    def evaluate(self) -> dict:
        """Weighted kNN (k = knn_k) and 1-NN of the eval split against the memory bank.

        Data-parallel: computed once, on rank 0, and its result sent to the others.
        """
        if self.eval_set is None:
            return {}
        t0 = time.time()
        if self.world > 1:
            out = ddp.broadcast_object(self._knn() if self.is_main else None)
        else:
            out = self._knn()
        self._eval_seconds = time.time() - t0
        return out  # type: ignore[return-value]

    def _knn(self) -> dict:
        q = self.features(self.eval_set, self.bank_side)  # queries made like the bank rows they are compared with
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

    def _local_batch(
        self, idx: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """(augmented views, small crops, instance indices, noise rows) of this rank's slice of the
        global batch ``idx``.

        Every random parameter is drawn for the whole global batch, in the order a single process
        draws them, so one process gets exactly the batch it always got and sample j gets the same
        augmentation and noise on any number of ranks.
        """
        size = self.train_set.image_size
        draws = [self.augment.sample(len(idx), size, size, self.gen) for _ in range(self.cfg.views)]
        noise = self.model.sample_noise(idx, self.gen)
        small_draws = ([self.small_augment.sample(len(idx), size, size, self.gen) for _ in range(self.cfg.small_crops)]
                       if self.small_augment is not None else [])
        if self.world > 1:
            b = len(idx) // self.world
            lo, hi = self.rank * b, (self.rank + 1) * b
            idx = idx[lo:hi]
            draws, small_draws = [d.rows(lo, hi) for d in draws], [d.rows(lo, hi) for d in small_draws]
            noise = None if noise is None else noise[lo:hi]
        images = self.train_set.images[idx].to(self.device, non_blocking=True)
        views = [self.augment.apply(images, d).contiguous(memory_format=torch.channels_last) for d in draws]
        small = None
        if small_draws:
            small = torch.cat([self.small_augment.apply(images, d) for d in small_draws])  # type: ignore[union-attr]
            small = small.contiguous(memory_format=torch.channels_last)
        return views, small, idx, noise

    def _step(self, batch_idx: torch.Tensor, lr: float, neighbours: float = 0.0) -> float:
        """One optimiser step on a global batch, then the bank update; returns the batch's mean loss."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        views, small, idx, noise = self._local_batch(batch_idx)
        with autocast(self.device, self.bf16):
            out: StepOutput = self.parallel(views, idx, noise, small, neighbours)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model.encoder)
        prob = None if out.positive_prob is None else ddp.all_gather_cat(out.positive_prob)
        gathered = StepOutput(out.loss, ddp.all_gather_cat(out.features), prob)
        self.model.update_bank(ddp.all_gather_cat(idx.to(out.features.device)), gathered)
        self.global_step += 1
        return ddp.mean_value(out.loss)

    def _plan(self, step_seconds: float, steps_done: int) -> None:
        """Replace ``cfg.epochs`` (and scale a step schedule) so that the run fits ``time_budget``."""
        cfg = self.cfg
        n = len(self.train_set)
        refresh_s = 0.0
        if cfg.refresh_bank:  # time a small embedding batch to predict the final re-embedding
            probe = self.train_set.images[: min(n, 1024)]  # two of embed()'s batches: small ones run slower
            t0 = time.time()
            embed(self.inference_encoder, probe, self.device, self.bf16)
            refresh_s = (time.time() - t0) * n / max(1, len(probe))
        m = Measured(step_seconds, steps_per_epoch(n, cfg.batch_size),
                     self._eval_seconds if self.eval_set is not None else 0.0, cfg.knn_every, refresh_s,
                     self.wall_seconds())
        self._refresh_estimate = refresh_s
        self._first_plan = plan_epochs(cfg.time_budget, m)
        self._apply_plan(self._first_plan, steps_done)

    def _apply_plan(self, plan: Plan, steps_done_this_epoch: int) -> None:
        cfg = self.cfg
        plan = ddp.broadcast_object(plan) if self.world > 1 else plan  # every rank follows rank 0's plan
        spe = steps_per_epoch(len(self.train_set), cfg.batch_size)
        done = self.epoch + steps_done_this_epoch / spe  # a plan cannot end before the steps already taken
        if plan.schedule_epochs < done:  # type: ignore[union-attr]
            plan = Plan(done, plan.seconds, plan.reason + f" (but {done:.2f} epochs are done already)")  # type: ignore[union-attr]
        steps = tuple(max(1, round(s * plan.schedule_epochs / cfg.epochs)) for s in cfg.lr_steps)
        self.cfg = replace(cfg, epochs=plan.epochs, schedule_epochs=plan.schedule_epochs, lr_steps=steps)
        self.plan = plan.reason  # type: ignore[union-attr]
        if self.announce:
            self._say(f"time budget {cfg.time_budget / 60:.1f} min: {self.plan}")

    def _keep_pace(self, spe: int) -> None:
        """Re-plan the rest of a budgeted run when the machine's pace has drifted (instdisc.budget.repace)."""
        walls = [r["wall"] for r in self.history if r.get("epoch", 0) >= 1 and "wall" in r][-(PACE_EPOCHS + 1):]
        if len(walls) < 2:
            return
        recent = (walls[-1] - walls[0]) / (len(walls) - 1)
        current = Plan(self.cfg.schedule_epochs or float(self.cfg.epochs), 0.0, self.plan)
        plan = repace(self.cfg.time_budget, current, self.epoch, recent, self.wall_seconds(),
                      0.0 if self.refreshed else self._refresh_estimate, spe)
        if plan is not None:
            self._apply_plan(plan, 0)

    def _prepare_bank(self) -> None:
        """Bank start (random or the untrained encoder's features) and the epoch-0 monitor, once."""
        cfg = self.cfg
        if cfg.bank_init == "encoder":
            self.warm_start_bank()
        elif cfg.bank_init != "random":
            raise ValueError(f"bank_init must be random or encoder, got {cfg.bank_init!r}")
        self.bank_ready = True
        if not self.history and self.eval_set is not None:
            self._log({"epoch": 0, **self.evaluate(), "wall": self.wall_seconds()})

    def _end_epoch(self, done_steps: int, seconds: float) -> None:
        """Log the epoch (loss, lr, speed, kNN), refresh the bank after the last one, checkpoint."""
        cfg = self.cfg
        spe = steps_per_epoch(len(self.train_set), cfg.batch_size)
        bs = min(cfg.batch_size, len(self.train_set))
        self.elapsed += seconds
        self.epoch += 1
        self.step_in_epoch = 0
        row = {
            "epoch": self.epoch,
            "loss": self.epoch_loss[0] / max(1, self.epoch_loss[1]),
            "lr": lr_at(cfg, self.epoch - 1 + (steps_in_epoch(cfg, self.epoch - 1, spe) - 1) / spe),
            "images_per_s": done_steps * bs / max(seconds, 1e-9),
            "seconds": seconds,
        }
        self.epoch_loss = [0.0, 0]
        last = self.epoch == cfg.epochs
        if last and cfg.refresh_bank and not self.refreshed:
            self.fill_bank(self.inference_encoder, self.embed_size)
            self.refreshed = True
        if self.eval_set is not None and (last or (cfg.knn_every and self.epoch % cfg.knn_every == 0)):
            row.update(self.evaluate())
        row["elapsed"] = self.elapsed
        row["wall"] = self.wall_seconds()
        self._log(row)
        self.save()
        if self.announce:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch")
            self._say(f"epoch {self.epoch}/{cfg.epochs}: {shown}")

    def _say(self, line: str) -> None:
        """A line under the progress bars, or straight to stdout (flushed, for log files) without them."""
        if self.progress:
            tqdm.write(line)
        else:
            print(line, flush=True)

    @contextlib.contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM only set a flag; the loop stops at the next step with a checkpoint."""
        handlers = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                handlers[sig] = signal.signal(sig, self._request_stop)
            except ValueError:  # not the main thread
                pass
        try:
            yield
        finally:
            for sig, h in handlers.items():
                signal.signal(sig, h)

    def _stop(self, step: int, t0: float) -> None:
        self.step_in_epoch = step
        self.elapsed += time.time() - t0
        self.save()
        ddp.barrier()  # the checkpoint is complete before any rank exits
        raise Interrupted(f"stopped at epoch {self.epoch + 1}, step {step}; checkpoint saved")

    # ------------------------------------------------------------ loop

    def fit(
        self, stop_after_steps: int | None = None, on_step: Callable[[int, float], None] | None = None
    ) -> list[dict]:
        """Train to ``cfg.epochs``; stop early (with a checkpoint) after ``stop_after_steps`` steps
        of this call or on SIGINT/SIGTERM, raising :class:`Interrupted` -- also when the signal came
        during the last step: the run is then complete, but its caller still stops.

        ``on_step(global_step, loss)`` sees every step's loss (the global batch's mean).
        """
        n = len(self.train_set)
        spe, bs = steps_per_epoch(n, self.cfg.batch_size), min(self.cfg.batch_size, n)
        if bs % self.world:
            raise ValueError(f"the global batch of {bs} images does not split over {self.world} processes")
        self._clock = time.time()
        steps_this_call, calib_t0 = 0, time.time()
        with self._stop_on_signals():
            if not self.bank_ready:
                self._prepare_bank()
            self.model.train()
            while self.epoch < self.cfg.epochs:
                order, t0 = self._order(self.epoch), time.time()
                bar = tqdm(range(self.step_in_epoch, steps_in_epoch(self.cfg, self.epoch, spe)), unit="step",
                           desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}", disable=not self.progress, leave=False)
                done = 0
                for step in bar:
                    limit = stop_after_steps is not None and steps_this_call >= stop_after_steps
                    if ddp.any_true(self._stop_requested or limit):  # every rank stops at the same step
                        self._stop(step, t0)
                    if steps_this_call == WARMUP_STEPS:
                        calib_t0 = time.time()  # the budget's calibration starts after the warm-up steps
                    lr = lr_at(self.cfg, self.epoch + step / spe)
                    loss = self._step(order[step * bs : (step + 1) * bs], lr,
                                      neighbour_weight(self.cfg, self.epoch + step / spe))
                    steps_this_call += 1
                    if on_step is not None:
                        on_step(self.global_step, loss)
                    if not math.isfinite(loss):
                        raise FloatingPointError(f"loss became {loss} at epoch {self.epoch + 1} step {step}")
                    self.epoch_loss = [self.epoch_loss[0] + loss, self.epoch_loss[1] + 1]
                    calibrated = steps_this_call == WARMUP_STEPS + CALIBRATION_STEPS
                    if self.cfg.time_budget > 0 and not self.plan and calibrated:
                        self._plan((time.time() - calib_t0) / CALIBRATION_STEPS, step + 1)
                        bar.set_description(f"epoch {self.epoch + 1}/{self.cfg.epochs}")
                    done += 1
                    bar.set_postfix(loss=f"{loss:.3f}", img_s=f"{done * bs / max(1e-9, time.time() - t0):.0f}",
                                    lr=f"{lr:.4f}")
                    if step + 1 >= steps_in_epoch(self.cfg, self.epoch, spe):  # a plan made this epoch may end it
                        break
                if self.cfg.time_budget > 0 and not self.plan:  # fewer steps so far than the calibration needs
                    self._plan((time.time() - t0) / max(1, done), self.step_in_epoch + done)
                epoch_t0 = self.wall_seconds() - (time.time() - t0)
                self._end_epoch(done, time.time() - t0)
                if self._first_plan is not None and self.epoch == 1 and self.cfg.epochs > 1:
                    self._apply_plan(replan_after_first_epoch(
                        self.cfg.time_budget, self._first_plan, self.wall_seconds() - epoch_t0, self.wall_seconds(),
                        self._refresh_estimate, spe), 0)
                    self._first_plan = None
                elif self.cfg.time_budget > 0 and self.plan and self.epoch >= 2 and self.epoch < self.cfg.epochs:
                    self._keep_pace(spe)
        self.wall = self.wall_seconds()
        self._clock = time.time()
        ddp.barrier()  # rank 0 has written the last checkpoint before any rank exits
        if ddp.any_true(self._stop_requested):  # Ctrl-C during the last step: the run is done, but the
            # caller (a script that would go on to index and serve) must still hear the request to stop
            raise Interrupted(f"stopped after the last epoch ({self.epoch}); the run is complete, checkpoint saved")
        return self.history
