"""Why NCE learns slowly: the normaliser and the noise term, measured during training.

    python experiments/nce_diagnosis.py [--epochs 2] [--variants softmax nce-fixed-encoder ...] [--quick]

Every variant is the ``cpu-cifar`` preset with one objective setting changed (see VARIANTS).
A forward hook on the objective (a public ``nn.Module`` hook, nothing private) sees every
step's real training features; every ``--every`` steps it computes, for that batch:

* the **exact** normaliser: Z_i = sum over all N bank rows of exp(v_j . f_i / tau) (cheap at
  CIFAR scale), as log of the batch mean and the spread of log Z_i;
* the **estimate** the objective uses (fixed from the first batch, or the running average)
  and this batch's Monte-Carlo estimate (N x the mean of exp over the positive + noise rows);
* the NCE posteriors under the Z used: h = P / (P + m Pn) of the positive, and the noise
  term's total weight sum_j h_j -- the strength of the push away from noise rows, which is
  about 1 (as in the softmax) when Z is right and vanishes when Z is too large;
* the mean cosine of the positive and of the noise rows (how spread the features are).

Each variant's rows go to ``results/nce/runs/VARIANT.json`` (resumable: finished variants are
skipped) with its kNN per epoch; the summary is ``results/nce/diagnosis.{json,md,png}``
(checkpoints under ``results/nce/work/``, git-ignored).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from instdisc.config import preset
from instdisc.data import load_splits, random_subset
from instdisc.distributed import log_mean_exp
from instdisc.fsutil import atomic_write_text
from instdisc.objectives import NCE
from instdisc.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "nce"
CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"

# name -> (what it is, overrides of the cpu-cifar preset)
VARIANTS: dict[str, tuple[str, dict]] = {
    "softmax": ("full softmax, bank from the encoder (the cpu-cifar preset)", {}),
    "softmax-random": ("full softmax, random bank (the paper's start)", {"bank_init": "random"}),
    "nce-fixed-encoder": ("NCE m=4096, Z fixed from the first batch, bank from the untrained encoder "
                          "(what the earlier NCE runs used)", {"objective": "nce"}),
    "nce-fixed-random": ("NCE m=4096, Z fixed from the first batch, random bank (the paper's start)",
                         {"objective": "nce", "bank_init": "random"}),
    "nce-ema-encoder": ("NCE m=4096, Z a running average (0.99), bank from the encoder",
                        {"objective": "nce", "z_momentum": 0.99}),
    "nce-fixed-encoder-lr003": ("as nce-fixed-encoder with the reference code's lr 0.03 (half the preset's)",
                                {"objective": "nce", "lr": 0.03}),
    "nce-ema-random": ("NCE m=4096, Z a running average (0.99), random bank",
                       {"objective": "nce", "z_momentum": 0.99, "bank_init": "random"}),
    "nce-sample-encoder": ("NCE m=4096, each sample's own Z from its noise rows, bank from the encoder",
                           {"objective": "nce", "nce_z": "per-sample"}),
    "nce-sample-random": ("NCE m=4096, each sample's own Z from its noise rows, random bank (the paper's start)",
                          {"objective": "nce", "nce_z": "per-sample", "bank_init": "random"}),
    # the paper's orderings over m (its table 1), with each normaliser, bank from the encoder
    **{f"nce-sample-m{m}": (f"NCE m={m}, each sample's own Z, bank from the encoder",
                            {"objective": "nce", "nce_k": m, "nce_z": "per-sample"}) for m in (1, 512)},
    **{f"nce-fixed-m{m}": (f"NCE m={m}, Z fixed from the first batch, bank from the encoder",
                           {"objective": "nce", "nce_k": m}) for m in (1, 512)},
}


@dataclass
class NormaliserStats:
    """One batch's normaliser and NCE posteriors (logs are natural)."""

    step: int
    log_z_exact: float  # log mean_i Z_i, Z_i = sum_j exp(v_j . f_i / tau) over all N rows
    log_z_exact_spread: float  # std over the batch of log Z_i: how far one constant Z can be right
    log_z_used: float  # what the objective divides by (NaN for the softmax)
    log_z_batch_estimate: float  # N x mean exp over this batch's positive + noise rows
    h_positive: float  # mean over the batch of P/(P + m Pn) for the positive, under the Z used
    noise_weight: float  # mean over the batch of sum_j h_j over the m noise rows: the push's strength
    noise_weight_exact_z: float  # the same with each sample's exact Z_i
    p_positive_softmax: float  # mean exact softmax probability of the positive
    cos_positive: float
    cos_noise: float


@torch.no_grad()
def normaliser_stats(step: int, f: torch.Tensor, idx: torch.Tensor, bank: torch.Tensor, noise: torch.Tensor,
                     temperature: float, log_z_used: float, per_sample: bool = False) -> NormaliserStats:
    """Pure computation on one batch: ``f`` (B, d) features, ``bank`` (N, d) rows, ``noise`` (B, m).

    ``per_sample``: the objective divides each row by its own estimate (N x mean exp over its noise
    rows) instead of the one ``log_z_used``."""
    f, bank = f.detach().double(), bank.double()
    n, m = bank.shape[0], noise.shape[1]
    s = f @ bank.t()  # B x N cosines
    log_zi = torch.logsumexp(s / temperature, dim=1)  # B
    rows = torch.cat([idx.view(-1, 1), noise], 1)  # B x (m+1)
    sr = s.gather(1, rows)  # B x (m+1)
    batch_est = log_mean_exp((sr / temperature).flatten()) + math.log(n)  # the objective's own estimate
    log_mpn = math.log(m / n)

    def posteriors(log_z: torch.Tensor) -> torch.Tensor:  # h for every row, given log Z (scalar or B x 1)
        log_p = sr / temperature - log_z
        return torch.exp(log_p - torch.logaddexp(log_p, torch.full_like(log_p, log_mpn)))

    if per_sample:
        z_used = torch.logsumexp(sr[:, 1:] / temperature, 1, keepdim=True) + math.log(n / m)  # B x 1
        log_z_used = float(torch.logsumexp(z_used.flatten(), 0) - math.log(len(z_used)))
    else:
        z_used = torch.tensor(log_z_used, dtype=torch.float64)
    h = posteriors(z_used) if math.isfinite(log_z_used) else torch.full_like(sr, float("nan"))
    h_exact = posteriors(log_zi.view(-1, 1))
    return NormaliserStats(
        step=step,
        log_z_exact=float(torch.logsumexp(log_zi, 0) - math.log(len(log_zi))),
        log_z_exact_spread=float(log_zi.std()) if len(log_zi) > 1 else 0.0,
        log_z_used=float(log_z_used),
        log_z_batch_estimate=float(batch_est),
        h_positive=float(h[:, 0].mean()),
        noise_weight=float(h[:, 1:].sum(1).mean()),
        noise_weight_exact_z=float(h_exact[:, 1:].sum(1).mean()),
        p_positive_softmax=float(torch.exp(sr[:, 0] / temperature - log_zi).mean()),
        cos_positive=float(sr[:, 0].mean()),
        cos_noise=float(sr[:, 1:].mean()),
    )


class NormaliserProbe:
    """A forward hook on the objective: every ``every`` calls, :func:`normaliser_stats` of that batch.

    The softmax draws no noise rows; the probe draws m uniform ones itself (its own generator, so the
    training's random stream is untouched) to report the same quantities for comparison.
    """

    def __init__(self, num_noise: int, temperature: float, every: int) -> None:
        self.num_noise, self.temperature, self.every = num_noise, temperature, every
        self.calls = 0
        self.rows: list[NormaliserStats] = []
        self.gen = torch.Generator().manual_seed(12345)
        self.sampler: NCE | None = None  # the NCE noise draw, for objectives that draw none

    def __call__(self, module: torch.nn.Module, args: tuple, output: object) -> None:
        step = self.calls
        self.calls += 1
        if step % self.every:
            return
        f, idx, bank = args[0], args[1], args[2]
        noise = args[3] if len(args) > 3 and args[3] is not None else None
        if noise is None:
            if self.sampler is None:
                self.sampler = NCE(len(bank), self.temperature, self.num_noise)
            noise = self.sampler.sample_noise(idx, self.gen)
        log_z = float(module.log_z) if isinstance(module, NCE) else float("nan")
        per_sample = isinstance(module, NCE) and module.per_sample_z
        self.rows.append(normaliser_stats(step, f.float().cpu(), idx.cpu(), bank.features.cpu(), noise.cpu(),
                                          self.temperature, log_z, per_sample))


def run_variant(name: str, epochs: int, every: int, train, test, out: Path, progress: bool) -> dict:  # noqa: ANN001
    path = out / "runs" / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    what, overrides = VARIANTS[name]
    cfg = preset("cpu-cifar", epochs=epochs, **overrides)
    run_dir = out / "work" / name
    if (run_dir / "checkpoint.pt").exists():  # a probe needs the whole run: start again
        (run_dir / "checkpoint.pt").unlink()
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    trainer = Trainer(cfg, train, test, run_dir, progress=progress)
    probe = NormaliserProbe(cfg.nce_k, cfg.temperature, every)
    handle = trainer.model.objective.register_forward_hook(probe)
    t0 = time.time()
    history = trainer.fit()
    handle.remove()
    out = {
        "name": name, "what": what, "overrides": overrides, "config": trainer.cfg.to_dict(),
        "steps_per_epoch": len(train) // cfg.batch_size, "wall_s": round(time.time() - t0, 1),
        "knn": [{"epoch": r["epoch"], "knn": 100 * r["knn_top1"], "nn1": 100 * r["knn_1nn"]}
                for r in history if "knn_top1" in r],
        "loss": [{"epoch": r["epoch"], "loss": r["loss"]} for r in history if "loss" in r],
        "probe": [asdict(r) for r in probe.rows],
        "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(out, indent=1))
    return out


def markdown(runs: list[dict]) -> str:
    lines = ["| variant | kNN by epoch (0 = untrained) | log Z used | log Z exact (start -> end) | "
             "noise weight, Z used (start -> end) | same, exact Z | spread of log Z_i (start -> end) | "
             "cos noise (end) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        p0, p1 = r["probe"][0], r["probe"][-1]
        knn = " / ".join(f"{k['knn']:.1f}" for k in r["knn"])
        used = "–" if not math.isfinite(p0["log_z_used"]) else f"{p0['log_z_used']:.2f} -> {p1['log_z_used']:.2f}"
        nw = "–" if not math.isfinite(p0["noise_weight"]) else f"{p0['noise_weight']:.3f} -> {p1['noise_weight']:.3g}"
        lines.append(f"| {r['name']} | {knn} | {used} | {p0['log_z_exact']:.2f} -> {p1['log_z_exact']:.2f} | {nw} | "
                     f"{p0['noise_weight_exact_z']:.3f} -> {p1['noise_weight_exact_z']:.3f} | "
                     f"{p0['log_z_exact_spread']:.2f} -> {p1['log_z_exact_spread']:.2f} | {p1['cos_noise']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], path: Path) -> None:
    from instdisc.plots import pyplot, save_png

    plt = pyplot()

    fig, axes = plt.subplots(1, 4, figsize=(20, 4))
    for i, r in enumerate(runs):
        c = f"C{i}"
        spe = r["steps_per_epoch"]
        x = [p["step"] / spe for p in r["probe"]]
        axes[0].plot(x, [p["log_z_exact"] for p in r["probe"]], color=c, label=f"{r['name']} exact")
        if any(math.isfinite(p["log_z_used"]) for p in r["probe"]):
            axes[0].plot(x, [p["log_z_used"] for p in r["probe"]], color=c, ls="--", label=f"{r['name']} used")
            axes[1].plot(x, [p["noise_weight"] for p in r["probe"]], color=c, label=f"{r['name']} (Z used)")
        axes[1].plot(x, [p["noise_weight_exact_z"] for p in r["probe"]], color=c, ls=":", alpha=0.7)
        axes[2].plot(x, [p["log_z_exact_spread"] for p in r["probe"]], color=c, label=r["name"])
        axes[3].plot([k["epoch"] for k in r["knn"]], [k["knn"] for k in r["knn"]], color=c, marker="o",
                     label=r["name"])
    axes[0].set(xlabel="epoch", ylabel="log Z", title="normaliser: exact (solid) vs used (dashed)")
    axes[1].set(xlabel="epoch", ylabel="sum of noise posteriors h", yscale="log",
                title="strength of the noise term (dotted: exact Z)")
    axes[2].set(xlabel="epoch", ylabel="std of log Z_i over the batch",
                title="how much the samples' normalisers differ")
    axes[3].set(xlabel="epoch", ylabel="weighted kNN (%)", title="CIFAR-10 kNN (test vs bank)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(CIFAR))
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--every", type=int, default=20, help="probe every N steps")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--quick", action="store_true", help="a 5 %% subset (smoke test)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder (checkpoints under OUT/work/)")
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    args = ap.parse_args(argv)
    train, test = load_splits(args.data, 32, "auto", progress=args.progress)
    if args.quick:
        train, test = random_subset(train, 0.05), random_subset(test, 0.05)
    runs = [run_variant(v, args.epochs, args.every, train, test, args.out, args.progress) for v in args.variants]
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "diagnosis.json", json.dumps({"runs": runs}, indent=1))
    atomic_write_text(args.out / "diagnosis.md", markdown(runs))
    plot(runs, args.out / "diagnosis.png")
    print(markdown(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
