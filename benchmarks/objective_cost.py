"""Cost of one objective step against the memory-bank size: full softmax vs NCE (m = 4096), NCE's noise
drawn per sample (the paper's) or once per batch (``nce_noise shared``).

    python benchmarks/objective_cost.py                  # N = 50k, 1.28M, 10M (a few minutes)
    python benchmarks/objective_cost.py --quick          # smoke test, seconds

One step is the forward and backward of the objective alone (``instdisc.objectives``
``NonParametricSoftmax`` and ``NCE``) for a batch of 128 unit features that require grad,
against a bank of N random unit rows (d = 128, fp32) -- the part of a training step that
grows with N. Each N runs in a fresh subprocess so its peak RSS is its own. Two precisions:
fp32, and under bf16 autocast as the training loop runs it on a CPU with AMX / a GPU (the
bank is then cast to bf16 inside the matmul, every step). A case whose arithmetic does not
fit the machine's available memory (the softmax's B x N logits, their log-softmax and
gradients: about 4 x 4 B x N bytes) is reported as not run, with the bytes it needs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks import common
from instdisc.memory import MemoryBank
from instdisc.objectives import NCE, NonParametricSoftmax
from instdisc.plots import pyplot
from instdisc.runtime import autocast

DIM, BATCH = 128, 128
CASES = ("softmax", "nce", "nce-shared")  # nce: m noise rows per sample (a B x (m+1) x d gather); shared: one draw


def random_bank(n: int, seed: int = 0, chunk: int = 1 << 20) -> MemoryBank:
    """A bank of n random unit rows, filled in chunks so the peak stays ~ one bank."""
    bank = MemoryBank(n, DIM)
    g = torch.Generator().manual_seed(seed)
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        bank.features[i : i + m] = F.normalize(torch.randn(m, DIM, generator=g), dim=1)
    return bank


def softmax_bytes(n: int, batch: int = BATCH) -> int:
    """Working memory of a full-softmax step beyond the bank: logits, log-softmax, two gradients."""
    return 4 * 4 * batch * n


def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable"):
            return int(line.split()[1]) * 1024
    return 0


def run_case(objective: str, n: int, bf16: bool, steps: int, nce_k: int) -> dict:
    g = torch.Generator().manual_seed(1)
    bank = random_bank(n)
    obj = NonParametricSoftmax(0.1) if objective == "softmax" else NCE(n, 0.07, nce_k,
                                                                       shared_noise=objective == "nce-shared")
    raw = torch.randn(BATCH, DIM, generator=g)
    idx = torch.randint(0, n, (BATCH,), generator=g)
    dev = torch.device("cpu")

    def step() -> None:
        f = F.normalize(raw, dim=1).requires_grad_()
        with autocast(dev, bf16):
            loss = obj(f, idx, bank, obj.sample_noise(idx, g)).loss
        loss.backward()

    secs = common.time_calls(step, steps, warmup=1)
    return {"seconds_per_step": secs, "ms_per_step": round(1000 * sorted(secs)[len(secs) // 2], 2),
            "peak_rss_mib": round(common.peak_rss_mib(), 1), "bank_mib": round(n * DIM * 4 / 2**20, 1)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--case" in argv:
        p = argparse.ArgumentParser()
        p.add_argument("--case", choices=CASES)
        p.add_argument("--n", type=int)
        p.add_argument("--bf16", type=int)
        p.add_argument("--steps", type=int)
        p.add_argument("--nce-k", type=int)
        a = p.parse_args(argv)
        print(json.dumps(run_case(a.case, a.n, bool(a.bf16), a.steps, a.nce_k)))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[50_000, 1_280_000, 10_000_000])
    p.add_argument("--steps", type=int, nargs="+", default=[20, 5, 3], help="timed steps per size")
    p.add_argument("--nce-k", type=int, default=4096)
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=("fp32", "bf16"))
    common.add_standard_args(p, "objective_cost", "N = 5,000, NCE m = 256, 2 steps")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.steps, args.nce_k = [5000], [2], 256
    common.use_threads(args.threads)
    rec = common.Record("objective_cost", vars(args), args.out)
    for n, steps in zip(args.sizes, args.steps, strict=True):
        for prec in args.precisions:
            for obj in CASES:
                row = {"objective": obj if obj == "softmax" else f"{obj} m={args.nce_k}", "n": n, "precision": prec}
                need = n * DIM * 4 + {"softmax": softmax_bytes(n), "nce": 2 * BATCH * (args.nce_k + 1) * DIM * 4,
                                      "nce-shared": 2 * (BATCH + 1) * args.nce_k * 4 * 2}[obj]
                row["estimated_bytes"] = need
                if need > 0.9 * available_bytes():
                    row["skipped"] = (f"needs ~{need / 2**30:.1f} GiB, {available_bytes() / 2**30:.1f} GiB available")
                else:
                    cli = ["--case", obj, "--n", str(n), "--bf16", str(int(prec == "bf16")), "--steps", str(steps),
                           "--nce-k", str(args.nce_k)]
                    try:
                        row.update(common.run_case_subprocess(__file__, cli))
                    except Exception as e:  # killed for memory, ...: a result too
                        row["skipped"] = str(e)[:300]
                rec.add(row)
                print(f"N={n:,} {prec} {row['objective']}: {row.get('ms_per_step', row.get('skipped'))} ms",
                      flush=True)
                rec.save(partial=True)
    for r in rec.data["results"]:  # how much cheaper NCE is at the same N and precision
        soft = next((s for s in rec.data["results"] if s["objective"] == "softmax" and s["n"] == r["n"]
                     and s["precision"] == r["precision"] and "ms_per_step" in s), None)
        if soft and "ms_per_step" in r and r is not soft:
            r["softmax_over_nce"] = round(soft["ms_per_step"] / r["ms_per_step"], 3)
    rec.save()
    rec.data["table"] = common.table(rec.data["results"], ["n", "precision", "objective", "ms_per_step",
                                                          "softmax_over_nce", "peak_rss_mib", "skipped"],
                                     "objective step (forward + backward), batch 128")
    rec.data["plot"] = str(plot(rec))
    rec.save()
    return 0


def plot(rec: common.Record) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (obj, prec), marker in zip(sorted({(r["objective"], r["precision"]) for r in rec.data["results"]}),
                                   "osv^", strict=False):
        rows = [r for r in rec.data["results"] if r["objective"] == obj and r["precision"] == prec and
                "ms_per_step" in r]
        ax.plot([r["n"] for r in rows], [r["ms_per_step"] for r in rows], marker=marker, label=f"{obj}, {prec}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("memory bank rows N")
    ax.set_ylabel("ms per step (median)")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    return common.save_figure(fig, rec, "Objective forward+backward, batch 128, d 128")


if __name__ == "__main__":
    sys.exit(main())
