"""Learning per CPU-minute: every lever trained under the same wall-clock budgets.

    python experiments/efficiency.py [--dataset cifar10 photos] [--budgets 420 2700] [--variants plain two-view ...]
                                     [--report REPRODUCTION.md] [--quick]

A run is a preset with some ``TrainConfig`` levers switched on and a ``time_budget``, started
from random weights or (``init-general``, or ``init:...`` in a combination) from the bundled
general encoder, whose shape and input size it then takes: the
trainer times its first steps and plans as many epochs of a finished cosine schedule as fit
(instdisc.budget), counting its per-epoch kNN monitor and, where used, the final bank
refresh. So every variant gets the same wall time on this machine, whatever its cost per
step. The curve (weighted kNN and 1-NN of the test split against the memory bank, per epoch,
against wall seconds) comes from the run's metrics; at the end every run is scored the same
way: its inference encoder (the weight average where kept, flip-averaged where set) embeds
the test split, and the gallery is the exported bank (what the index serves) and, as a
second column, the training split re-embedded. Raw pixels and the untrained encoder are
scored on the same queries and gallery.

Resumable: a finished run writes ``results/efficiency/runs/DATASET-VARIANT-BUDGET.json`` and
is skipped next time; an interrupted one resumes from ``runs/efficiency/...``. The summary
(``results/efficiency/efficiency.json``, ``.md``, ``.png``) is rebuilt from every run JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from instdisc import bundled
from instdisc.cli import with_architecture
from instdisc.config import TrainConfig, preset
from instdisc.data import ImageCollection, load_splits, random_subset
from instdisc.embed import embed
from instdisc.evaluation.baselines import pixel_features
from instdisc.evaluation.metrics import rank_and_score
from instdisc.fsutil import atomic_write_text
from instdisc.model import Encoder
from instdisc.resolution import SizeSample
from instdisc.runtime import use_bf16
from instdisc.train import Trainer
from instdisc.trained import Checkpoint
from instdisc.whitening import whitened

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
KNN_TEMPERATURE = 0.1  # vote weights exp(s / 0.1) for every run, so variants compare embeddings
RESULTS = ROOT / "results" / "efficiency"
RUNS = ROOT / "runs" / "efficiency"


@dataclass(frozen=True)
class Dataset:
    name: str
    source: Path
    preset: str  # the preset every variant starts from
    image_size: int
    train_images: int = 0  # a seeded random slice of the train split as the folder and the gallery (0: all)
    unseen: bool = False  # folder, gallery and queries from the test split alone (halves): images the bundled
    # encoder never saw, so fine-tuning it is measured on a folder that is new to it


DATASETS = {
    "cifar10": Dataset("cifar10", SHARED / "cifar10-jpeg.tar.gz", "cpu-cifar", 32),
    "photos": Dataset("photos", SHARED / "tinyimagenet-subset.tar.gz", "cpu-photos", 64),
    # the small-folder case: 4,040 of the 26,260 training photos (the size of the
    # test split) are the folder and the gallery; the queries are still the whole test split
    "photos-4k": Dataset("photos-4k", SHARED / "tinyimagenet-subset.tar.gz", "cpu-photos", 64, train_images=4040),
    # a folder the bundled encoder never saw (it was trained on CIFAR-10 train + the photos' train/):
    # a seeded half of the 4,040 test photos is the folder and the gallery, the other half the queries
    "photos-unseen": Dataset("photos-unseen", SHARED / "tinyimagenet-subset.tar.gz", "cpu-photos", 64, unseen=True),
}


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: dict = field(default_factory=dict)
    what: str = ""
    init: str = ""  # fine-tune from this encoder ('general' = the bundled one, or a checkpoint); "" = random


# One lever per variant against the plain method (the preset as the paper defines the method),
# then the combinations that the single-lever runs justify. See REPRODUCTION.md "Beyond the paper".
VARIANTS = [
    Variant("plain", {}, "the preset unchanged (the paper's method, CPU-sized)"),
    Variant("two-view", {"views": 2}, "two views: bank loss on each + batch softmax between them (Ye et al. 2019)"),
    Variant("multicrop", {"small_crops": 2}, "+2 small 16 px crops: bank loss + batch softmax with the full view"),
    Variant("self-distill", {"self_distill": 1.0, "bank_update": "gradient"},
            "Cao & Wu 2024: sqrt-softmax self-distillation + gradient bank update"),
    Variant("ema-flip-refresh", {"ema": 0.995, "flip_embed": True, "refresh_bank": True},
            "weight EMA, flip-averaged embeddings, bank re-embedded at the end"),
    Variant("b256-nesterov", {"batch_size": 256, "lr": 0.12, "nesterov": True},
            "batch 256 with lr scaled x2, Nesterov momentum"),
    Variant("crop24", {"crop_size": 24}, "train on 24 px crops (0.56x the FLOPs), embed at 32 px"),
    Variant("init-general", {"views": 2, "refresh_bank": True},
            "fine-tune the bundled general encoder (its shape and input size; two views, bank refresh)",
            init="general"),
]
VARIANT_BY_NAME = {v.name: v for v in VARIANTS}


def machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def score(queries: torch.Tensor, q_labels: torch.Tensor, gallery: torch.Tensor, g_labels: torch.Tensor,
          num_classes: int) -> dict:
    """Weighted kNN (k = 200), 1-NN and full-ranking mAP, in per cent."""
    r = rank_and_score(queries, q_labels, gallery, g_labels, num_classes, KNN_TEMPERATURE, knn_ks=(1, 200),
                       pr_ks=(1,), curve_ks=(1, 200))
    return {"knn": 100 * r.knn[200], "nn1": 100 * r.knn[1], "map": 100 * r.map}


def score_whitened(queries: torch.Tensor, test: ImageCollection, gallery: torch.Tensor,
                   train: ImageCollection) -> dict:
    """:func:`score` after PCA whitening fitted on the gallery: the fairness check (whitening lifts
    raw pixels too; instdisc/whitening.py)."""
    g_w, q_w = whitened(gallery, queries)
    return score(q_w, test.labels, g_w, train.labels, len(train.classes))


def baselines(ds: Dataset, train: ImageCollection, test: ImageCollection) -> dict:
    """Raw pixels (as they are and PCA-whitened on the gallery) and the untrained encoder of the
    dataset's preset, scored like every run. A file written before the whitened row gains it."""
    path = RESULTS / "runs" / f"{ds.name}-baselines.json"
    out = json.loads(path.read_text()) if path.exists() else {}
    if "pixels_whitened" in out:
        return out
    nc = len(train.classes)
    g_pix, mean = pixel_features(train.images)
    q_pix, _ = pixel_features(test.images, mean=mean)
    if not out:
        cfg = preset(ds.preset)
        torch.manual_seed(cfg.seed)
        enc = Encoder.from_config(cfg).eval()
        out = {
            "name": f"{ds.name}-baselines", "dataset": ds.name, "train_images": len(train), "test_images": len(test),
            "pixels": score(q_pix, test.labels, g_pix, train.labels, nc),
            "random_init": score(embed(enc, test.images), test.labels, embed(enc, train.images), train.labels, nc),
        }
    out["pixels_whitened"] = score_whitened(q_pix, test, g_pix, train)
    atomic_write_text(path, json.dumps(out, indent=1))
    return out


def starting_point(v: Variant, ds: Dataset) -> Checkpoint | None:
    """The checkpoint a fine-tuning variant starts from (verified), or None for random weights; ``general``
    is the bundled encoder that fits the data set's image side, as ``train.py --init general`` chooses."""
    if not v.init:
        return None
    side = ds.image_size
    return Checkpoint.load(bundled.resolve(v.init, SizeSample(1, 0, side, side, side)))


def run_one(ds: Dataset, v: Variant, budget: float, train: ImageCollection, test: ImageCollection,
            progress: bool, init: Checkpoint | None = None) -> dict:
    """``init``: the variant's starting point (:func:`starting_point`), loaded once by the caller."""
    name = f"{ds.name}-{v.name}-{int(budget)}"
    out_json = RESULTS / "runs" / f"{name}.json"
    if out_json.exists():
        return json.loads(out_json.read_text())
    run_dir = RUNS / name
    knn_every = 1 if budget <= 900 else 3  # ~8-15 points per curve, the monitor within the budget
    cfg = preset(ds.preset, **v.overrides, time_budget=budget, knn_every=knn_every)
    if init is not None:  # the network's shape and input size are the starting encoder's
        cfg = with_architecture(cfg, init.config)
    load_before = loadavg()
    t0 = time.time()
    ckpt = run_dir / "checkpoint.pt"
    resumed = ckpt.exists()  # then the wall clock of this call is not the run's
    if resumed:
        trainer = Trainer.resume(ckpt, train, test, run_dir, progress=progress)
    else:
        trainer = Trainer(cfg, train, test, run_dir, progress=progress)
        if init is not None:
            trainer.start_from(init.encoder().state_dict(), {"path": str(init.path), "sha256": init.sha256})
    history = trainer.fit()
    train_wall = trainer.wall_seconds()
    nc = len(train.classes)
    q = trainer.features(test)
    bank = trainer.model.bank.features
    final = {"bank": score(q, test.labels, bank, train.labels, nc),
             "reembedded": score(q, test.labels, trainer.features(train), train.labels, nc),
             "bank_whitened": score_whitened(q, test, bank, train)}
    result = {
        "name": name, "dataset": ds.name, "variant": v.name, "what": v.what, "budget_s": budget,
        "train_images": len(train), "test_images": len(test),
        "overrides": v.overrides, "init": v.init or None, "config": trainer.cfg.to_dict(), "plan": trainer.plan,
        "epochs": trainer.cfg.epochs, "train_wall_s": round(train_wall, 1),
        "eval_wall_s": round(time.time() - t0 - train_wall, 1) if not resumed else None,
        "curve": [{"epoch": r["epoch"], "wall_s": r.get("wall"), "knn": 100 * r["knn_top1"],
                   "nn1": 100 * r["knn_1nn"]} for r in history if "knn_top1" in r],
        "images_per_s": [round(r["images_per_s"], 1) for r in history if "images_per_s" in r],
        "final": final, "loadavg_before": load_before, "loadavg_after": loadavg(), "machine": machine(),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    atomic_write_text(out_json, json.dumps(result, indent=1))
    return result


def rescore_whitened(ds: Dataset, train: ImageCollection, test: ImageCollection) -> list[str]:
    """Add the PCA-whitened score to this dataset's finished runs scored before it existed, from
    their kept checkpoints (runs whose checkpoint is gone keep a dash). Returns the names updated."""
    done = []
    for path in sorted((RESULTS / "runs").glob(f"{ds.name}-*.json")):
        r = json.loads(path.read_text())
        ckpt = RUNS / r["name"] / "checkpoint.pt"
        if r.get("dataset") != ds.name or "final" not in r or "bank_whitened" in r["final"] or not ckpt.exists():
            continue
        c = Checkpoint.load(ckpt)
        bank = c.bank()
        if bank.shape[0] != len(train) or c.architecture.image_size != ds.image_size:
            continue  # a run on another slice of the data, or a fine-tuned encoder of another input size
        bf16 = use_bf16(torch.device("cpu"), c.config.precision)  # the precision the run embedded with
        r["final"]["bank_whitened"] = score_whitened(embed(c.encoder(), test.images, bf16=bf16), test, bank, train)
        atomic_write_text(path, json.dumps(r, indent=1))
        done.append(r["name"])
    return done


def summarise() -> dict:
    runs = [json.loads(p.read_text()) for p in sorted((RESULTS / "runs").glob("*.json"))]
    base = {r["dataset"]: r for r in runs if r["name"].endswith("-baselines")}
    rows = [r for r in runs if not r["name"].endswith("-baselines")]
    return {"baselines": base, "runs": rows}


def _triple(m: dict | None) -> str:
    """kNN / 1-NN / mAP, or a dash for runs scored before that column existed."""
    return "–" if m is None else f"{m['knn']:.1f} / {m['nn1']:.1f} / {m['map']:.1f}"


def markdown(summary: dict) -> str:
    lines = []
    for ds in sorted({r["dataset"] for r in summary["runs"]}):
        b = summary["baselines"].get(ds)
        spec = DATASETS.get(ds)
        what = "test split against the training split"
        if spec is not None and spec.train_images:
            what = f"test split against a seeded {spec.train_images:,}-image slice of the training split"
        if spec is not None and spec.unseen:
            what = "one seeded half of the test split against the other, which is also the training folder"
        lines += [f"**{ds}** ({what}; kNN k = 200, vote exp(s/0.1); per cent)", "",
                  "| variant | budget | epochs | wall (min) | kNN bank | 1-NN bank | mAP bank | kNN re-embedded "
                  "| mAP re-embedded | kNN / 1-NN / mAP, PCA-whitened | what |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        if b:
            for key, label in (("pixels", "raw pixels"), ("random_init", "untrained encoder")):
                m = b[key]
                lines.append(f"| {label} | – | – | – | {m['knn']:.1f} | {m['nn1']:.1f} | {m['map']:.1f} | – | – | "
                             f"{_triple(b.get(key + '_whitened'))} | |")
        for r in sorted((r for r in summary["runs"] if r["dataset"] == ds), key=lambda r: (r["budget_s"], r["name"])):
            fb, fr = r["final"]["bank"], r["final"]["reembedded"]
            lines.append(f"| {r['variant']} | {r['budget_s'] / 60:.0f} min | {r['epochs']} | "
                         f"{r['train_wall_s'] / 60:.1f} | {fb['knn']:.1f} | {fb['nn1']:.1f} | {fb['map']:.1f} | "
                         f"{fr['knn']:.1f} | {fr['map']:.1f} | {_triple(r['final'].get('bank_whitened'))} | "
                         f"{r['what']} |")
        lines.append("")
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    from instdisc.plots import pyplot

    plt = pyplot()

    datasets = sorted({r["dataset"] for r in summary["runs"]})
    if not datasets:
        return
    fig, axes = plt.subplots(len(datasets), 3, figsize=(16, 4.2 * len(datasets)), squeeze=False)
    names = [v.name for v in VARIANTS] + sorted({r["variant"] for r in summary["runs"]} - {v.name for v in VARIANTS})
    colours = {name: f"C{i % 10}" if i < 10 else ("k" if i == 10 else "olive") for i, name in enumerate(names)}
    for row, ds in zip(axes, datasets, strict=True):
        b = summary["baselines"].get(ds)
        for ax, key, label in zip(row, ("knn", "nn1", "map"), ("weighted kNN (k=200)", "1-NN", "mAP"), strict=True):
            for r in (r for r in summary["runs"] if r["dataset"] == ds):
                c = colours.get(r["variant"], "k")
                if key != "map":
                    pts = [(p["wall_s"] / 60, p[key]) for p in r["curve"] if p["wall_s"] is not None]
                    if pts:
                        ax.plot(*zip(*pts, strict=True), "-o", ms=2.5, color=c,
                                label=f"{r['variant']} ({r['budget_s'] / 60:.0f} min)")
                ax.plot([r["train_wall_s"] / 60], [r["final"]["bank"][key]], "*", ms=11, color=c)
            if b:
                ax.axhline(b["pixels"][key], color="grey", ls="--", label="raw pixels")
                ax.axhline(b["random_init"][key], color="grey", ls=":", label="untrained encoder")
            ax.set_title(f"{ds}: {label} vs wall time (star: final, bank gallery)")
            ax.set_xlabel("wall minutes (training incl. monitor)")
            ax.set_ylabel("%")
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_summary(report: Path | None) -> dict:
    summary = summarise()
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / "efficiency.json", json.dumps(summary, indent=1))
    md = markdown(summary)
    atomic_write_text(RESULTS / "efficiency.md", md + "\n")
    plot(summary, RESULTS / "efficiency.png")
    if report is not None:
        fill_report(report, md)
    return summary


def fill_report(report: Path, table_md: str) -> None:
    """Replace the text between the efficiency markers of ``report`` with the generated tables."""
    start, end = "<!-- efficiency:start -->", "<!-- efficiency:end -->"
    text = report.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"{report}: needs the markers {start} and {end}")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    atomic_write_text(report, f"{head}{start}\n{table_md}\n{end}{tail}")


def halves(coll: ImageCollection, seed: int = 0) -> tuple[ImageCollection, ImageCollection]:
    """A seeded random split of ``coll`` into two disjoint halves (each in its original order)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(coll), generator=g)
    half = len(coll) // 2
    return coll.subset(order[:half].sort().values), coll.subset(order[half:].sort().values)


def splits_at(ds: Dataset, size: int, loaded: dict[int, tuple[ImageCollection, ImageCollection]], quick: bool,
              progress: bool) -> tuple[ImageCollection, ImageCollection]:
    """The dataset's train/test splits decoded at ``size`` px, loaded once per size into ``loaded``."""
    if size not in loaded:
        train, test = load_splits(ds.source, size, "auto", progress=progress)
        if ds.train_images:
            train = random_subset(train, min(1.0, (ds.train_images + 0.5) / len(train)))
        if ds.unseen:
            train, test = halves(test)
        if quick:
            train = train.subset(range(0, len(train), max(1, len(train) // 1000)))
            test = test.subset(range(0, min(500, len(test))))
        loaded[size] = train, test
    return loaded[size]


def main(argv: list[str] | None = None) -> int:
    global RESULTS, RUNS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", nargs="+", choices=sorted(DATASETS), default=["cifar10"])
    p.add_argument("--budgets", nargs="+", type=float, default=[420.0], help="seconds of training per run")
    p.add_argument("--variants", nargs="+", default=[v.name for v in VARIANTS],
                   help=f"from {[v.name for v in VARIANTS]}, or NAME=field:value,field:value for a combination "
                        "(init:general or init:CHECKPOINT fine-tunes that encoder instead of starting from random)")
    p.add_argument("--report", type=Path, default=None, help="fill this file's efficiency markers with the tables")
    p.add_argument("--summary-only", action="store_true", help="rebuild the summary from the run JSONs")
    p.add_argument("--rescore-whitened", action="store_true",
                   help="add the PCA-whitened scores to finished runs that lack them (from their checkpoints)")
    p.add_argument("--quick", action="store_true", help="smoke test: 1,000 training images, tiny budgets")
    p.add_argument("--out", type=Path, default=None, help="results folder (default results/efficiency)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    if args.out is not None:
        RESULTS, RUNS = args.out, args.out / "checkpoints"
    if args.threads:
        torch.set_num_threads(args.threads)
    (RESULTS / "runs").mkdir(parents=True, exist_ok=True)
    if not args.summary_only:
        variants = [parse_variant(s) for s in args.variants]
        for name in args.dataset:
            ds = DATASETS[name]
            splits: dict[int, tuple[ImageCollection, ImageCollection]] = {}  # by decoded side
            baselines(ds, *splits_at(ds, ds.image_size, splits, args.quick, args.progress))
            if args.rescore_whitened:
                print("rescored (whitened):", rescore_whitened(ds, *splits_at(ds, ds.image_size, splits, args.quick,
                                                                              args.progress)), flush=True)
                continue
            for budget in args.budgets:
                for v in variants:
                    init = starting_point(v, ds)
                    size = ds.image_size if init is None else init.config.image_size
                    data = splits_at(ds, size, splits, args.quick, args.progress)
                    r = run_one(ds, v, budget, *data, args.progress, init)
                    fb = r["final"]["bank"]
                    print(f"{r['name']}: {r['epochs']} epochs in {r['train_wall_s'] / 60:.1f} min, kNN {fb['knn']:.1f} "
                          f"1-NN {fb['nn1']:.1f} mAP {fb['map']:.1f} (re-embedded kNN "
                          f"{r['final']['reembedded']['knn']:.1f})", flush=True)
    write_summary(args.report)
    return 0


def parse_variant(spec: str) -> Variant:
    """A listed variant by name, or ``NAME=field:value,...`` for a combination of levers."""
    if "=" not in spec:
        if spec not in VARIANT_BY_NAME:
            raise SystemExit(f"unknown variant {spec!r}; choose from {sorted(VARIANT_BY_NAME)} or NAME=field:value")
        return VARIANT_BY_NAME[spec]
    name, body = spec.split("=", 1)
    types = {f: type(getattr(TrainConfig(), f)) for f in TrainConfig.__dataclass_fields__}
    overrides: dict = {}
    init = ""
    for item in body.split(","):
        key, value = item.split(":", 1)
        if key == "init":  # not a TrainConfig field: the weights the run starts from
            init = value
            continue
        if key not in types:
            raise SystemExit(f"{spec}: {key!r} is not a TrainConfig field")
        t = types[key]
        overrides[key] = (value.lower() in ("1", "true", "yes")) if t is bool else t(value)
    replace(TrainConfig(), **overrides)  # validates the field names and types
    what = ", ".join([f"{k} {v}" for k, v in overrides.items()] + ([f"init {init}"] if init else []))
    return Variant(name, overrides, "combination: " + what, init=init)


if __name__ == "__main__":
    sys.exit(main())
