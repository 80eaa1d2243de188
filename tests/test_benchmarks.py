"""Smoke tests of every benchmark script on tiny sizes: it runs, writes its JSON, the numbers are sane.

No timing is asserted (speed targets live in BENCHMARKS.md); what is checked is that each
script records its context (machine, versions, date, load), produces every row it promises
with positive, finite measurements, and derives its ratios from its own rows.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# one intra-op thread: a smoke test on a busy 2-core machine is otherwise ~8x slower (OpenMP barriers)
ONE_THREAD = ("--threads", "1")


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch):
    """``--threads`` changes process-wide settings; give the rest of the suite its own back."""
    import faiss
    import torch

    torch_threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    if "OMP_NUM_THREADS" in os.environ:  # recorded either way, so the teardown puts it back as it was
        monkeypatch.setenv("OMP_NUM_THREADS", os.environ["OMP_NUM_THREADS"])
    else:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    yield
    torch.set_num_threads(torch_threads)
    faiss.omp_set_num_threads(faiss_threads)


def run(name: str, tmp_path: Path, *args: str) -> dict:
    out = tmp_path / f"{name}.json"
    module = importlib.import_module(f"benchmarks.{name}")
    assert module.main([*args, "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["benchmark"] == name
    assert data["complete"] is True
    m, v = data["machine"], data["versions"]
    assert m["cores"] >= 1 and m["cpu"] and m["memory_gib"] > 0
    assert v["torch"] and v["numpy"] and v["python"]
    check_load(data["load"], data["loadavg_start"], data["loadavg_end"])
    assert data["date"][:2] == "20" and data["results"]
    return data


def check_load(load: dict, start, end) -> None:
    """The measured load, not a fixed note: the load averages of the run, the CPU share of the machine
    that was busy and the part of it other processes used (never more than the busy share)."""
    assert "note" not in load
    assert load["loadavg_start"] == [round(x, 2) for x in start] and load["loadavg_end"] == [round(x, 2) for x in end]
    assert 0.0 <= load["other_processes_cpu"] <= load["machine_cpu_busy"] <= 1.0
    assert load["summary"].startswith(f"other processes used {100 * load['other_processes_cpu']:.0f} % of the CPU")


def test_measured_load_counts_other_processes_not_our_own(monkeypatch):
    from benchmarks import common

    start = common.cpu_seconds()
    deadline = time.monotonic() + 20.0
    # burn CPU in this process until its own counter (10 ms ticks, so a fixed 0.3 s burn by process_time can
    # read 0.28) has moved 0.3 s: the machine's busy time must see at least most of it
    while (end := common.cpu_seconds())["own"] - start["own"] < 0.3 and time.monotonic() < deadline:
        sum(range(10_000))
    assert end["own"] - start["own"] >= 0.3
    assert end["busy"] - start["busy"] >= 0.9 * (end["own"] - start["own"])
    # the arithmetic, on made-up counters: 10 s on 2 cores, 12 CPU-seconds busy, 4 of them ours
    monkeypatch.setattr(common, "cpu_seconds", lambda: {"busy": 112.0, "own": 14.0, "time": 1010.0})
    load = common.measured_load({"busy": 100.0, "own": 10.0, "time": 1000.0}, [1.234, 1, 1], [2.5, 2, 2], cores=2)
    assert load["machine_cpu_busy"] == 0.6 and load["other_processes_cpu"] == 0.4
    assert load["loadavg_start"] == [1.23, 1, 1]
    assert load["summary"] == ("other processes used 40 % of the CPU while it ran; load average 1.2 at the start "
                               "and 2.5 at the end on 2 cores")


FIXED_LOAD_NOTE = re.compile(r"shared|busy|quiet|idle|other (jobs|tests|processes)|training job|load", re.I)


def _notes(obj, where: str = "") -> list[tuple[str, str]]:
    """(where, text) of every string stored under a key named like "note", at any depth."""
    if isinstance(obj, dict):
        return [n for k, v in obj.items() for n in (
            [(f"{where}.{k}", v)] if "note" in str(k).lower() and isinstance(v, str) else _notes(v, f"{where}.{k}"))]
    if isinstance(obj, list):
        return [n for i, v in enumerate(obj) for n in _notes(v, f"{where}[{i}]")]
    return []


def test_committed_results_carry_no_fixed_load_note():
    """Every committed benchmark JSON states the load its run measured, not a note written in advance: no note
    at any depth speaks of the machine's load, and the load summary is the one its own recorded figures give.
    The files BENCHMARKS.md's tables come from ("measured with nothing else running") show a quiet machine:
    other processes at most 5 % of the CPU where that was recorded, a load average at the start no higher
    than the core count (the benchmark's own threads) plus a half."""
    documented = set(re.findall(r"<!-- table:(\w+)", (ROOT / "BENCHMARKS.md").read_text()))
    documented |= set(re.findall(r"benchmarks/results/(\w+)\.json", (ROOT / "BENCHMARKS.md").read_text()))
    files = sorted((ROOT / "benchmarks" / "results").glob("*.json"))
    assert {f.stem for f in files} & documented == documented - {"summary", "gpu_check"}
    for f in files:
        data = json.loads(f.read_text())
        for where, text in _notes(data):
            assert not FIXED_LOAD_NOTE.search(text), f"{f.name}{where}: {text}"
        load = data["load"]
        la0, la1, cores = load["loadavg_start"], load["loadavg_end"], load["cores"]
        text = f"load average {la0[0]:.1f} at the start and {la1[0]:.1f} at the end on {cores} cores"
        share = load.get("other_processes_cpu")
        expected = (text + " (the CPU share of other processes was not recorded by this run)" if share is None
                    else f"other processes used {100 * share:.0f} % of the CPU while it ran; " + text)
        assert load["summary"] == expected, f.name
        if f.stem in documented:
            assert share is None or share <= 0.05, f.name
            assert la0[0] <= cores + 0.5, f.name


def positive(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def test_latency_summary_keys_report_reads_and_table(capsys):
    from benchmarks import common
    from instdisc.evaluation.stats import latency_summary, percentile

    # one home: instdisc.evaluation.stats
    assert not hasattr(common, "percentile") and not hasattr(common, "latency_summary")
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([5.0], 99) == 5.0
    s = latency_summary([0.001, 0.002, 0.003])
    # the keys committed JSON files (and benchmarks/report.py) read are all still there
    assert {k: s[k] for k in ("n", "p50_ms", "p99_ms", "mean_ms")} == {"n": 3, "p50_ms": 2.0, "p99_ms": 2.98,
                                                                        "mean_ms": 2.0}
    assert s["p90_ms"] == pytest.approx(2.8) and s["max_ms"] == 3.0
    text = common.table([{"a": 1, "b": 2.5}, {"a": 3}], ["a", "b"])
    assert text.splitlines()[-1] == "| 3 | - |" and "| 1 | 2.5 |" in capsys.readouterr().out


def test_search_scale_quick(tmp_path):
    data = run("search_scale", tmp_path, "--quick", *ONE_THREAD)
    rows = {r["index"]: r for r in data["results"]}
    assert set(rows) == {"numpy brute force", "torch brute force", "flat", "ivf", "ivfsq", "ivfpq", "hnsw", "auto"}
    for name in ("numpy brute force", "torch brute force", "flat"):
        assert rows[name]["recall_at_10"] == 1.0  # exact search agrees with the exact truth
    for r in rows.values():
        assert 0 < r["recall_at_10"] <= 1 and positive(r["batch_qps"]) and positive(r["single_p50_ms"])
        assert r["single_p99_ms"] >= r["single_p50_ms"] and r["bytes"] > 0
    assert rows["ivfpq"]["bytes"] < rows["ivfsq"]["bytes"] < rows["flat"]["bytes"]  # compressed codes are smaller

    # --no-baselines --types: only the FAISS indexes asked for (how the 10M HNSW row can run alone)
    only = run("search_scale", tmp_path, "--quick", *ONE_THREAD, "--types", "flat", "--no-baselines")
    assert [r["index"] for r in only["results"]] == ["flat"] and only["args"]["baselines"] is False
    assert rows["auto"]["same_as"] == "flat" and rows["ivf"]["factory"].startswith("IVF")
    assert Path(data["plot"]).stat().st_size > 0
    from benchmarks import report

    head, *table = report.RENDER["search_scale"](data)  # BENCHMARKS.md's tables, bytes per vector included
    assert all(row.count("|") == head.splitlines()[0].count("|") for row in table)
    sq = next(row for row in table if "| ivfsq |" in row)
    assert f"| {rows['ivfsq']['bytes'] / rows['ivfsq']['n']:,.1f} |" in sq


def test_train_throughput_quick(tmp_path, monkeypatch):
    fit = "Trainer.fit (one short epoch)"
    data = run("train_throughput", tmp_path, "--quick", *ONE_THREAD, "--variants", "reference, 0 workers", "ours", fit)
    rows = {r["variant"]: r for r in data["results"]}
    assert set(rows) == {"reference, 0 workers", "ours", fit}
    for r in rows.values():
        assert "error" not in r, r
        assert positive(r["images_per_s"]) and r["width"] == 8
    ours, ref = rows["ours"], rows["reference, 0 workers"]
    assert ours["channels_last"] is True and ref["channels_last"] is False and ref["bf16"] is False
    assert set(ours["breakdown_ms"]) == {"data", "augment", "forward", "backward", "optimizer", "bank_update"}
    assert sum(ours["breakdown_ms"].values()) == pytest.approx(ours["step_ms"], rel=0.05)
    assert ours["vs_best_reference"] == pytest.approx(ours["images_per_s"] / ref["images_per_s"], rel=0.01)
    assert data["ratios"]["8"]["ratio"] == ours["vs_best_reference"]
    # the operator profile: ours and the reference have one, the other rows do not
    assert "profile" not in rows[fit]
    for r in (ours, ref):
        ops = r["profile"]["ops"]
        assert ops and all(o["self_ms_per_step"] >= 0 and 0 <= o["share"] <= 1 for o in ops)
        assert [o["self_ms_per_step"] for o in ops] == sorted((o["self_ms_per_step"] for o in ops), reverse=True)
    assert any("conv" in o["op"] for o in ours["profile"]["ops"])

    from benchmarks import common, report

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    assert f"| 8 | ours | `{ours['profile']['ops'][0]['op']}` |" in report.render("train_throughput:profile")


def test_objective_cost_quick(tmp_path):
    data = run("objective_cost", tmp_path, "--quick", *ONE_THREAD, "--precisions", "fp32")
    rows = {r["objective"]: r for r in data["results"]}
    assert set(rows) == {"softmax", "nce m=256", "nce-shared m=256"}
    for r in rows.values():
        assert positive(r["ms_per_step"]) and len(r["seconds_per_step"]) == 2 and r["n"] == 5000
        assert r["peak_rss_mib"] > r["bank_mib"]
    assert rows["nce m=256"]["softmax_over_nce"] == pytest.approx(
        rows["softmax"]["ms_per_step"] / rows["nce m=256"]["ms_per_step"], rel=0.06)


def test_knn_speed_quick_and_report(tmp_path, monkeypatch):
    data = run("knn_speed", tmp_path, "--quick", *ONE_THREAD)
    rows = {r["method"]: r for r in data["results"]}
    chunked, naive = rows["chunked"], rows["naive"]
    assert chunked["ran_queries"] == 500 and not chunked["extrapolated"] and chunked["predictions"] == 500
    # 500 x 20k float32 = 38 MiB > the 0.02 GiB cap: the naive run is smaller and extrapolated, and says so
    assert naive["extrapolated"] and naive["ran_queries"] < 500 and "extrapolated" in naive["note"]
    # both figures are rounded to 2 decimals in the JSON
    assert naive["seconds_for_all_queries"] == pytest.approx(naive["seconds"] * 500 / naive["ran_queries"],
                                                             rel=0.01, abs=0.011 * 500 / naive["ran_queries"])
    assert positive(chunked["seconds"]) and chunked["peak_extra_mib"] >= 0

    # the report fills BENCHMARKS.md-style blocks from the JSON and leaves the prose alone
    from benchmarks import common, report

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    doc = tmp_path / "doc.md"
    doc.write_text("intro\n<!-- table:knn_speed -->\nold\n<!-- /table:knn_speed -->\n"
                   "<!-- table:app_latency -->\n<!-- /table:app_latency -->\nend\n")
    assert report.main(["--doc", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("end\n") and "\nold\n" not in text
    assert "| 20,000 | chunked | 500 |" in text and "(extrapolated)" in text
    assert data["machine"]["cpu"] in text and "not measured yet: app_latency.json is missing" in text


def test_gpu_check_runs_on_cpu(tmp_path):
    data = run("gpu_check", tmp_path, "--quick", *ONE_THREAD, "--no-compile", "--device", "cpu")
    assert data["device"] == "cpu"
    proj = data["projection"]
    assert proj["epochs"] == 200 and positive(proj["images_per_s"])
    # total_minutes is rounded to 1 decimal, epoch_s to 2
    assert proj["total_minutes"] == pytest.approx(200 * proj["epoch_s"] / 60, rel=0.02, abs=0.06 + 200 * 0.005 / 60)
    assert all(positive(s["batch_qps"]) and positive(s["single_p50_ms"]) for s in data["search"])


def test_budget_serve_quick(tmp_path):
    data = run("budget_serve", tmp_path, "--quick", "--serve", "ram", "mmap", "--max-train", "10000", *ONE_THREAD)
    ram, mapped = data["results"]  # one build, served read into RAM and memory-mapped
    assert (ram["mmap"], mapped["mmap"]) == (False, True) and ram["file_bytes"] == mapped["file_bytes"]
    assert ram["train_vectors"] == mapped["train_vectors"] == 10000  # the k-means cap applied and recorded
    for r in (ram, mapped):
        assert r["type"] == "ivfsq" and r["factory"].endswith(",SQ8") and r["target_reached"]
        assert r["file_bytes"] <= r["memory_budget"] and r["bytes_per_vector"] < 4 * 128  # smaller than raw floats
        assert r["recall_at_10"] >= 0.9  # fresh queries, measured in the serving process
        assert positive(r["peak_rss_mib"]) and positive(r["single_p50_ms"])
        assert r["single_p99_ms"] >= r["single_p50_ms"]
        assert positive(r["open_plus_first_query_s"]) and r["single_n"] == 50
    assert mapped["recall_at_10"] == ram["recall_at_10"]  # the same codes, read two ways
    from benchmarks import report

    head, *rows = report.RENDER["budget_serve"](data)  # BENCHMARKS.md's memory-budget table
    for r, row in zip((ram, mapped), rows, strict=True):
        assert row.count("|") == head.splitlines()[0].count("|") and r["factory"] in row
        assert f"{r['recall_at_10']:.3f}" in row and "k-means on 10,000" in row
    assert "(mmap)" in rows[1] and "(mmap)" not in rows[0]


def test_app_latency_quick(tmp_path, shapes_index):
    data = run("app_latency", tmp_path, "--quick", "--index", str(shapes_index))
    rows = {(r["path"], r["clients"]): r for r in data["results"]}
    assert set(rows) == {("gradio", 1), ("gradio", 4), ("rest", 1), ("rest", 4)}  # both APIs, both levels
    for r in rows.values():
        assert r["failed"] == 0 and r["requests"] >= 8 and positive(r["p50_ms"]) and r["p99_ms"] >= r["p50_ms"]
        assert positive(r["app_peak_rss_mb"])
        # CPU per request, each side of the socket: the app's (from /proc) and the clients' (this process)
        assert positive(r["app_cpu_ms_per_request"]) and positive(r["client_cpu_ms_per_request"])
    assert data["index"]["count"] > 0


def test_index_bytes_quick(tmp_path, monkeypatch):
    data = run("index_bytes", tmp_path, "--quick", *ONE_THREAD)
    rows = {r["case"]: r for r in data["results"]}
    assert set(rows) == {"flat", "ivf-flat", "ivf-pq32", "ivf-pq16", "hnsw32"}
    for r in rows.values():
        assert positive(r["file_bytes_per_vector"]) and positive(r["resident_bytes_per_vector"])
        assert 0 < r["recall_at_10"] <= 1
    # 128 float32 = 512 bytes a vector + its id: the raw layouts cannot be smaller, the PQ codes must be
    assert rows["flat"]["marginal_bytes_per_vector"] >= 512
    assert rows["ivf-pq16"]["marginal_bytes_per_vector"] < rows["ivf-pq32"]["marginal_bytes_per_vector"] < 512
    assert rows["hnsw32"]["marginal_bytes_per_vector"] > rows["flat"]["marginal_bytes_per_vector"]
    assert rows["flat"]["recall_at_10"] == 1.0

    from benchmarks import common, report

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    assert "| ivf-pq16 | IVF64,PQ16x4 | nprobe=16 |" in report.render("index_bytes")


def test_train_scale_quick(tmp_path):
    data = run("train_scale", tmp_path, "--quick", *ONE_THREAD)
    rows = {r["preset"]: r for r in data["results"]}
    assert set(rows) == {"paper-cifar", "cpu-cifar", "paper-imagenet"}
    for r in rows.values():  # all-reduce = fp32 gradients of every parameter; bank = N x 128 fp32
        assert r["gradient_allreduce_bytes_per_step"] == 4 * r["parameters"]
        assert r["bank_bytes_per_rank"]["50000"] == 50_000 * 128 * 4
    assert rows["cpu-cifar"]["parameters"] < rows["paper-cifar"]["parameters"] < rows["paper-imagenet"]["parameters"]
    assert positive(data["cpu_forward_backward"]["images_per_s"])


def test_faiss_blas_threshold_quick(tmp_path, monkeypatch):
    data = run("faiss_blas_threshold", tmp_path, "--quick", *ONE_THREAD)
    rows = data["results"]
    assert {r["threshold"] for r in rows} == {data["shipped_threshold"], 20}
    assert all(r["index"] == "Flat" and positive(r["batch_qps"]) and positive(r["single_p50_ms"]) for r in rows)
    import faiss

    assert faiss.cvar.distance_compute_blas_threshold == data["shipped_threshold"]  # put back afterwards

    from benchmarks import common, report

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    assert "| 5,000 | Flat | 20 | 100 |" in report.render("faiss_blas_threshold")


def test_auto_1m_quick(tmp_path, monkeypatch):
    """``benchmarks/auto_1m.py --quick``: auto picks IVF above its (lowered) Flat limit, tunes nprobe up to
    the target on its tuning curve, then measures recall on fresh queries next to exact search: the figure
    recorded is the one the built index gives those queries at the chosen nprobe, against a brute-force truth."""
    import faiss
    import numpy as np

    from benchmarks import auto_1m
    from index.synthetic import clustered_unit_vectors

    built = {}

    def keep(x, *a, **kw):
        built["x"], (built["index"], info) = x, real_build(x, *a, **kw)
        return built["index"], info

    real_build = auto_1m.build_vector_index
    monkeypatch.setattr(auto_1m, "build_vector_index", keep)
    out = tmp_path / "auto.json"
    assert auto_1m.main(["--quick", "--threads", "1", "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["n"] == 20_000 and d["fresh_queries"] == 100 and d["command"].endswith(f"--out {out}")
    chosen, curve = d["chosen"], d["tuning_curve"]
    assert chosen["type"] == "ivf" and chosen["factory"].startswith("IVF") and chosen["factory"].endswith(",Flat")
    nlist = int(chosen["factory"][3:].split(",")[0])
    assert [r["nprobe"] for r in curve] == sorted(r["nprobe"] for r in curve)  # tried in increasing order
    assert curve[-1]["nprobe"] == chosen["params"]["nprobe"] <= nlist  # stopped at the first that reached it
    assert curve[-1]["recall"] == d["recall_at_10_tuning"] >= d["target_recall"] and d["target_reached"]
    assert all(r["recall"] < d["target_recall"] for r in curve[:-1])
    assert positive(d["exact_brute_force_ms_per_query"])
    # the fresh queries: the 100 vectors generated after the 20,000 indexed ones, none of them indexed
    data = clustered_unit_vectors(20_100, 128, 50, d["data"]["spread"], seed=0)
    x, fresh = data[:20_000], data[20_000:]
    assert np.array_equal(built["x"], x) and built["index"].ntotal == 20_000
    truth = np.argsort(-(fresh @ x.T), axis=1, kind="stable")[:, :10]
    _, found = built["index"].search(fresh, 10, params=faiss.SearchParametersIVF(nprobe=chosen["params"]["nprobe"]))
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found.tolist(), truth.tolist(), strict=True)])
    assert d["recall_at_10_fresh_queries"] == round(recall, 4)
    assert d["search"]["single_p99_ms"] >= d["search"]["single_p50_ms"] > 0 and "flat_baseline_search" in d
    check_load(d["load"], d["machine"]["loadavg_before"], d["machine"]["loadavg_after"])


def test_train_ram_quick(tmp_path):
    """``benchmarks/train_ram.py --quick``: two real training runs on a cache 9x the cap; the cap keeps the
    cache's resident pages near it (one 512-row embedding batch at most), no cap leaves the whole file resident."""
    from benchmarks.train_ram import EMBED_ROWS

    data = run("train_ram", tmp_path, "--quick", "--work", str(tmp_path))
    rows = {r["max_ram"]: r for r in data["results"]}
    assert set(rows) == {"none", "2M"} and rows["2M"]["max_ram_mib"] == 2 and rows["none"]["max_ram_mib"] is None
    for r in rows.values():  # each a real training run of the tiny preset on the 1000 photos, its own peak RSS
        assert r["epochs"] == 1 and positive(r["images_per_s"]) and positive(r["wall_s"])
        assert 100 < r["peak_rss_mib"] < 8192
    row_bytes = 80 * 80 * 3
    assert data["images"] == 1000 and abs(data["bytes_per_image"] - row_bytes) < 1  # 80 px rows + the header
    cache_mib = data["cache_bytes"] / 2**20
    assert cache_mib > 9 * 2
    assert rows["none"]["cache_rss_peak_mib"] > 0.9 * cache_mib  # every row read, none dropped
    floor_mib = (EMBED_ROWS * row_bytes + (2 << 16)) / 2**20  # one embedding batch and its fault-around windows
    assert 0 < rows["2M"]["cache_rss_peak_mib"] <= max(2, floor_mib) + 0.5 < 0.9 * cache_mib
    assert positive(data["decode"]["wall_s"]) and data["folder_mib"] > 0
    assert not list(tmp_path.glob("tmp*"))  # the photos and the cache went with the temporary folder


def test_milvus_vs_faiss_quick(tmp_path):
    """``benchmarks/milvus_vs_faiss.py --quick``: every case (FAISS auto, Milvus Lite FLAT and IVF_FLAT) runs on the
    same vectors, in its own process, and reports build time, recall, latencies and memory."""
    pytest.importorskip("milvus_lite")
    data = run("milvus_vs_faiss", tmp_path, "--quick")
    rows = {r["case"]: r for r in data["results"]}
    assert list(rows) == ["faiss-auto", "milvus-FLAT", "milvus-IVF_FLAT"]
    assert rows["faiss-auto"]["index"] == "Flat" and rows["milvus-FLAT"]["index"] == "FLAT"
    assert rows["milvus-IVF_FLAT"]["params"]["nlist"] >= 1 and rows["milvus-IVF_FLAT"]["params"]["nprobe"] >= 1
    for r in rows.values():
        assert r["n"] == 2000 and r["recall_at_10"] >= 0.9  # exact indexes: 1.0; IVF tuned to the 0.95 target
        assert 0 < r["single_ms"]["p50"] <= r["single_ms"]["p99"] and 0 < r["batch_ms"]["p50"] <= r["batch_ms"]["p99"]
        assert 0 < r["rss_after_build_mib"] <= r["peak_rss_mib"] and r["build_s"] >= 0
    assert rows["milvus-FLAT"]["recall_at_10"] == rows["faiss-auto"]["recall_at_10"] == 1.0


def test_sync_50k_quick(tmp_path, shapes_root):
    """``benchmarks/sync_50k.py`` on 30 files: the moves are not re-embedded, the index equals a fresh build."""
    from PIL import Image

    from benchmarks import sync_50k

    src = tmp_path / "src"
    pngs = sorted((shapes_root / "train").rglob("*.png"))
    for i, png in enumerate(pngs[:50]):  # 10 class folders: 3 training files and 2 new ones each
        split, cls = ("train", i % 10) if i < 30 else ("test", i % 10)
        d = src / split / f"c{cls}"
        d.mkdir(parents=True, exist_ok=True)
        Image.open(png).convert("RGB").save(d / f"{i:03d}.jpg", quality=95)
    out = tmp_path / "sync.json"
    assert sync_50k.main(["--source", str(src), "--out", str(out), "--n", "30", "--moved", "5", "--deleted", "3",
                          "--added", "20", "--sample", "6", "--watch", "0", "--fresh", "--threads", "1"]) == 0
    d = json.loads(out.read_text())
    s, eq = d["sync"], d["equality"]
    assert (s["moved"], s["removed"], s["added"], s["moved_files_re_embedded"]) == (5, 3, 20, 0)
    assert s["embedded"] == 20 and s["count"] == 30 - 3 + 20
    assert eq["paths_equal_a_fresh_scan"] and eq["labels_equal_a_fresh_scan"]
    assert eq["answers_equal_a_fresh_build_200x50"] and d["machine"]["cores"] >= 1


def test_pixel_check_speed_quick(tmp_path):
    data = run("pixel_check_speed", tmp_path, "--quick")
    rows = data["results"]
    assert {r["workers"] for r in rows} >= {1} and all(r["attempt"] in (1, 2) for r in rows)
    for r in rows:
        assert 0 < r["pairs_checked"] <= r["pairs_in_band"] and r["unreadable"] == 0
        assert r["ms_per_pair"] == pytest.approx(1000 * r["seconds"] / r["pairs_checked"])
    # the same pairs, the same verdicts, whatever the threads
    assert len({(r["pairs_checked"], r["passed"]) for r in rows}) == 1
