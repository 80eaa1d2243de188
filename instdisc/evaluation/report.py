"""report.json and report.md: JSON-safe values, the paper's reference rows, the Markdown tables."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# The paper's CIFAR-10 numbers (ResNet18, 128-d, weighted kNN top-1 %); see docs/evaluation.md.
PAPER_CIFAR10 = [
    {"method": "parametric softmax", "knn_top1": 63.0, "linear_svm": 60.3},
    {"method": "non-parametric softmax (full)", "knn_top1": 80.8, "linear_svm": 75.4},
    {"method": "NCE m = 1", "knn_top1": 42.5, "linear_svm": 44.0},
    {"method": "NCE m = 4096", "knn_top1": 80.4, "linear_svm": 70.0},
    {"method": "random network", "knn_top1": 32.0, "linear_svm": None},
]
METHOD_NAMES = {"ours": "ours (index vectors)", "reembed": "ours, gallery re-embedded", "pixels": "raw pixels",
                "pixels-whitened": "raw pixels, PCA-whitened",
                "random": "random-init encoder", "imagenet": "ImageNet ResNet18 (supervised)"}


def json_safe(x):
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python, tuples -> lists."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return x


def pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100 * x:.{digits}f}"


def num(x: float | None, fmt: str = "{:.1f}") -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else fmt.format(x)


def render_markdown(r: dict) -> str:
    c = r["config"]
    lines = ["# Retrieval evaluation", ""]
    lines += [f"- index: `{c['index']}` ({r['index']['count']} entries, {r['index']['type']} "
              f"`{r['index']['factory']}`, {r['index']['dim']}-d, checkpoint epoch "
              f"{r['index']['checkpoint'].get('epoch')})",
              f"- queries: {r['queries']['count']} images from `{c['query_folder']}` ({c['query_source']}), "
              f"{'labelled' if r['queries']['labelled'] else 'unlabelled'}",
              f"- weighted kNN temperature tau = {c['temperature']} (the checkpoint's training temperature); "
              f"device {c['device']} (bf16 {c['bf16']}), index search on {c['search_device']}",
              f"- created {r['created']}, wall time {r['wall_s']:.0f} s", ""]
    if r.get("knn_top1") is not None:
        lines += [f"**Weighted kNN top-1 (k={r['knn_k']}): {pct(r['knn_top1'], 2)} %** · mAP "
                  f"{pct(r['map'], 2)} % · near-duplicate top-1 {pct(r['near_dup_top1'])} % · "
                  f"ANN recall@10 {num(r['ann_recall_at_10'], '{:.4f}')}", ""]
    methods = r["methods"]
    if r["class_level"]:
        ks = c["ks"]
        pks = c["pr_ks"]
        lines += ["## Class-level (exact search for every method)", "",
                  "| method | " + " | ".join(f"kNN k={k}" for k in ks) + " | mAP | mAP@R | "
                  + " | ".join(f"P@{k}" for k in pks) + " | " + " | ".join(f"R@{k}" for k in pks) + " |",
                  "|---" * (len(ks) + 3 + 2 * len(pks)) + "|"]
        for name, m in methods.items():
            if "knn_top1" not in m:
                continue
            lines.append(f"| {METHOD_NAMES.get(name, name)} | "
                         + " | ".join(pct(m["knn_top1"].get(str(k))) for k in ks)
                         + f" | {pct(m['map'])} | {pct(m['map_at_r'])} | "
                         + " | ".join(pct(m["precision_at"].get(str(k))) for k in pks) + " | "
                         + " | ".join(pct(m["recall_at"].get(str(k)), 2) for k in pks) + " |")
        lines += ["", "All numbers in %. kNN: the paper's weighted vote, exp(s/tau) over the top-k labelled gallery "
                  "neighbours. mAP: average precision over the full ranking of the gallery (relevant = same "
                  "class), mean over queries; mAP@R: MAP@R with R = the number of relevant gallery items. "
                  "P@k / R@k: precision and recall in the top k.", ""]
        lines += ["Paper (Wu et al. 2018), CIFAR-10, ResNet18, weighted kNN top-1 (k=200)"
                  + ("" if r["paper_reference"]["applies"] else " — for reference only, a different data set") + ":",
                  "", "| paper method | weighted kNN | linear SVM |", "|---|---|---|"]
        for row in r["paper_reference"]["rows"]:
            lines.append(f"| {row['method']} | {row['knn_top1']} | {row['linear_svm'] or '–'} |")
        lines.append("")
    nd = r["near_duplicate"]
    if nd.get("methods"):
        lines += ["## Instance-level (near-duplicate) retrieval", "",
                  f"{nd['samples']} gallery images, each queried with a strongly edited copy ({nd['augmentation']}); "
                  "how often the original comes back first / in the top 10 (exact search; 'index' = through the "
                  "index's configured search).", "",
                  "| method | top-1 | top-10 | MRR | median rank |", "|---|---|---|---|---|"]
        for name, m in nd["methods"].items():
            lines.append(f"| {METHOD_NAMES.get(name, name)} | {pct(m['top1'])} | {pct(m['top10'])} | "
                         f"{num(m['mean_reciprocal_rank'], '{:.3f}')} | {num(m['median_rank'], '{:.0f}')} |")
            if "index_top1" in m:
                lines.append(f"| ours, via the index | {pct(m['index_top1'])} | {pct(m['index_top10'])} | – | – |")
        lines.append("")
    a, s = r["ann"], r["speed"]
    lines += ["## Index: approximation and speed", "",
              f"- recall@{a['k']} of the configured search ({a['index_type']}, params {a['params'] or 'exact'}) "
              f"against exact search on the index's vectors, over {a['queries']} queries: "
              f"**{num(a['recall'], '{:.4f}')}** (measured at build time: {a['build_time_recall']})", "",
              "| what | throughput (queries/s) | p50 latency (ms) | p99 latency (ms) |", "|---|---|---|---|",
              f"| vector search, batches of {s['batched_vectors']['batch']} | "
              f"{num(s['batched_vectors']['qps'], '{:.0f}')} | – | – |",
              f"| vector search, one query | – | {num(s['single_vector']['p50_ms'], '{:.2f}')} | "
              f"{num(s['single_vector']['p99_ms'], '{:.2f}')} |"]
    if "batched_images" in s:
        lines.append(f"| image file -> result, batches of {s['batched_images']['batch']} | "
                     f"{num(s['batched_images']['qps'], '{:.0f}')} | – | – |")
    lines += [f"| image file -> result, one query | – | {num(s['single_image']['p50_ms'], '{:.2f}')} | "
              f"{num(s['single_image']['p99_ms'], '{:.2f}')} |", "",
              f"k = {s['single_vector']['k']}; {c['torch_threads']} torch threads, {c.get('faiss_threads')} FAISS "
              f"threads, {c['cpu_count']} CPUs, embedding on {c['device']}. Timings include the metadata lookup of "
              "every hit. On a machine busy with other work, FAISS's OpenMP threads can inflate single-query "
              "latency many times over (measure with --faiss-threads 1 to see).", ""]
    baseline_notes = [(n, m["note"]) for n, m in methods.items() if m.get("note")]
    if baseline_notes:
        lines += ["## Baselines", ""] + [f"- {METHOD_NAMES.get(n, n)}: {t}" for n, t in baseline_notes] + [""]
    if r["figures"]:
        lines += ["## Figures", ""] + [f"![{k}]({v})" for k, v in r["figures"].items()] + [""]
    if r["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in r["notes"]] + [""]
    lines += ["Stage timings (s): " + ", ".join(f"{k} {v}" for k, v in r["timing_s"].items()), ""]
    return "\n".join(lines)
