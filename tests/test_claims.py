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


def test_training_doc_images_per_s_comparisons_come_from_train_throughput_json():
    text = (ROOT / "docs" / "training.md").read_text()
    pairs = re.findall(r"([\d,]+(?:\.\d+)?) vs ([\d,]+(?:\.\d+)?) images/s", text)
    assert pairs, "docs/training.md quotes no training throughput comparison any more: drop this test with it"
    measured = {round(v) for v in _throughput().values()} | {round(v, 1) for v in _throughput().values()}
    for a, b in pairs:
        for v in (a, b):
            x = float(v.replace(",", ""))
            assert x in measured, f"{v} images/s is in no row of benchmarks/results/train_throughput.json"


# README results table: method column -> the report's method key
README_METHODS = {"ours": "ours", "raw pixels": "pixels", "PCA-whitened pixels": "pixels-whitened",
                  "untrained network": "random"}


def _scores(source: str, method: str) -> tuple[float, float, float]:
    """(weighted kNN, 1-NN, mAP) in % of one method in a committed results file the README links."""
    d = _json(source)
    if "methods" in d:  # an evaluation report (instdisc-search evaluate)
        m = d["methods"][README_METHODS[method]]
        return 100 * m["knn_top1"]["200"], 100 * m["knn_top1"]["1"], 100 * m["map"]
    assert method == "ours"  # an embed_resolution run: the index recipe's sides, averaged
    (row,) = [r for r in d["combined"] if r["sides"] == [32, 48]]
    return row["knn"], row["nn1"], row["map"]


def test_readme_results_table_is_what_the_linked_results_files_hold():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Results"):]
    section = section[: section.index("\n## ", 5)]
    assert "2-core **AMD EPYC with AVX512-BF16**" in section  # the machine, named once
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) >= 8
    source, baselines_from, checked = None, None, 0
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        link = re.search(r"\]\(([^)]+)\)", cells[0])
        if link:
            source = link.group(1).replace("report.md", "report.json")
            baselines_from = source if "methods" in _json(source) else baselines_from
        method = cells[1].strip("*")
        want = _scores(source if method == "ours" or "methods" in _json(source) else baselines_from, method)
        got = tuple(float(c.strip("*% ")) for c in cells[2:5])
        assert got == pytest.approx(want, abs=0.051), (line, want)
        checked += 1
    assert checked == len(rows)


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


def test_photos_doc_zero_shot_table_is_what_its_report_holds():
    """docs/photos.md's table of the thumbnail encoder on held-out Caltech-101 categories, row by row."""
    text = (ROOT / "docs" / "photos.md").read_text()
    head = "| method | weighted kNN | 1-NN | P@10 | mAP | edited copy found first |"
    block = text[text.index(head):].split("\n\n", 1)[0].splitlines()[2:]
    link = re.search(r"\(\.\./(results/bundled-encoders/[^)]+/report\.md)\)", text[text.index(head):])
    report = _json(link.group(1).replace("report.md", "report.json"))
    keys = {"thumbnail encoder, no training": "ours", "raw pixels": "pixels",
            "raw pixels, PCA-whitened": "pixels-whitened"}
    assert [r.split("|")[1].strip() for r in block] == list(keys)
    for row in block:
        cells = [c.strip() for c in row.strip("|").split("|")]
        m, nd = report["methods"][keys[cells[0]]], report["near_duplicate"]["methods"][keys[cells[0]]]
        want = (m["knn_top1"]["200"], m["knn_top1"]["1"], m["precision_at"]["10"], m["map"], nd["top1"])
        assert tuple(float(c.strip("% ")) for c in cells[1:]) == pytest.approx([100 * w for w in want], abs=0.051)
    readme = " ".join((ROOT / "README.md").read_text().split())
    m = re.search(r"never saw scores (\d+\.\d) % weighted kNN against raw pixels' (\d+\.\d) %", readme)
    assert m and (float(m.group(1)), float(m.group(2))) == pytest.approx(
        (100 * report["methods"]["ours"]["knn_top1"]["200"], 100 * report["methods"]["pixels"]["knn_top1"]["200"]),
        abs=0.051)


def test_readme_duplicates_table_is_what_the_planted_sets_measured():
    text = (ROOT / "README.md").read_text()
    head = "| planted set | ours: precision / recall | pHash ≤ 10: precision / recall |"
    rows = text[text.index(head):].split("\n\n", 1)[0].splitlines()[2:]
    results = {(r["folder"], r["share"]): r for r in _json("results/duplicates/planted_5000.json")["results"]}
    assert len(rows) == 3
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        folder = "cifar10" if cells[0].startswith("CIFAR-10") else "photos"
        share = float(re.search(r"(\d+(?:\.\d+)?) % with a copy", cells[0]).group(1)) / 100
        r = results[(folder, share)]
        for cell, got in ((cells[1], r["ours"]), (cells[2], r["phash_le10"])):
            p, rec = (float(x) for x in cell.split(" / "))
            assert (p, rec) == pytest.approx((got["precision"], got["recall"]), abs=0.0006), row


def test_readme_sync_figures_are_what_the_sync_run_measured():
    text = " ".join((ROOT / "README.md").read_text().split())
    d = _json("results/sync/sync_50k.json")
    s, w = d["sync"], d["watch"]
    m = re.search(r"A sync of ([\d,]+) photos after moving ([\d,]+), deleting ([\d,]+) and adding ([\d,]+) took "
                  r"(\d+) s, (\d+\.\d) s of it beyond embedding the new ones, with no moved photo re-embedded; with "
                  r"`--watch`, ([\d,]+) copied photos were searchable (\d+) s after the copy ended", text)
    assert m, "README's sync sentence changed: update this test with it"
    n, moved, removed, added, total, beyond, copied, after = (float(g.replace(",", "")) for g in m.groups())
    assert (n, moved, removed, added) == (s["count"], s["moved"], s["removed"], s["added"])
    assert s["moved_files_re_embedded"] == 0 and total == round(s["seconds"]["total"])
    assert beyond == round(s["seconds_beyond_embedding"], 1)
    assert copied == w["copied"] and after == round(w["searchable_after_copy_end_s"])


def test_milvus_figures_in_the_docs_are_what_the_benchmark_measured():
    rows = {r["case"]: r for r in _json("benchmarks/results/milvus_vs_faiss.json")["results"]}
    lite, faiss = rows["milvus-FLAT"]["single_ms"]["p50"], rows["faiss-auto"]["single_ms"]["p50"]
    for doc in ("docs/scaling.md", "docs/index.md"):
        text = " ".join((ROOT / doc).read_text().split())
        m = re.search(r"single query took (\d+\.\d) s (?:\(p50\) )?against FAISS's (\d+) ms", text)
        assert m, doc
        assert (float(m.group(1)), int(m.group(2))) == (round(lite / 1000, 1), round(faiss)), doc
