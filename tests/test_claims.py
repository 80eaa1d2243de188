"""The documents say what their results files hold: each test reads a figure from README.md,
BENCHMARKS.md, RELIABILITY.md or a docstring and the committed JSON it comes from, and fails
when one changes without the other."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
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
    table = section[section.index("| collection and training |"):].split("\n\n", 1)[0]  # the first table
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
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
    """docs/photos.md's table of the bundled encoders on three query sets, row by row against the reports
    (a set's first row links the photo encoder's report, whose baselines fill the raw-pixel rows below it;
    the thumbnail encoder's row links its own report)."""
    text = (ROOT / "docs" / "photos.md").read_text()
    head = "| images (gallery / queries) | method | weighted kNN | 1-NN | P@10 | mAP | edited copy found first |"
    block = text[text.index(head):].split("\n\n", 1)[0].splitlines()[2:]
    keys = {"photo encoder, no training": "ours", "thumbnail encoder, no training": "ours", "raw pixels": "pixels",
            "raw pixels, PCA-whitened": "pixels-whitened"}
    link_re = r"\[([^\]]*)\]\(\.\./(results/bundled-encoders/[^)]+)/report\.md\)"
    reports, report = [], None
    for row in block:
        cells = [c.strip() for c in row.strip("|").split("|")]
        link = re.search(link_re, cells[0])
        if link:
            reports.append(link.group(2))
            report = _json(link.group(2) + "/report.json")
            counts = re.findall(r"\(([\d,]+) / ([\d,]+)\)", cells[0])[0]
            assert tuple(int(x.replace(",", "")) for x in counts) == (report["gallery"]["count"],
                                                                       report["queries"]["count"])
        else:
            assert cells[0] == "" and report is not None
        own = re.search(link_re, cells[1])  # a row with its own report (the thumbnail encoder's)
        source = _json(own.group(2) + "/report.json") if own else report
        method = re.sub(link_re, r"\1", cells[1])
        assert (own is not None) == method.startswith("thumbnail"), row
        if own:
            assert own.group(2).split("/")[2] == reports[-1].split("/")[2] and own.group(2).endswith("/thumbnail")
        else:
            assert reports[-1].endswith("/photo")
        m, nd = source["methods"][keys[method]], source["near_duplicate"]["methods"][keys[method]]
        want = (m["knn_top1"]["200"], m["knn_top1"]["1"], m["precision_at"]["10"], m["map"], nd["top1"])
        assert tuple(float(c.strip("% ")) for c in cells[2:]) == pytest.approx([100 * w for w in want], abs=0.051)
    assert [r.split("/")[2] for r in reports] == ["caltech-heldout", "tinyimagenet-test", "cifar10-test"]
    assert len(block) == 12
    report = _json(reports[0] + "/report.json")
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


# ---------------------------------------------------------------------------------------------
# Every measured figure in docs/*.md, against the results file its sentence links.
#
# A doc is split into claim units: a table row, a paragraph or a list item. A unit that links a
# results file (a link, or a backticked path, to a JSON under results/ or benchmarks/results/, or
# to a report.md / folder with its JSON beside it) has each of its decimal figures and
# percentages looked up among that JSON's numbers; a unit that quotes a measured figure without
# such a link must be allowlisted below with the reason. A table row without a link of its own
# takes the links of the table's caption: the paragraph right after the table when it is only a
# link, else the paragraph introducing the table (above report.py's generated header); the list
# items right after a table take its links.
# ---------------------------------------------------------------------------------------------

DOCS = sorted((ROOT / "docs").glob("*.md"))

# a number, not part of a longer dotted number (versions: 2.14.1), a word (PQ64, p50, P@10), a path or a
# factor (`×1.15`, an edit's setting)
NUMBER = re.compile(r"(?<![\w.@/#^×])([−-]?)(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(?![\d]|\.\d|[A-Za-z_])")
UNIT = re.compile(r"\s?(%|×|x(?![\w])|GHz|px|ms|s|min|h|µs|KiB|MiB|GiB|kB|KB|MB|GB|M|images/s|img/s|requests/s|"
                  r"queries/s)(?![\w])")
# what makes an unlinked decimal a measured metric: a unit of time, memory, speed or share right after it,
# or a metric's name in the same unit (a table row is read with its header)
METRIC_UNITS = {"%", "ms", "s", "min", "h", "µs", "KiB", "MiB", "GiB", "kB", "KB", "MB", "GB", "images/s", "img/s",
                "requests/s", "queries/s"}
METRIC_WORDS = re.compile(r"recall|precision|\bkNN\b|mAP|P@\d+|1-NN|\bp50\b|\bp99\b|\bNMI\b|purity|accuracy|"
                          r"images/s|\bRSS\b|latency", re.IGNORECASE)
# not measurements, by explicit rule: a scale factor or speed-up (`1.5×`; ratios are checked by hand where
# quoted), a CPU clock (`2.60 GHz`, the machine's name) and a pixel size (`32 px`, an input)
NOT_MEASURED_UNITS = {"×", "x", "GHz", "px"}
RESULTS_PATH = re.compile(r"`((?:benchmarks/)?results/[^`\s]+)`")


@dataclass(frozen=True)
class Figure:
    """A number as the doc writes it: its value, how many decimals it shows, the unit after it and where."""
    text: str
    value: float
    decimals: int
    unit: str
    start: int = 0


@dataclass
class Unit:
    """One claim: the text of a table row, paragraph or list item, and the results files it cites."""
    doc: str
    line: int
    text: str
    context: str  # the unit plus, for a table row, its header: where metric words are looked for
    sources: list[Path] = field(default_factory=list)
    after_table: bool = False  # a list item of the list right after a table, citing the table's files


def _results_files(target: Path) -> list[Path]:
    """The JSON files a link stands for: the file, a report.md's report.json, a folder's JSON (and JSON
    lines: a run folder's metrics.jsonl)."""
    if target.suffix == ".json":
        return [target]
    if target.is_dir():
        report = target / "report.json"
        return [report] if report.is_file() else sorted(target.glob("*.json")) + sorted(target.glob("*.jsonl"))
    if target.suffix == ".md":
        beside = [target.with_suffix(".json"), target.parent / "report.json"]
        return [p for p in beside if p.is_file()][:1]
    return []  # an image, a CSV: nothing numeric to check against


def _sources(doc: Path, text: str) -> list[Path]:
    targets = [(doc.parent / t.split("#")[0]).resolve() for t in re.findall(r"\]\(([^)\s]+)\)", text)]
    targets += [ROOT / t for t in RESULTS_PATH.findall(text)]
    # a table generated by benchmarks/report.py from benchmarks/results/NAME.json, with its machine header
    targets += [ROOT / "benchmarks" / "results" / f"{t}.json" for t in re.findall(r"^<!-- table:(\w+) -->", text)]
    inside = [t for t in targets if "results" in t.relative_to(ROOT).parts[:2]]
    for t in inside:
        assert t.exists(), f"{doc.name} cites {t.relative_to(ROOT)}, which does not exist"
    return [f for t in inside for f in _results_files(t)]


def _blocks(text: str) -> list[tuple[int, str]]:
    """(first line, text) of each paragraph, list item, heading and table row; code blocks left out."""
    blocks: list[tuple[int, list[str]]] = []
    fenced, open_block = False, False
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            fenced, open_block = not fenced, False
            continue
        stripped = line.strip()
        if fenced or not stripped:
            open_block = False
            continue
        starts = stripped.startswith(("|", "#")) or re.match(r"\s*([-*]|\d+\.) ", line)
        if starts or not open_block:
            blocks.append((n, []))
        blocks[-1][1].append(stripped)
        open_block = not stripped.startswith(("|", "#"))
    return [(n, "\n".join(lines)) for n, lines in blocks]


def units(doc: Path) -> list[Unit]:
    """The doc's claim units, each with the results files it cites (a table row: or its caption's)."""
    blocks = _blocks(doc.read_text())
    out: list[Unit] = []
    for i, (line, text) in enumerate(blocks):
        unit = Unit(doc.name, line, text, text, _sources(doc, text))
        if text.startswith("|"):
            first = i
            while first > 0 and blocks[first - 1][1].startswith("|"):
                first -= 1
            last = i
            while last + 1 < len(blocks) and blocks[last + 1][1].startswith("|"):
                last += 1
            unit.context = blocks[first][1] + "\n" + text
            after = blocks[last + 1][1] if last + 1 < len(blocks) else ""
            before = first - 1 - (first > 1 and blocks[first - 1][1].startswith("<!-- table:"))
            caption = after if re.fullmatch(r"\(\[[^]]+\]\([^)]+\)\)\.?", after) else (
                blocks[before][1] if before >= 0 else "")
            unit.sources = unit.sources or _sources(doc, caption)
        elif not unit.sources and re.match(r"[-*] ", text) and out and (out[-1].text.startswith("|") or
                                                                         out[-1].after_table):
            unit.sources, unit.after_table = out[-1].sources, True  # bullets right after a table comment on it
        out.append(unit)
    return out


def figures(text: str) -> list[Figure]:
    """The decimal figures and percentages of a text, outside code spans and link targets."""
    text = re.sub(r"`[^`]*`|\]\([^)]*\)", lambda m: " " * len(m.group(0)), text)  # positions kept
    out = []
    for m in NUMBER.finditer(text):
        u = UNIT.match(text, m.end())
        unit = u.group(1) if u else ""
        if m.group(3) is None and unit != "%":
            continue  # a count, a year, an integer size: not what this check reads
        if unit in NOT_MEASURED_UNITS:
            continue
        digits = m.group(2).replace(",", "") + ("." + m.group(3) if m.group(3) else "")
        out.append(Figure(m.group(0) + (u.group(0) if u else ""), float(digits), len(m.group(3) or ""), unit,
                          m.start()))
    return out


def _leaves(node: object) -> list[float]:
    if isinstance(node, bool):
        return []
    if isinstance(node, str):  # a decimal written inside a string: a planner's line, "19.64 epochs in 19.4 min"
        return [float(x) for x in re.findall(r"(?<![\d.])\d+\.\d+(?![\d.])", node)]
    if isinstance(node, (int, float)):
        return [abs(float(node))]
    if isinstance(node, dict):
        return [x for v in node.values() for x in _leaves(v)]
    if isinstance(node, list):
        return [x for v in node for x in _leaves(v)]
    return []


_LEAVES: dict[Path, list[float]] = {}


def leaves(path: Path) -> list[float]:
    """Every number in a results file (absolute values: the doc says "2 % slower", not "−2 %"), decimals
    written inside its strings included; a .jsonl file is read line by line."""
    if path not in _LEAVES:
        text = path.read_text()
        rows = [json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl" \
            else json.loads(text)
        _LEAVES[path] = _leaves(rows)
    return _LEAVES[path]


# what a stored number may be written as, by the figure's unit: a share as a percentage (also without the
# sign, in a table of percentages), times and sizes in the doc's unit (a file stores seconds or milliseconds,
# bytes or MiB), a count in millions
SCALES = {"": (1, 100), "M": (1, 1e-6), "%": (1, 100), "ms": (1, 1000, 1 / 1000), "s": (1, 1 / 1000, 1000, 60),
          "min": (1, 1 / 60, 1 / 60000), "h": (1, 1 / 3600), "KiB": (1, 2.0 ** -10), "MiB": (1, 2.0 ** -20, 2.0 ** 10),
          "GiB": (1, 2.0 ** -30, 2.0 ** -10),
          "kB": (1, 1e-3), "KB": (1, 1e-3), "MB": (1, 1e-6, 1e3), "GB": (1, 1e-9, 1e-3, 2.0 ** -30)}


def found(fig: Figure, values: list[float]) -> bool:
    """Whether some stored number, scaled as the unit allows, rounds to the figure as written."""
    half = 0.5 * 10.0 ** -fig.decimals + 1e-9 * max(1.0, fig.value)
    return any(abs(v * s - fig.value) <= half for v in values for s in SCALES.get(fig.unit, (1,)))


def is_measured(fig: Figure, unit: Unit) -> bool:
    """A figure an unlinked unit may not quote without a source: its unit, or a metric named just before it
    (in a table, in its column's header), says it was measured."""
    if fig.unit in METRIC_UNITS:
        return True
    if unit.text.startswith("|"):
        header = unit.context.split("\n", 1)[0].strip("|").split("|")
        column = unit.text[:fig.start].count("|") - 1
        before = header[column] if 0 <= column < len(header) else ""
    else:
        before = unit.text[max(0, fig.start - 40):fig.start]
    return bool(METRIC_WORDS.search(before))


# Sections checked elsewhere: photos.md's bundled encoders (test_photos_doc_zero_shot_table_is_what_its_report_holds,
# from results/bundled-encoders/), from its first paragraph up to the first unit after it.
SKIP_SPANS = {"photos.md": ("**No time to train?**", "What step 1 prints first")}

# Figures that are not measurements of this project, or are checked by a test of their own, each with why:
# the doc and a phrase. In a unit without a results file the phrase may be anywhere in the unit (of a table
# row: in the row or its header) and lets the unit through; in a unit with one, it lets through the figures
# written inside the phrase.
ALLOWLIST: dict[tuple[str, str], str] = {
    ("app.md", "handler p50 | embed p50"): "an early latency table on a busy machine, kept as an upper bound; no file",
    ("app.md", "p50 ≈ 0.5 s for the shapes index"): "the same early busy-machine measurement as the table above it",
    ("index.md", "0.5 s when used"): "a polling interval: a setting, not a measurement",
    ("evaluation.md", "| parametric softmax | 63.0 | 60.3 |"): "the paper's table (Wu et al. 2018)",
    ("evaluation.md", "| non-parametric softmax (full) | 80.8 | 75.4 |"): "the paper's table (Wu et al. 2018)",
    ("evaluation.md", "| NCE m = 1 | 42.5 | ~44 |"): "the paper's table (Wu et al. 2018)",
    ("evaluation.md", "| NCE m = 4096 | 80.4 | ~70 |"): "the paper's table (Wu et al. 2018)",
    ("evaluation.md", "The random network lands where the paper"):
        "the paper's figures; recall@10 1.0 is exact search's by construction",
    ("evaluation.md", "with the paper's 80.8 % line"): "the paper's figure (Wu et al. 2018), drawn on the plot",
    ("evaluation.md", "The paper measures about 32 % weighted kNN"): "the paper's figure (Wu et al. 2018)",
    ("evaluation.md", "at recall 0, 0.05, ..., 1"): "a definition: the recall grid of the PR curve",
    ("evaluation.md", "a random crop of 30-70 % of the area"): "the near-duplicate edits' settings",
    ("explore.md", "**`--threshold auto`.** True copies: 200 sampled images"):
        "the calibration's edit settings and the default target precision: settings, not measurements",
    ("explore.md", "the 1 % of the images outside duplicate groups"): "the similar tier's auto rule (a setting)",
    ("explore.md", "the 1 % of those images with the most similar"): "the similar tier's auto rule (a setting)",
    ("explore.md", "with 1 % planted near copies"): "a setting of the synthetic vectors (planted_copies / n in the "
                                                     "timing JSONs the table links)",
    ("photos.md", "From those rates (arithmetic, not separa"): "arithmetic from the rates above, said so in the text",
    ("photos.md", "under 25 %"): "the 25 % kNN target the photo preset is held against, not a measurement",
    ("photos.md", "0.2 points under"): "arithmetic: the 25 % target minus the 24.8 % kNN before it",
    ("photos.md", "the other ~1.1 GiB"): "arithmetic on train_ram.json, computed in test_doc_arithmetic_figures",
    ("photos.md", "overran its budget by 11 %"):
        "arithmetic on the run's JSON, computed in test_doc_arithmetic_figures",
    ("photos.md", "peak RSS 1.9 GB"):
        "in the run folder's wall_time.txt, checked by test_photos_doc_fresh_run_rss_is_its_wall_time_txt",
    ("photos.md", "peak RSS 1.3 GB"):
        "in the run folder's wall_time.txt, checked by test_photos_doc_fresh_run_rss_is_its_wall_time_txt",
    ("scaling.md", "RAM = N x bytes per vector (the fixed pa"):
        "an assumption (75 % of a machine's RAM), not a measurement",
    ("scaling.md", "| index | RAM for 100 M | RAM for 1 B |"):
        "arithmetic on index_bytes.json: test_scaling_doc_ram_table_is_the_arithmetic_on_index_bytes_json",
    ("scaling.md", "1.0 M steps at batch 256"): "arithmetic: 256 M image passes at 256 a step",
    ("scaling.md", "costs 0.14 % of the gradient traffic"):
        "arithmetic on train_scale.json, computed in test_doc_arithmetic_figures",
    ("scaling.md", "held about 0.5 GiB more"):
        "arithmetic on milvus_vs_faiss.json, computed in test_doc_arithmetic_figures",
    ("scaling.md", "centroids are a fixed 0.5 MB at 1024 lists"): "arithmetic: 1024 centroids x 128 floats x 4 B",
    ("scaling.md", "**148 B per image**"):
        "no results file: measured 2026-11-28, 2-core Intel Xeon, the CIFAR-10 index's SQLite file",
}


def _checked_units() -> list[Unit]:
    out = []
    for doc in DOCS:
        span = SKIP_SPANS.get(doc.name)
        skipping = False
        for unit in units(doc):
            if unit.text.startswith("#"):
                skipping = "Bundled encoders" in unit.text
                continue  # a heading names things ("top-1 %"), it claims nothing
            if span and unit.text.startswith(span[0]):
                skipping = True
            elif span and unit.text.startswith(span[1]):
                skipping = False
            if not skipping:
                out.append(unit)
    return out


def _let_through(unit: Unit, fig: Figure, used: set[tuple[str, str]]) -> bool:
    """Whether the figure sits inside an ALLOWLIST phrase of its unit (and note the entry as used)."""
    for key in ALLOWLIST:
        at = unit.text.find(key[1]) if key[0] == unit.doc else -1
        if at >= 0 and at <= fig.start < at + len(key[1]):
            used.add(key)
            return True
    return False


def _check_figures() -> tuple[list[str], int, list[str], set[tuple[str, str]]]:
    """(figures missing from their unit's files, figures checked, unsourced units, ALLOWLIST entries used)."""
    wrong, checked, unsourced, used = [], 0, [], set()
    for unit in _checked_units():
        if unit.sources:
            values = [v for p in unit.sources for v in leaves(p)]
            for fig in figures(unit.text):
                if _let_through(unit, fig, used):
                    continue
                checked += 1
                if not found(fig, values):
                    files = ", ".join(str(p.relative_to(ROOT)) for p in unit.sources)
                    wrong.append(f"{unit.doc}:{unit.line}: {fig.text!r} is in no number of {files}")
        elif any(is_measured(f, unit) for f in figures(unit.text)):
            keys = [k for k in ALLOWLIST if k[0] == unit.doc and k[1] in unit.context]
            used.update(keys)
            if not keys:
                shown = [f.text for f in figures(unit.text) if is_measured(f, unit)]
                unsourced.append(f"{unit.doc}:{unit.line}: {shown} in {unit.text[:100]!r}")
    return wrong, checked, unsourced, used


def test_every_doc_figure_that_cites_a_results_file_is_in_it():
    wrong, checked, _, _ = _check_figures()
    assert checked > 100
    assert wrong == []


def test_every_measured_doc_figure_cites_its_results_file_or_is_allowlisted():
    _, _, unsourced, used = _check_figures()
    assert unsourced == []
    assert set(ALLOWLIST) - used == set(), "allowlist entries that match nothing any more"


def _doc(name: str) -> str:
    return " ".join((ROOT / "docs" / name).read_text().split())


def test_doc_arithmetic_figures():
    """Figures the docs derive from a results file, recomputed from it."""
    ram = {r["max_ram"]: r for r in _json("results/photos/train_ram.json")["results"]}
    other = (ram["512M"]["peak_rss_mib"] - ram["512M"]["max_ram_mib"]) / 1024
    assert f"the other ~{other:.1f} GiB" in _doc("photos.md")
    run = _json("results/efficiency/fp32-host/runs/photos-4k-init-general-600.json")
    assert f"overran its budget by {100 * (run['train_wall_s'] / run['budget_s'] - 1):.0f} %" in _doc("photos.md")
    (imagenet,) = [r for r in _json("benchmarks/results/train_scale.json")["results"]
                   if r["preset"] == "paper-imagenet"]
    share = 100 * imagenet["bank_allgather_bytes_per_step"] / imagenet["gradient_allreduce_bytes_per_step"]
    assert f"costs {share:.2f} % of the gradient traffic" in _doc("scaling.md")
    rows = {r["case"]: r for r in _json("benchmarks/results/milvus_vs_faiss.json")["results"]}
    more = (rows["milvus-FLAT"]["rss_after_build_mib"] - rows["faiss-auto"]["rss_after_build_mib"]) / 1024
    assert f"held about {more:.1f} GiB more" in _doc("scaling.md")


def test_photos_doc_fresh_run_rss_is_its_wall_time_txt():
    """The fresh photo run's peak RSS figures, from `/usr/bin/time -v` in its run folder (kbytes)."""
    text = (ROOT / "results/photos/cpu-photos-fast-20min/run/wall_time.txt").read_text()
    train, build = (int(k) * 1024 / 1e9 for k in re.findall(r"Maximum resident set size \(kbytes\): (\d+)", text))
    doc = _doc("photos.md")
    assert f"peak RSS {train:.1f} GB" in doc and f"peak RSS {build:.1f} GB" in doc


def test_scaling_doc_ram_table_is_the_arithmetic_on_index_bytes_json():
    """RAM for 100 M and 1 B vectors = N x the larger of the resident and marginal bytes per vector, and the
    machines = that over the index's share of a 256 GiB machine (the caption's 75 %), rounded up."""
    text = (ROOT / "docs" / "scaling.md").read_text()
    head = "| index | RAM for 100 M | RAM for 1 B | 256 GiB machines for 100 M / 1 B |"
    rows = text[text.index(head):].split("\n\n", 1)[0].splitlines()[2:]
    cases = {r["factory"]: r for r in _json("benchmarks/results/index_bytes.json")["results"]}
    budget = 0.75 * 256 * 2 ** 30
    assert "75 % of it (206 GB)" in text and round(budget / 1e9) == 206
    assert len(rows) == len(cases)
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        r = cases[re.search(r"`([^`]+)`", cells[0]).group(1)]
        per = max(r["resident_bytes_per_vector"], r["marginal_bytes_per_vector"])
        want = (f"{per * 1e8 / 1e9:.1f} GB", f"{per * 1e9 / 1e9:.0f} GB",
                f"{-(-per * 1e8 // budget):.0f} / {-(-per * 1e9 // budget):.0f}")
        assert tuple(cells[1:]) == want, row


def test_the_figure_reader_reads_what_a_doc_writes():
    got = [(f.value, f.decimals, f.unit) for f in figures(
        "kNN 56.5 % at 8.1 ms (p50), 2.8 s, 0.981, −2 %, 3,206.5 MiB; torch 2.14.1, 1.5× faster, 2.60 GHz, "
        "`--lr 0.06`, [x](../a/1.5.json), 32 px, 12 images, P@10 and PQ64")]
    assert got == [(56.5, 1, "%"), (8.1, 1, "ms"), (2.8, 1, "s"), (0.981, 3, ""), (2.0, 0, "%"), (3206.5, 1, "MiB")]
    fig = figures("41.9 %")[0]
    assert found(fig, [0.4194]) and not found(fig, [0.4184]) and found(figures("2.8 s")[0], [2849.0])
