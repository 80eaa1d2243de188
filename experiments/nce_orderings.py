"""The paper's NCE orderings at the full CPU budget (REPRODUCTION.md, section 2), from finished runs' metrics.

    python experiments/nce_orderings.py --runs softmax=results/cpu-cifar nce-m4096=results/nce/full/nce-m4096-shared \
        --out results/nce/full/orderings.json

Each run is a ``scripts/train.py`` run folder (or a copy of its ``metrics.jsonl``) trained on the
same epoch schedule (the ``cpu-cifar`` preset, 45 epochs), so epochs line up whatever each step
cost. The training monitor's weighted kNN (k = 200 against the memory bank, the paper's
measure) is read per epoch; the summary gives each run's final kNN / 1-NN, its lowest kNN after
the first epoch against the untrained encoder's (epoch 0), and the orderings the paper reports
that the given runs can test: NCE m = 4096 within 3 points of the full softmax, m = 1 lowest,
kNN rising with m. The figure puts every curve on one plot.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from instdisc.fsutil import atomic_write_text
from instdisc.plots import save_png

NCE_NAME = re.compile(r"nce-m(\d+)")  # a run named nce-m<M>... is NCE with m = M noise samples
WITHIN = 3.0  # the paper's ordering as checked here: NCE m = 4096 within this many kNN points of the full softmax


@dataclass(frozen=True)
class RunCurve:
    name: str
    source: str
    epochs: list[int]
    knn: list[float]  # per cent, per monitored epoch (epoch 0 = the untrained encoder)
    nn1: list[float]

    @property
    def final_knn(self) -> float:
        return self.knn[-1]

    @property
    def untrained_knn(self) -> float | None:
        return self.knn[0] if self.epochs and self.epochs[0] == 0 else None

    def lowest_after_first_epoch(self) -> float | None:
        later = [k for e, k in zip(self.epochs, self.knn, strict=True) if e >= 1]
        return min(later) if later else None


def read_curve(name: str, path: Path) -> RunCurve:
    """The monitor rows of a run folder's (or a file's) metrics.jsonl."""
    f = path / "metrics.jsonl" if path.is_dir() else path
    if not f.exists():
        raise SystemExit(f"{name}: no metrics.jsonl at {f}")
    rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("knn_top1") is not None]
    if not rows:
        raise SystemExit(f"{name}: {f} has no kNN monitor rows")
    return RunCurve(name, str(f), [int(r["epoch"]) for r in rows], [round(100 * float(r["knn_top1"]), 4) for r in rows],
                    [round(100 * float(r["knn_1nn"]), 4) for r in rows])


def orderings(runs: list[RunCurve]) -> dict:
    """The paper's Table 1 orderings that these runs can test (None where a run is missing)."""
    by_m = {int(m.group(1)): r for r in runs if (m := NCE_NAME.match(r.name))}
    softmax = next((r for r in runs if r.name.startswith("softmax")), None)
    out: dict = {}
    if softmax is not None and 4096 in by_m:
        gap = softmax.final_knn - by_m[4096].final_knn
        out["nce4096_within_3_of_softmax"] = {"holds": gap <= WITHIN, "gap_points": round(gap, 2)}
    if len(by_m) >= 2:
        ms = sorted(by_m)
        finals = [by_m[m].final_knn for m in ms]
        out["nce_m1_lowest"] = ({"holds": finals[0] == min(finals + ([softmax.final_knn] if softmax else []))}
                                if ms[0] == 1 else None)
        out["nce_improves_with_m"] = {"holds": all(a < b for a, b in zip(finals, finals[1:], strict=False)),
                                      "by_m": dict(zip(ms, [round(f, 2) for f in finals], strict=True))}
    return out


def plot(runs: list[RunCurve], path: Path) -> None:
    from instdisc.plots import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in runs:
        ax.plot(r.epochs, r.knn, marker=".", label=f"{r.name} ({r.final_knn:.1f} %)")
    base = next((r.untrained_knn for r in runs if r.untrained_knn is not None), None)
    if base is not None:
        ax.axhline(base, color="grey", ls=":", lw=1, label=f"untrained encoder ({base:.1f} %)")
    ax.set(xlabel="epoch", ylabel="weighted kNN top-1, k = 200 (%)",
           title="CIFAR-10, cpu-cifar schedule: NCE against the full softmax")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, metavar="NAME=RUN_DIR",
                   help="softmax=... and nce-m<M>...=... run folders (or metrics.jsonl files)")
    p.add_argument("--out", type=Path, required=True, help="JSON path; the figure goes beside it (.png)")
    args = p.parse_args(argv)
    runs = []
    for spec in args.runs:
        if "=" not in spec:
            raise SystemExit(f"--runs takes NAME=RUN_DIR, got {spec!r}")
        name, path = spec.split("=", 1)
        runs.append(read_curve(name, Path(path)))
    summary = {
        "runs": [{**asdict(r), "final_knn": r.final_knn, "final_nn1": r.nn1[-1],
                  "untrained_knn": r.untrained_knn, "lowest_knn_after_first_epoch": r.lowest_after_first_epoch()}
                 for r in runs],
        "orderings": orderings(runs),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(summary, indent=1))
    plot(runs, args.out.with_suffix(".png"))
    for r in summary["runs"]:
        print(f"{r['name']}: kNN {r['final_knn']:.2f} 1-NN {r['final_nn1']:.2f} (untrained {r['untrained_knn']}, "
              f"lowest after epoch 1: {r['lowest_knn_after_first_epoch']})")
    print("orderings:", json.dumps(summary["orderings"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
