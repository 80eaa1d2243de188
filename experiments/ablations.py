"""CPU-scale ablations of the paper's CIFAR-10 findings (REPRODUCTION.md, section 2).

    python experiments/ablations.py [--groups objective objective-z-ema tau dim size momentum] [--epochs 4]
                                    [--data ../shared/datasets/cifar10-jpeg.tar.gz] [--threads 1]

Several workers may share one campaign (each claims a run before training it), e.g. one
one-thread worker per core: ``for i in 1 2; do python experiments/ablations.py --threads 1 & done``.

Every run is the ``cpu-cifar`` preset with one field changed and one short schedule shared by
all runs (``--epochs``, cosine). Each finished run writes ``results/ablations/runs/NAME.json``;
a rerun skips finished runs and resumes an interrupted one from its checkpoint in
``runs/ablations/NAME``, so the campaign can be stopped and restarted at will. At the end the
groups are tabulated in ``results/ablations/ablations.json`` and plotted in
``results/ablations/ablations.png``.

Every run is evaluated the same way, whatever it trained with: weighted kNN (k = 200, vote
weights exp(s / 0.1), a fixed temperature so the tau ablation compares embeddings, not vote
sharpness) and 1-NN of the 10k test images, once against the memory bank and once against
the whole 50k training set re-embedded by the final encoder (the gallery the paper's
data-size experiment uses: the training subset changes, the labelled gallery does not).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from instdisc.config import preset
from instdisc.data import ImageCollection, load_splits, random_subset
from instdisc.fsutil import atomic_write_text
from instdisc.knn import knn_accuracy
from instdisc.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
KNN_K = 200
KNN_TEMPERATURE = 0.1
BASE_PRESET = "cpu-cifar"
DEFAULT_DATA = str(ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz")
DEFAULT_EPOCHS = 4


@dataclass(frozen=True)
class Run:
    name: str
    overrides: dict = field(default_factory=dict)


# The baseline (full softmax, tau 0.1, 128-d, all data, bank momentum 0.5, seed 0) is one run
# shared by every group. Values in the order they are plotted.
BASELINE = Run("softmax")
GROUPS: dict[str, dict] = {
    "objective": {
        "x": "objective",
        "runs": [
            Run("parametric", {"objective": "parametric"}),
            Run("nce-m1", {"objective": "nce", "nce_k": 1}),
            Run("nce-m10", {"objective": "nce", "nce_k": 10}),
            Run("nce-m512", {"objective": "nce", "nce_k": 512}),
            Run("nce-m4096", {"objective": "nce", "nce_k": 4096}),
            BASELINE,
        ],
        "paper": {"parametric": 63.0, "nce-m1": 42.5, "nce-m4096": 80.4, "softmax": 80.8},
    },
    # NCE with Z as a running average (momentum 0.99 per step) instead of fixed from the first
    # batch: with the bank filled from the untrained encoder, every first-batch similarity is
    # high, the fixed Z is far too large for the rest of training and the noise term fades.
    "objective-z-ema": {
        "x": "objective",
        "runs": [
            Run("parametric", {"objective": "parametric"}),
            *[Run(f"nce-m{m}-zema", {"objective": "nce", "nce_k": m, "z_momentum": 0.99}) for m in (1, 10, 512, 4096)],
            BASELINE,
        ],
        "paper": {"parametric": 63.0, "nce-m1-zema": 42.5, "nce-m4096-zema": 80.4, "softmax": 80.8},
    },
    "tau": {
        "x": "temperature",
        "runs": [
            Run("tau0.05", {"temperature": 0.05}),
            Run("tau0.07", {"temperature": 0.07}),
            BASELINE,
            Run("tau0.2", {"temperature": 0.2}),
            Run("tau0.5", {"temperature": 0.5}),
        ],
    },
    "dim": {
        "x": "low_dim",
        "runs": [Run("dim32", {"low_dim": 32}), Run("dim64", {"low_dim": 64}), BASELINE,
                 Run("dim256", {"low_dim": 256})],
    },
    "size": {
        "x": "subset",
        "runs": [Run("data10", {"subset": 0.1}), Run("data25", {"subset": 0.25}), Run("data50", {"subset": 0.5}),
                 BASELINE],
    },
    "momentum": {
        "x": "memory_momentum",
        "runs": [Run("bankm0", {"memory_momentum": 0.0}), BASELINE, Run("bankm0.9", {"memory_momentum": 0.9})],
    },
}


def evaluate_run(trainer: Trainer, full_train: ImageCollection, test: ImageCollection) -> dict:
    q = trainer.features(test)
    bank = knn_accuracy(q, test.labels, trainer.model.bank.features, trainer.train_set.labels,
                        ks=(1, KNN_K), temperature=KNN_TEMPERATURE)
    gallery = trainer.features(full_train)
    full = knn_accuracy(q, test.labels, gallery, full_train.labels, ks=(1, KNN_K), temperature=KNN_TEMPERATURE)
    return {
        "knn_bank": 100 * bank[KNN_K], "nn1_bank": 100 * bank[1],
        "knn_full": 100 * full[KNN_K], "nn1_full": 100 * full[1],
    }


def run_one(run: Run, epochs: int, full_train: ImageCollection, test: ImageCollection, runs_dir: Path,
            results_dir: Path, progress: bool) -> dict:
    """Train (or resume) one configuration and evaluate it; the result file marks it done."""
    out_json = results_dir / "runs" / f"{run.name}.json"
    if out_json.exists():
        return json.loads(out_json.read_text())
    cfg = preset(BASE_PRESET, epochs=epochs, knn_every=0, **run.overrides)
    train = random_subset(full_train, cfg.subset, cfg.seed)
    run_dir = runs_dir / run.name
    ckpt = run_dir / "checkpoint.pt"
    wall0 = time.time()
    if ckpt.exists():
        trainer = Trainer.resume(ckpt, train, None, run_dir, progress=progress)
    else:
        trainer = Trainer(cfg, train, None, run_dir, progress=progress)
    history = trainer.fit()
    metrics = evaluate_run(trainer, full_train, test)
    result = {
        "name": run.name,
        "overrides": run.overrides,
        "config": cfg.to_dict(),
        "train_images": len(train),
        "loss": [h["loss"] for h in history],
        "train_seconds": trainer.elapsed,
        "images_per_s": sum(h["images_per_s"] for h in history) / max(1, len(history)),
        "wall_seconds_this_call": time.time() - wall0,
        **metrics,
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_json, json.dumps(result, indent=1))
    return result


def claim(runs_dir: Path, name: str) -> bool:
    """Take a run for this process (several workers share one campaign); a dead worker's claim is void."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    path = runs_dir / f"{name}.claim"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(path.read_text() or 0)
                os.kill(pid, 0)
                return pid == os.getpid()
            except PermissionError:  # alive, someone else's
                return False
            except (ValueError, ProcessLookupError):
                path.unlink(missing_ok=True)  # its worker died: the checkpoint lets us resume the run
                continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def summarise(results: dict[str, dict], epochs: int, data: str) -> dict:
    groups = {}
    for gname, g in GROUPS.items():
        rows = []
        for r in g["runs"]:
            if r.name not in results:
                continue
            res = results[r.name]
            rows.append({
                "run": r.name,
                "value": res["config"][g["x"]],
                **{k: round(res[k], 2) for k in ("knn_bank", "nn1_bank", "knn_full", "nn1_full")},
                "paper_knn": g.get("paper", {}).get(r.name),
                "train_minutes": round(res["train_seconds"] / 60, 2),
            })
        groups[gname] = {"x": g["x"], "rows": rows, "complete": len(rows) == len(g["runs"])}
        if g["x"] == "objective":
            groups[gname]["checks"] = objective_ordering(rows, "-zema" if gname.endswith("z-ema") else "")
    return {
        "schedule": {"preset": BASE_PRESET, "epochs": epochs, "schedule": "cosine", "data": data},
        "evaluation": {"k": KNN_K, "vote_temperature": KNN_TEMPERATURE, "queries": "CIFAR-10 test split (10k)"},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch": torch.__version__},
        "date": time.strftime("%Y-%m-%d"),
        "groups": groups,
    }


def objective_ordering(rows: list[dict], suffix: str = "", key: str = "knn_bank") -> dict[str, bool]:
    """The orderings of the paper's Table 1, checked on one metric of an objective group
    (``suffix`` names its NCE variant, e.g. ``-zema``)."""
    acc = {r["run"]: r[key] for r in rows}
    nce_names = [f"nce-m{m}{suffix}" for m in (1, 10, 512, 4096)]
    if not {"parametric", "softmax", *nce_names} <= acc.keys():
        return {}
    nce = [acc[n] for n in nce_names]
    return {
        "nce_m1_lowest": acc[nce_names[0]] == min(acc.values()),
        "softmax_highest": acc["softmax"] == max(acc.values()),
        "nce_improves_with_m": all(a <= b for a, b in zip(nce, nce[1:], strict=False)),
        "parametric_below_softmax_and_nce4096": acc["parametric"] < min(acc["softmax"], nce[-1]),
    }


def markdown(summary: dict) -> str:
    """The tables REPRODUCTION.md quotes, generated from the JSON so no number is copied by hand."""
    s = summary["schedule"]
    lines = [f"Schedule shared by every run: `{s['preset']}` preset, {s['epochs']} epochs, cosine; "
             f"evaluation: weighted kNN k = {summary['evaluation']['k']}, vote temperature "
             f"{summary['evaluation']['vote_temperature']}, {summary['evaluation']['queries']}. "
             f"{summary['machine']['cores']} CPU cores, torch {summary['machine']['torch']}, {summary['date']}.", ""]
    for gname, g in summary["groups"].items():
        if not g["rows"]:
            continue
        paper = any(r["paper_knn"] is not None for r in g["rows"])
        lines += [f"**{gname}** (`{g['x']}`){'' if g['complete'] else ' — incomplete'}", "",
                  "| run | value | kNN (bank) | 1-NN (bank) | kNN (50k re-embedded) | 1-NN (re-embedded) | train min |"
                  + (" paper kNN |" if paper else ""),
                  "|---|---|---|---|---|---|---|" + ("---|" if paper else "")]
        for r in g["rows"]:
            lines.append(f"| {r['run']} | {r['value']} | {r['knn_bank']:.2f} | {r['nn1_bank']:.2f} | "
                         f"{r['knn_full']:.2f} | {r['nn1_full']:.2f} | {r['train_minutes']:.1f} |"
                         + (f" {r['paper_knn'] if r['paper_knn'] is not None else '–'} |" if paper else ""))
        if g.get("checks"):
            lines += ["", "Table 1 orderings (kNN, bank): "
                      + ", ".join(f"{k} **{'yes' if v else 'no'}**" for k, v in g["checks"].items())]
        lines.append("")
    return "\n".join(lines)


def fill_report(report: Path, table_md: str) -> None:
    """Replace the text between ``<!-- ablations -->`` and ``<!-- /ablations -->`` in ``report``."""
    text = report.read_text()
    start, end = "<!-- ablations -->", "<!-- /ablations -->"
    if start not in text or end not in text:
        raise SystemExit(f"{report}: no {start} ... {end} markers to fill")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    atomic_write_text(report, f"{head}{start}\n{table_md}\n{end}{tail}")


def plot(summary: dict, path: Path) -> None:
    from instdisc.plots import pyplot

    plt = pyplot()

    names = [g for g in summary["groups"] if summary["groups"][g]["rows"]]
    cols = min(3, len(names))
    rows_n = -(-len(names) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.6 * cols, 3.8 * rows_n), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, gname in zip(axes.flat, names, strict=False):
        g = summary["groups"][gname]
        rows = g["rows"]
        labels = [str(r["value"]) if g["x"] != "objective" else r["run"] for r in rows]
        xs = range(len(rows))
        ax.plot(xs, [r["knn_bank"] for r in rows], "o-", label="kNN, bank")
        ax.plot(xs, [r["knn_full"] for r in rows], "s--", label="kNN, 50k re-embedded")
        if any(r["paper_knn"] is not None for r in rows):
            ax.plot([i for i, r in enumerate(rows) if r["paper_knn"] is not None],
                    [r["paper_knn"] for r in rows if r["paper_knn"] is not None], "k*", ms=10,
                    label="paper (200 ep, ResNet18)")
        ax.set_xticks(list(xs), labels, rotation=30 if g["x"] == "objective" else 0, fontsize=8)
        ax.set_title(f"{gname} ({g['x']})")
        ax.set_ylabel("weighted kNN top-1 (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"CPU-scale ablations: {summary['schedule']['preset']}, {summary['schedule']['epochs']} epochs each")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--groups", nargs="+", choices=list(GROUPS), default=list(GROUPS))
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="the one schedule every run shares")
    p.add_argument("--runs-dir", default=str(ROOT / "runs" / "ablations"), help="checkpoints (resumable)")
    p.add_argument("--results", default=str(ROOT / "results" / "ablations"), help="JSON + plot")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads; on a shared machine, one-thread workers (one per core) waste less time")
    p.add_argument("--report", default=None,
                   help="also write the tables into this markdown file (between <!-- ablations --> markers)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    full_train, test = load_splits(args.data, 32, "auto", progress=args.progress)
    if test is None or not test.has_labels:
        raise SystemExit(f"{args.data}: needs a labelled test/ split for the kNN evaluation")
    results_dir, runs_dir = Path(args.results), Path(args.runs_dir)
    order = []
    for g in args.groups:
        order += [r for r in GROUPS[g]["runs"] if r.name not in {o.name for o in order}]
    for i, run in enumerate(order, 1):
        t0 = time.time()
        if not (results_dir / "runs" / f"{run.name}.json").exists() and not claim(runs_dir, run.name):
            print(f"[{i}/{len(order)}] {run.name:12s} taken by another worker", flush=True)
            continue
        res = run_one(run, args.epochs, full_train, test, runs_dir, results_dir, args.progress)
        (runs_dir / f"{run.name}.claim").unlink(missing_ok=True)
        # the summary covers every finished run on disk, whichever call of the campaign trained it
        results = {f.stem: json.loads(f.read_text()) for f in sorted((results_dir / "runs").glob("*.json"))}
        print(f"[{i}/{len(order)}] {run.name:12s} kNN bank {res['knn_bank']:.2f}  kNN full {res['knn_full']:.2f}  "
              f"1-NN {res['nn1_bank']:.2f}  ({time.time() - t0:.0f} s)", flush=True)
        summary = summarise(results, args.epochs, args.data)
        atomic_write_text(results_dir / "ablations.json", json.dumps(summary, indent=1))
        plot(summary, results_dir / "ablations.png")
        atomic_write_text(results_dir / "ablations.md", markdown(summary))
        if args.report:
            fill_report(Path(args.report), markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
