"""Data-parallel runs on several processes: torchrun's environment, torch.distributed collectives.

``torchrun`` starts one process per GPU (or CPU worker) and sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous address; :func:`init` reads them and joins the process
group (NCCL on GPUs, gloo on CPUs). Without those variables (plain ``python script.py``)
nothing is initialised and every helper here is the identity, so the single-process path
runs exactly the code it ran before data-parallelism existed.

The helpers are the few collectives instance discrimination needs: gathering the global
batch's features and indices so that every rank applies the same memory-bank update,
averaging a logged loss, agreeing on a stop request, the global log-mean-exp of NCE's
normaliser, and a BatchNorm whose statistics are the global batch's.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from .runtime import pick_device

# Rank 0 runs the kNN monitor and writes checkpoints while the other ranks wait in the next
# collective; on ImageNet-sized evaluation sets that takes minutes, longer than NCCL's default.
TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class Context:
    """Where this process stands in the job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_context() -> Context:
    """The job layout torchrun put in the environment (rank 0 of 1 without torchrun)."""
    try:
        return Context(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                       int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError as e:
        raise ValueError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers (set by torchrun): {e}") from None


def init(device: str | None = None) -> tuple[Context, torch.device]:
    """Join the process group when launched by torchrun with several processes; pick this rank's device.

    GPUs: ``cuda:LOCAL_RANK`` and NCCL. CPUs (or ``device='cpu'``): gloo. A single process
    (no torchrun, or ``--nproc_per_node=1``) initialises nothing.
    """
    ctx = env_context()
    dev = pick_device(device)
    if ctx.world <= 1:
        return ctx, dev
    if dist.is_initialized():
        return Context(dist.get_rank(), dist.get_world_size(), ctx.local_rank), current_device(dev)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(dev)
        dist.init_process_group("nccl", timeout=TIMEOUT, device_id=dev)
    else:
        dist.init_process_group("gloo", timeout=TIMEOUT)
    return Context(dist.get_rank(), dist.get_world_size(), ctx.local_rank), dev


def current_device(default: torch.device) -> torch.device:
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return default


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def _comm_device() -> torch.device:
    """NCCL moves CUDA tensors only; gloo moves CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Let each node's local rank 0 run the block first (decode / extract into the cache), then the rest.

    Without it every rank decodes the same images at once; after it the others hit the cache.
    """
    if not active():
        yield
        return
    first = env_context().local_rank == 0
    if not first:
        dist.barrier()
    yield
    if first:
        dist.barrier()


# ---------------------------------------------------------------- collectives


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's equally shaped ``t`` along dim 0, in rank order (identity alone)."""
    if not active():
        return t
    dev = _comm_device()
    local = t.detach().to(dev).contiguous()
    out = torch.empty((world_size() * local.shape[0], *local.shape[1:]), dtype=local.dtype, device=dev)
    dist.all_gather_single(out, local)
    return out.to(t.device)


def all_gather_rows(local: torch.Tensor, total: int) -> torch.Tensor:
    """Concatenate contiguous shards of unequal length (``shard_range``) into the ``total`` rows."""
    if not active():
        return local
    size = math.ceil(total / world_size())
    padded = torch.zeros((size, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: local.shape[0]] = local
    gathered = all_gather_cat(padded)
    parts = [gathered[r * size : r * size + (hi - lo)] for r, (lo, hi) in
             enumerate(shard_range(total, r, world_size()) for r in range(world_size()))]
    return torch.cat(parts)


def mean_value(x: torch.Tensor) -> float:
    """The mean over ranks of a scalar (the global batch's loss when local batches are equal)."""
    if not active():
        return x.item()
    t = x.detach().float().reshape(1).to(_comm_device())
    dist.all_reduce(t)
    return t.item() / world_size()


def any_true(flag: bool) -> bool:
    """True on every rank if it is true on one (a stop request reaches all ranks at the same step)."""
    if not active():
        return flag
    t = torch.tensor([int(flag)], device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_object(obj: object, src: int = 0) -> object:
    """``src``'s picklable object on every rank (the kNN monitor's result, computed once)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_comm_device())
    return box[0]


@torch.no_grad()
def log_mean_exp(x: torch.Tensor) -> torch.Tensor:
    """log(mean(exp(x))) over the elements of ``x`` on every rank (equal sizes per rank).

    Alone it is ``logsumexp(x) - log(numel)``, the expression NCE always used.
    """
    lse = torch.logsumexp(x, 0)
    if not active():
        return lse - math.log(x.numel())
    gathered = all_gather_cat(lse.reshape(1).float())
    return torch.logsumexp(gathered, 0).to(lse) - math.log(x.numel() * world_size())


def shard_range(n: int, shard: int, shards: int) -> tuple[int, int]:
    """Rows [lo, hi) of contiguous shard ``shard`` of ``shards`` over ``n`` rows (sizes differ by <= 1)."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard id {shard} is not in [0, {shards})")
    return n * shard // shards, n * (shard + 1) // shards


# ---------------------------------------------------------------- models


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward is again a sum over ranks (the gradient of the ranks' summed loss)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        g = grad.clone()
        dist.all_reduce(g)
        return g


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch across ranks.

    ``torch.nn.SyncBatchNorm`` refuses CPU tensors, so gloo (CPU) jobs -- the tests included --
    use this: two differentiable all-reduces (sum, then the centred sum of squares) in plain
    autograd. Its parameters and buffers are BatchNorm2d's, so checkpoints are unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(x)
        xf = x.float()
        local = torch.tensor([xf.numel() // xf.shape[1]], dtype=torch.float64)
        dist.all_reduce(local)
        count = float(local.item())
        mean = _AllReduceSum.apply(xf.sum((0, 2, 3))) / count
        centred = xf - mean.view(1, -1, 1, 1)
        var = _AllReduceSum.apply((centred * centred).sum((0, 2, 3))) / count
        y = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * (count / max(1.0, count - 1))
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.detach(), alpha=factor)
        return y.to(x.dtype)


def global_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Swap every BatchNorm for one over the global batch: torch's SyncBatchNorm on CUDA, else ours."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GlobalBatchNorm2d):
        new = GlobalBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, global_batchnorm(child, device))
    return module


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel (gradients averaged over ranks), or itself alone.

    Buffers are synced once, at construction, not at every step: the memory bank is a buffer
    (N x d, too big to send each step) that every rank updates identically, and rank 0's
    BatchNorm statistics are the ones checkpointed.
    """
    if not active():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)
