"""The documents say what their results files hold: each test reads a figure from README.md,
BENCHMARKS.md, RELIABILITY.md or a docstring and the committed JSON it comes from, and fails
when one changes without the other."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _json(rel: str) -> dict:
    return json.loads((ROOT / rel).read_text())


def _throughput() -> dict[tuple[int, str], float]:
    d = _json("benchmarks/results/train_throughput.json")
    return {(r["width"], r["variant"]): r["images_per_s"] for r in d["results"] if "images_per_s" in r}


def test_benchmarks_md_tables_are_what_report_py_renders_from_the_json():
    from benchmarks import report

    text = (ROOT / "BENCHMARKS.md").read_text()
    blocks = report.BLOCK.findall(text)
    assert "summary" in [name for _, name, _, _ in blocks]  # the summary is generated too, not typed
    for _, name, body, _ in blocks:
        assert body == report.render(name), f"BENCHMARKS.md block {name!r} differs from its JSON: " \
                                             "run python benchmarks/report.py"


def test_readme_images_per_s_comparisons_come_from_train_throughput_json():
    text = (ROOT / "README.md").read_text()
    pairs = re.findall(r"([\d,]+(?:\.\d+)?) vs ([\d,]+(?:\.\d+)?) images/s", text)
    assert pairs, "README quotes no training throughput comparison any more: drop this test with it"
    measured = {round(v) for v in _throughput().values()} | {round(v, 1) for v in _throughput().values()}
    for a, b in pairs:
        for v in (a, b):
            x = float(v.replace(",", ""))
            assert x in measured, f"README's {v} images/s is in no row of benchmarks/results/train_throughput.json"


def test_readme_accuracy_at_epoch_figures_come_from_the_metrics_file():
    text = (ROOT / "README.md").read_text()
    lines = (ROOT / "results/cpu-cifar/metrics.jsonl").read_text().splitlines()
    rows = {r["epoch"]: r for r in map(json.loads, lines)}
    quoted = re.findall(r"(\d+\.\d+) % at epoch (\d+)", text) + re.findall(r"(\d+\.\d+) % at (\d+)\b", text)
    assert quoted
    for pct, epoch in quoted:
        assert float(pct) == pytest.approx(100 * rows[int(epoch)]["knn_top1"], abs=0.05), (pct, epoch)
    rate = re.search(r"about (\d+\.\d+)\s+points per epoch", text)
    if rate:  # the quoted slope is the last five epochs' slope
        slope = 100 * (rows[45]["knn_top1"] - rows[40]["knn_top1"]) / 5
        assert float(rate.group(1)) == pytest.approx(slope, abs=0.01)


def test_runtime_compile_docstring_matches_the_benchmark():
    from instdisc import runtime

    doc = " ".join(runtime.compile_module.__doc__.split())
    tt = _throughput()
    eager, compiled = tt[(16, "ours")], tt[(16, "ours + torch.compile")]
    gain = round(100 * (compiled / eager - 1))
    assert f"+{gain} %" in doc and f"({compiled:.0f} vs {eager:.0f})" in doc
    assert f"({tt[(64, 'ours + torch.compile')]:.1f} vs {tt[(64, 'ours')]:.1f})" in doc


def test_reliability_md_counts_match_faults_json():
    from reliability import faults

    text = " ".join((ROOT / "RELIABILITY.md").read_text().split())
    f = _json("results/reliability/faults.json")
    assert f"**{f['injected_survived']} of {f['injected_total']} injected kills survived.**" in text
    timed = f["timed"]
    hit = sum(faults.count_timed(timed[c])["interrupted_work"] for c in ("train", "add"))
    assert f"of {len(timed['train']) + len(timed['add'])}, **{hit} interrupted work**" in text
    t = _json("results/reliability/timed.json")["timed"]
    for cmd, label in (("train", "training"), ("add", "`--add`")):
        c = faults.count_timed(t[cmd])
        assert f"**{c['interrupted_work']} of {c['kills']} {label} kills interrupted work**" in text
        assert c["survived"] == c["interrupted_work"]  # the text says each one survived
