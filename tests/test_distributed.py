"""Data-parallel training on 2 CPU processes (gloo) follows the 1-process run.

The 2-process job (tests/ddp_worker.py, launched with torchrun's environment variables on a
free local port) and the 1-process reference train the same config (same seed, global batch
16 = 2 x 8, fp32, global BatchNorm) on 32 tiny images for 4 steps. They are equal up to
floating-point reordering, not bit for bit: each rank convolves 8 images instead of 16 and
sums BatchNorm statistics and gradients in another order (all-reduce), so values differ in
the last bits: measured on the 2-core development machine, the largest gap after 4 steps is
1.9e-6 in a step's loss and 2.6e-6 in any weight, bank row or BatchNorm statistic (softmax;
NCE 4.8e-7 and 7.8e-7) -- hence ``ATOL`` = 1e-4, with a wide margin.
Between the two ranks, and between an interrupted-and-resumed 2-process run and an
uninterrupted one, results are bit-identical.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_shapes_dataset
from ddp_worker import OBJECTIVES, STOP_AFTER, config

from instdisc import distributed
from instdisc.augment import BatchAugment
from instdisc.data import load_splits
from instdisc.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
ATOL = 1e-4  # 1 process vs 2 processes: float reordering only (see the module docstring)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("ddp-data"), per_class_train=8, per_class_test=4)


@pytest.fixture(scope="module")
def job(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """Run the 2-process gloo job once; return its folder and each rank's results."""
    work = tmp_path_factory.mktemp("ddp-work")
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "tests" / "ddp_worker.py"), str(data), str(work)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for rank, (p, out) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"rank {rank} failed:\n{out[-4000:]}"
    return work, [torch.load(work / f"result-rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.fixture(scope="module")
def single(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The 1-process reference runs (plain Trainer, no process group)."""
    out = {}
    train, ev = load_splits(data, config("softmax").image_size, progress=False)
    for objective in OBJECTIVES:
        losses: list[float] = []
        t = Trainer(config(objective), train, ev, tmp_path_factory.mktemp(objective), "cpu", progress=False)
        t.fit(on_step=lambda step, loss, out=losses: out.append(loss))
        out[objective] = {"losses": losses, "state": t.model.state_dict(), "history": t.history}
    return out


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_two_processes_give_the_loss_curve_and_bank_of_one(job, single, objective):
    _, ranks = job
    two, one = ranks[0][objective], single[objective]
    assert len(one["losses"]) == 4 and len(two["losses"]) == 4
    torch.testing.assert_close(torch.tensor(two["losses"]), torch.tensor(one["losses"]), atol=ATOL, rtol=0)
    assert one["losses"][-1] != one["losses"][0]  # it trained
    bank2, bank1 = two["state"]["bank.features"], one["state"]["bank.features"]
    torch.testing.assert_close(bank2, bank1, atol=ATOL, rtol=0)
    for k, v in one["state"].items():  # weights, BatchNorm statistics, NCE's Z: all follow
        if v.is_floating_point():
            torch.testing.assert_close(two["state"][k], v, atol=ATOL, rtol=1e-4, msg=k)
    assert [r["epoch"] for r in two["history"]] == [0, 1, 2]
    for r2, r1 in zip(two["history"], one["history"], strict=True):
        assert abs(r2.get("loss", 0) - r1.get("loss", 0)) < ATOL


def test_every_rank_holds_the_same_bank_model_and_history(job):
    _, (r0, r1) = job
    for objective in OBJECTIVES:
        a, b = r0[objective], r1[objective]
        assert a["state"].keys() == b["state"].keys()
        for k in a["state"]:
            assert torch.equal(a["state"][k], b["state"][k]), (objective, k)
        assert a["losses"] == b["losses"]
        # the kNN monitor ran once (rank 0) and its numbers reached rank 1
        assert [r.get("knn_top1") for r in a["history"]] == [r.get("knn_top1") for r in b["history"]]
        assert a["history"][-1]["knn_top1"] is not None


def test_only_rank_zero_writes_files(job):
    work, _ = job
    for objective in OBJECTIVES:
        assert sorted(p.name for p in (work / objective / "rank0").iterdir()) == ["checkpoint.pt", "metrics.jsonl"]
        assert len((work / objective / "rank0" / "metrics.jsonl").read_text().splitlines()) == 3  # epochs 0-2
        assert not (work / objective / "rank1").exists()
    assert not (work / "resumed" / "rank1").exists()


def test_resumed_two_process_run_equals_the_uninterrupted_one(job):
    _, ranks = job
    for r in ranks:
        full, resumed = r["softmax"], r["resumed"]
        assert len(resumed["losses"]) == 4  # STOP_AFTER before the interruption, the rest after
        assert resumed["losses"] == full["losses"]
        for k, v in full["state"].items():
            assert torch.equal(resumed["state"][k], v), k


def test_two_process_checkpoint_resumes_in_one_process(job, single, data, tmp_path):
    # the global batch, its augmentation and noise do not depend on the number of processes,
    # so a run may continue on another number of them
    work, _ = job
    train, ev = load_splits(data, config("softmax").image_size, progress=False)
    t = Trainer.resume(work / "interrupted.pt", train, ev, tmp_path, "cpu", progress=False)
    assert t.global_step == STOP_AFTER
    losses: list[float] = []
    t.fit(on_step=lambda step, loss: losses.append(loss))
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(single["softmax"]["losses"][STOP_AFTER:]),
                               atol=ATOL, rtol=0)
    torch.testing.assert_close(t.model.bank.features, single["softmax"]["state"]["bank.features"], atol=ATOL, rtol=0)


def test_a_slice_of_the_drawn_batch_augments_like_the_whole_batch():
    aug = BatchAugment(16)
    images = torch.randint(0, 256, (8, 3, 20, 20), dtype=torch.uint8)
    draw = aug.sample(8, 20, 20, torch.Generator().manual_seed(3))
    whole = aug.apply(images, draw)
    halves = torch.cat([aug.apply(images[:4], draw.rows(0, 4)), aug.apply(images[4:], draw.rows(4, 8))])
    torch.testing.assert_close(halves, whole, atol=1e-6, rtol=0)
    assert torch.equal(aug(images, torch.Generator().manual_seed(3)), whole)  # __call__ = sample + apply


def test_shard_ranges_cover_the_rows_once():
    for n, shards in ((10, 3), (7, 7), (5, 8), (0, 2)):
        ranges = [distributed.shard_range(n, i, shards) for i in range(shards)]
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
        assert max(h - lo for lo, h in ranges) - min(h - lo for lo, h in ranges) <= 1
    with pytest.raises(ValueError, match="shard id 3"):
        distributed.shard_range(10, 3, 3)


def test_helpers_are_the_identity_in_one_process():
    x = torch.randn(5, 4)
    assert not distributed.active() and distributed.world_size() == 1 and distributed.is_main()
    assert distributed.all_gather_cat(x) is x and distributed.all_gather_rows(x, 5) is x
    assert distributed.mean_value(x.sum()) == x.sum().item()
    assert distributed.any_true(True) and not distributed.any_true(False)
    v = torch.randn(100)
    assert torch.equal(distributed.log_mean_exp(v), torch.logsumexp(v, 0) - torch.log(torch.tensor(100.0)))



def test_torchrun_command_trains_with_two_processes(data, tmp_path):
    """The README's command: torchrun starts 2 gloo ranks; rank 0 alone writes the run folder."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           str(ROOT / "scripts" / "train.py"), "--data", str(data), "--out", str(out), "--preset", "tiny",
           "--device", "cpu", "--precision", "fp32", "--image-size", "16", "--batch-size", "16", "--sync-bn",
           "--knn-k", "5", "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "GLOO_SOCKET_IFNAME": "lo"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("done: ") == 1 and "2 processes" in r.stdout  # printed by rank 0 only
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "curves.png", "ingest.json", "metrics.jsonl"]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["global_step"] == 4 and ckpt["config"]["sync_bn"] is True
