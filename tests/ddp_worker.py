"""One rank of the 2-process gloo job in tests/test_distributed.py (started with torchrun's variables).

    RANK=r WORLD_SIZE=2 LOCAL_RANK=r MASTER_ADDR=127.0.0.1 MASTER_PORT=p python tests/ddp_worker.py DATA WORK

Runs, in one process group: an uninterrupted run per objective, and a softmax run stopped after
3 steps then resumed from rank 0's checkpoint. Every rank writes what it saw (per-step losses,
final model state, history) to WORK/result-rank{r}.pt; training output goes to WORK/<run>/rank{r}
so the test can check that only rank 0 wrote files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from instdisc import distributed
from instdisc.config import TrainConfig, preset
from instdisc.data import load_splits
from instdisc.train import Interrupted, Trainer

OBJECTIVES = ("softmax", "nce")
STOP_AFTER = 3  # steps before the interruption: mid-way through epoch 2 (2 steps per epoch)


def config(objective: str) -> TrainConfig:
    """32 images of 16 px, global batch 16 (8 per rank), 2 epochs of 2 steps, fp32, global BatchNorm.

    NCE uses tau = 0.5: at tau = 0.1 on 32 images its fixed-Z loss is so ill-conditioned that one
    process run with 1 and with 2 threads already ends 3e-2 apart after 4 steps (measured), while
    at 0.5 the two stay within 2e-6, so a comparison can tell reordering from a real difference.
    """
    return preset("tiny", epochs=2, batch_size=16, image_size=16, precision="fp32", objective=objective,
                  nce_k=8, temperature=0.5 if objective == "nce" else 0.1, sync_bn=True, knn_k=5)


def main(data: Path, work: Path) -> None:
    torch.set_num_threads(1)
    ctx, device = distributed.init("cpu")
    with distributed.main_first():
        train, ev = load_splits(data, config("softmax").image_size, progress=False)
    result: dict = {}
    for objective in OBJECTIVES:
        losses: list[float] = []
        t = Trainer(config(objective), train, ev, work / objective / f"rank{ctx.rank}", device, progress=False)
        t.fit(on_step=lambda step, loss, out=losses: out.append(loss))
        result[objective] = {"losses": losses, "state": t.model.state_dict(), "history": t.history}
    out = work / "resumed" / f"rank{ctx.rank}"
    losses = []
    try:
        Trainer(config("softmax"), train, ev, out, device, progress=False).fit(
            stop_after_steps=STOP_AFTER, on_step=lambda step, loss: losses.append(loss))
        raise AssertionError("fit did not stop")
    except Interrupted:
        pass
    if ctx.is_main:  # kept for the test that resumes a 2-process checkpoint in one process
        (work / "interrupted.pt").write_bytes((out / "checkpoint.pt").read_bytes())
    distributed.barrier()
    # every rank resumes from the checkpoint rank 0 wrote
    t = Trainer.resume(work / "resumed" / "rank0" / "checkpoint.pt", train, ev, out, device, progress=False)
    t.fit(on_step=lambda step, loss: losses.append(loss))
    result["resumed"] = {"losses": losses, "state": t.model.state_dict(), "history": t.history}
    torch.save(result, work / f"result-rank{ctx.rank}.pt")
    distributed.cleanup()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
