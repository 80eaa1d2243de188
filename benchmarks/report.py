"""Fill BENCHMARKS.md's tables from benchmarks/results/*.json, so no figure is copied by hand.

    python benchmarks/report.py [--doc BENCHMARKS.md]

Every ``<!-- table:NAME -->`` ... ``<!-- /table:NAME -->`` block of the document is replaced
by the table of ``results/NAME.json`` (``NAME`` may carry a ``:VIEW`` suffix for a second
table of the same file, e.g. ``train_throughput:profile``), preceded by a line stating the
machine, versions, date, load and the exact command of that run. The prose around the blocks is left alone.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from benchmarks import common
from instdisc.fsutil import atomic_write_text

BLOCK = re.compile(r"(<!-- table:([\w:.-]+) -->\n)(.*?)(<!-- /table:\2 -->)", re.S)


def stamp_line(data: dict) -> str:
    m, v = data["machine"], data["versions"]
    la0, la1 = data["loadavg_start"], data.get("loadavg_end", ["?"] * 3)
    vers = ", ".join(f"{k} {v[k]}" for k in ("torch", "faiss", "numpy", "python") if v.get(k))
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU"
    return (f"*{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB{gpu}; {vers}; {data['date'][:16]} UTC; "
            f"load average (1/5/15 min) {'/'.join(f'{x:.1f}' for x in la0)} at start, "
            f"{'/'.join(f'{x:.1f}' for x in la1)} at end{_others(data)}; {data['wall_seconds']:.0f} s.*  \n"
            f"`{data['command'].replace('python3 ', 'python ')}`\n")


def _others(data: dict) -> str:
    share = (data.get("load") or {}).get("other_processes_cpu")
    return "" if share is None else f", other processes {100 * share:.0f} % of the CPU"


def _search(d: dict) -> list[str]:
    rows = []
    for r in d["results"]:
        if "skipped" in r:
            rows.append(f"| {r['n']:,} | {r['index']} | skipped: {r['skipped']} |||||||")
            continue
        mib = r["bytes"] / 2**20
        params = ", ".join(f"{k}={v}" for k, v in (r.get("params") or {}).items()) or "-"
        what = r.get("factory", "-") + (f" (= {r['same_as']})" if r.get("same_as") else "")
        build = "-" if r["index"].endswith("brute force") else f"{r['build_total_s']:.1f}"
        rows.append(f"| {r['n']:,} | {r['index']} | {what} | {params} | {build} | {mib:,.0f} | "
                    f"{r['recall_at_10']:.3f} | {r['single_p50_ms']:.3g} | {r['single_p99_ms']:.3g} | "
                    f"{r['batch_qps']:,.0f} |")
    head = ("| vectors | index | FAISS factory | knob | build + tune (s) | size (MiB) | recall@10 | "
            "1-query p50 (ms) | 1-query p99 (ms) | batched queries/s |\n|---|---|---|---|---|---|---|---|---|---|")
    return [head, *rows]


def _train(d: dict) -> list[str]:
    head = ("| width | variant | images/s | × best reference | ms/step | data | augment | forward | backward | "
            "optimizer | bank update |\n|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for r in d["results"]:
        if "error" in r:
            rows.append(f"| {r['width']} | {r['variant']} | failed: {r['error'][:120]} |||||||||")
            continue
        b = r.get("breakdown_ms", {})
        parts = " | ".join(common.fmt(b.get(k)) for k in ("data", "augment", "forward", "backward", "optimizer",
                                                           "bank_update"))
        ips = r["images_per_s"]
        shown = f"{ips:,.0f}" if ips >= 100 else f"{ips:.1f}"
        rows.append(f"| {r['width']} | {r['variant']} | {shown} | {common.fmt(r.get('vs_best_reference'))} | "
                    f"{r['step_ms']:,.0f} | {parts} |")
    return [head, *rows]


def _profile(d: dict) -> list[str]:
    head = ("| width | variant | operator | calls / step | self ms / step | share of profiled time |\n"
            "|---|---|---|---|---|---|")
    rows = []
    for r in d["results"]:
        prof = r.get("profile")
        if not prof:
            continue
        rows += [f"| {r['width']} | {r['variant']} | `{o['op']}` | {o['calls_per_step']:g} | "
                 f"{o['self_ms_per_step']:,.1f} | {100 * o['share']:.1f} % |" for o in prof["ops"][:10]]
    return [head, *rows]


def _index_bytes(d: dict) -> list[str]:
    head = ("| index | FAISS factory | search knob | file B/vector | marginal B/vector | resident B/vector | "
            "recall@10 | build (s) |\n|---|---|---|---|---|---|---|---|")
    rows = [f"| {r['case']} | {r['factory']} | {', '.join(f'{k}={v}' for k, v in r['knobs'].items()) or '-'} | "
            f"{r['file_bytes_per_vector']:,.1f} | {r['marginal_bytes_per_vector']:,.1f} | "
            f"{r['resident_bytes_per_vector']:,.1f} | {r['recall_at_10']:.3f} | {r['build_seconds']:,.1f} |"
            for r in d["results"]]
    return [head, *rows]


def _blas(d: dict) -> list[str]:
    head = ("| vectors | index | BLAS threshold | batch of queries | batched queries/s | 1-query p50 (ms) |\n"
            "|---|---|---|---|---|---|")
    def thr(v: int) -> str:
        return f"{v:,}" + (" (shipped)" if v == d["shipped_threshold"] else "")

    rows = [f"| {r['n']:,} | {r['index']} | {thr(r['threshold'])} | {r['queries']:,} | {r['batch_qps']:,.1f} | "
            f"{r['single_p50_ms']:.3g} |" for r in d["results"]]
    return [head, *rows]


def _objective(d: dict) -> list[str]:
    head = ("| bank rows N | precision | objective | ms / step (median) | ms / step (fastest) | steps timed | "
            "softmax ÷ NCE (median) | peak RSS (MiB) |\n|---|---|---|---|---|---|---|---|")
    rows = []
    for r in d["results"]:
        if "ms_per_step" not in r:
            rows.append(f"| {r['n']:,} | {r['precision']} | {r['objective']} | not run: {r['skipped']} ||||||")
            continue
        fastest = 1000 * min(r["seconds_per_step"])  # on a loaded machine the least-disturbed step
        rows.append(f"| {r['n']:,} | {r['precision']} | {r['objective']} | {r['ms_per_step']:,.1f} | "
                    f"{fastest:,.1f} | {len(r['seconds_per_step'])} | {common.fmt(r.get('softmax_over_nce'))} | "
                    f"{r['peak_rss_mib']:,.0f} |")
    return [head, *rows]


def _knn(d: dict) -> list[str]:
    head = ("| gallery rows | method | queries timed | seconds for 10k queries | queries/s | peak extra memory (MiB) "
            "| naive ÷ chunked |\n|---|---|---|---|---|---|---|")
    rows = []
    for r in d["results"]:
        secs = f"{r['seconds_for_all_queries']:,.1f}" + (" (extrapolated)" if r["extrapolated"] else "")
        rows.append(f"| {r['n']:,} | {r['method']} | {r['ran_queries']:,} | {secs} | {r['queries_per_s']:,.0f} | "
                    f"{r['peak_extra_mib']:,.0f} | {common.fmt(r.get('naive_over_chunked_time'))} |")
    return [head, *rows]


def _app(d: dict) -> list[str]:
    head = ("| concurrent clients | requests | failed | p50 (ms) | p99 (ms) | mean (ms) | requests/s |\n"
            "|---|---|---|---|---|---|---|")
    rows = [f"| {r['clients']} | {r['requests']} | {r['failed']} | {r['p50_ms']:,.0f} | {r['p99_ms']:,.0f} | "
            f"{r['mean_ms']:,.0f} | {r['requests_per_s']:.1f} |" for r in d["results"]]
    return [head, *rows]


def _gpu(d: dict) -> list[str]:
    p = d["projection"]
    lines = ["| variant | images/s | ms/step |\n|---|---|---|"]
    lines += [f"| {r['variant']} | {common.fmt(r.get('images_per_s'))} | {common.fmt(r.get('step_ms'))} |"
              for r in d["results"]]
    lines.append(f"\nProjected `paper-cifar` (200 epochs): {p['epoch_s']:.1f} s/epoch -> **{p['total_minutes']} "
                 f"min** ({p['variant']}, kNN monitor {p['knn_monitor_s_per_epoch']} s/epoch).")
    return lines


# benchmark[:view] -> rows; a result file renders by the benchmark that wrote it, so a second file of
# one benchmark (a rerun on a quiet machine, the 10M run) needs no entry of its own
RENDER = {"search_scale": _search, "train_throughput": _train, "train_throughput:profile": _profile,
          "objective_cost": _objective, "knn_speed": _knn, "app_latency": _app, "gpu_check": _gpu,
          "index_bytes": _index_bytes, "faiss_blas_threshold": _blas}


def render(name: str) -> str:
    base, _, view = name.partition(":")
    path = common.RESULTS / f"{base}.json"
    if not path.exists():
        return f"*not measured yet: {path.name} is missing*\n"
    data = json.loads(path.read_text())
    partial = "" if data.get("complete") else "**partial run (stopped before the end)**  \n"
    render_rows = RENDER[data["benchmark"] + (f":{view}" if view else "")]
    return partial + stamp_line(data) + "\n" + "\n".join(render_rows(data)) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--doc", default=str(common.ROOT / "BENCHMARKS.md"))
    args = p.parse_args(argv)
    doc = Path(args.doc)
    text = doc.read_text()
    new = BLOCK.sub(lambda m: m.group(1) + render(m.group(2)) + m.group(4), text)
    if new != text:
        atomic_write_text(doc, new)
    print(f"{doc}: {len(BLOCK.findall(text))} tables filled")
    return 0


if __name__ == "__main__":
    sys.exit(main())
