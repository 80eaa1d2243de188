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
            rows.append(f"| {r['n']:,} | {r['index']} | skipped: {r['skipped']} ||||||||")
            continue
        mib = r["bytes"] / 2**20
        params = ", ".join(f"{k}={v}" for k, v in (r.get("params") or {}).items()) or "-"
        what = r.get("factory", "-") + (f" (= {r['same_as']})" if r.get("same_as") else "")
        build = "-" if r["index"].endswith("brute force") else f"{r['build_total_s']:.1f}"
        per = r["bytes"] / r["n"]
        rows.append(f"| {r['n']:,} | {r['index']} | {what} | {params} | {build} | {mib:,.0f} | {per:,.1f} | "
                    f"{r['recall_at_10']:.3f} | {r['single_p50_ms']:.3g} | {r['single_p99_ms']:.3g} | "
                    f"{r['batch_qps']:,.0f} |")
    head = ("| vectors | index | FAISS factory | knob | build + tune (s) | size (MiB) | bytes / vector | recall@10 | "
            "1-query p50 (ms) | 1-query p99 (ms) | batched queries/s |\n|---|---|---|---|---|---|---|---|---|---|---|")
    return [head, *rows]


def _ips(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


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
        shown = _ips(r["images_per_s"])
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


def _trained_on(r: dict) -> str:
    """' (k-means on N)' where the row records its training sample (runs before 2026-12-06 do not)."""
    return f" (k-means on {r['train_vectors']:,})" if r.get("train_vectors") else ""


def _budget_serve(d: dict) -> list[str]:
    head = ("| vectors | memory budget | `auto` chose | search knob | file B/vector | build (s) "
            "| open + first query (s) | recall@10 | 1-query p50 / p99 (ms) | serving peak RSS (MiB) | why |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|")
    rows = [f"| {r['n']:,} | {r['memory_budget'] / 2**30:.2f} GiB | {r['factory']}{' (mmap)' if r['mmap'] else ''} | "
            f"{', '.join(f'{k}={v}' for k, v in r['params'].items()) or '-'} | {r['bytes_per_vector']:,.1f} | "
            f"{r['build_s']:,.1f}{_trained_on(r)} | {r['open_plus_first_query_s']:.3g} | {r['recall_at_10']:.3f} | "
            f"{r['single_p50_ms']:.3g} / {r['single_p99_ms']:.3g} | {r['peak_rss_mib']:,.0f} | {r['reason']} |"
            for r in d["results"]]
    return [head, *rows]


def _ms(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def _milvus_vs_faiss(d: dict) -> list[str]:
    head = ("| case | index | search knob | build (s) | recall@10 (fresh queries) | 1-query p50 / p99 (ms) "
            f"| batch of {d['args']['batch']} p50 / p99 (ms) | RSS after build (MiB) | peak RSS (MiB) |\n"
            "|---|---|---|---|---|---|---|---|---|")
    rows = []
    for r in d["results"]:
        if "not_finished_after_s" in r:
            rows.append(f"| {r['case']} | not finished after {r['not_finished_after_s']:,.0f} s (case time limit) "
                        "| - | - | - | - | - | - | - |")
            continue
        knob = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "-"
        rows.append(f"| {r['case']} | {r['index']} | {knob} | {r['build_s']:,.1f} | {r['recall_at_10']:.3f} | "
                    f"{_ms(r['single_ms']['p50'])} / {_ms(r['single_ms']['p99'])} | "
                    f"{_ms(r['batch_ms']['p50'])} / {_ms(r['batch_ms']['p99'])} | {r['rss_after_build_mib']:,.0f} | "
                    f"{r['peak_rss_mib']:,.0f} |")
    note = [f"\n{d['data']['n']:,} x {d['data']['d']} clustered unit vectors; " + d["note"]] if d.get("note") else []
    return [head, *rows, *note]


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
    if any("path" in r for r in d["results"]):  # runs since the REST API: one row per path and level
        head = ("| path | concurrent clients | requests | failed | p50 (ms) | p99 (ms) | mean (ms) | requests/s | "
                "app CPU ms / request | client CPU ms / request | app peak RSS (MB) |\n"
                "|---|---|---|---|---|---|---|---|---|---|---|")
        rows = [f"| {r['path']} | {r['clients']} | {r['requests']} | {r['failed']} | {r['p50_ms']:,.0f} | "
                f"{r['p99_ms']:,.0f} | {r['mean_ms']:,.0f} | {r['requests_per_s']:.1f} | "
                f"{common.fmt(r.get('app_cpu_ms_per_request'))} | "
                f"{common.fmt(r.get('client_cpu_ms_per_request'))} | "
                f"{common.fmt(r.get('app_peak_rss_mb'))} |" for r in d["results"]]
        return [head, *rows]
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


# ---------------------------------------------------------------- the summary: one row per headline, all derived


def _load(name: str) -> dict | None:
    path = common.RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _row(rows: list[dict], **match) -> dict:
    found = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    if len(found) != 1:
        raise KeyError(f"expected one result row with {match}, found {len(found)}")
    return found[0]


def _x(v: float) -> str:
    return f"{v:.1f}×" if v < 100 else f"{v:,.0f}×"


def _src(*names: str) -> str:
    return ", ".join(f"[{n}.json](benchmarks/results/{n}.json)" for n in names)


def _summary_training(tt: dict) -> list[str]:
    res = tt["results"]
    rows = []
    for width, label in ((64, "ResNet18 (width 64)"), (16, "`cpu-cifar` encoder (width 16)")):
        ours = _row(res, width=width, variant="ours")
        refs = [r for r in res if r["width"] == width and r["variant"].startswith("reference")]
        ref = max(refs, key=lambda r: r["images_per_s"])
        comp = next((r for r in res if r["width"] == width and r["variant"] == "ours + torch.compile"), None)
        ratio = ours["images_per_s"] / ref["images_per_s"]
        ours_txt = _ips(ours["images_per_s"])
        ratio_txt = f"**{_x(ratio)}**"
        if comp and comp["images_per_s"] > 1.02 * ours["images_per_s"]:  # a gain, not noise
            ours_txt += f"; {_ips(comp['images_per_s'])} with `--compile`"
            ratio_txt += f"; {_x(comp['images_per_s'] / ref['images_per_s'])} compiled"
        b = ours["breakdown_ms"]
        net = b["forward"] + b["backward"]
        why = (f"forward + backward alone are {net:,.0f} of our {ours['step_ms']:,.0f} ms step, so at most "
               f"{_x(ref['step_ms'] / net)} the reference's")
        if ours.get("profile"):
            top = ours["profile"]["ops"][0]
            why += f"; `{top['op']}` is {100 * top['share']:.1f} % of the profiled step"
        note = why
        what = "PIL + DataLoader, fp32" if "0 workers" in ref["variant"] else "PIL, 2 workers"
        rows.append(f"| training, {label}, images/s | {ours_txt} | {_ips(ref['images_per_s'])} ({what}) | "
                    f"{ratio_txt} | {note} | {_src('train_throughput')} |")
    return rows


def _summary_objective(oc: dict) -> list[str]:
    res = oc["results"]
    big, small = max(r["n"] for r in res if "ms_per_step" in r and r["objective"] == "softmax"), min(
        r["n"] for r in res)
    nce = _row(res, n=big, precision="fp32", objective="nce m=4096")
    soft = _row(res, n=big, precision="fp32", objective="softmax")
    nce_s = _row(res, n=small, precision="fp32", objective="nce m=4096")
    soft_s = _row(res, n=small, precision="fp32", objective="softmax")
    return [f"| objective step at {big / 1e6:.2f}M rows (fp32, median) | NCE m=4096: {nce['ms_per_step']:,.0f} ms | "
            f"full softmax: {soft['ms_per_step']:,.0f} ms | NCE {_x(soft['ms_per_step'] / nce['ms_per_step'])} "
            f"cheaper | — (at {small // 1000}k the softmax is {_x(nce_s['ms_per_step'] / soft_s['ms_per_step'])} "
            f"cheaper) | {_src('objective_cost')} |"]


def _summary_knn(ks: dict) -> list[str]:
    res = ks["results"]
    rows = []
    for n in sorted({r["n"] for r in res}):
        ch, nv = _row(res, n=n, method="chunked"), _row(res, n=n, method="naive")
        q = ch["queries"]
        naive = f"naive: {nv['seconds_for_all_queries']:,.1f} s"
        if nv["extrapolated"]:
            naive += (f" (extrapolated from {nv['ran_queries']:,} queries), needs "
                      f"{nv['similarity_matrix_gib']:.1f} GiB")
            tail = "naive cannot run here"
        else:
            naive += f", +{nv['peak_extra_mib']:,.0f} MiB"
            tail = f"{nv['peak_extra_mib'] / ch['peak_extra_mib']:.1f}× less memory"
        size = f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n // 1000}k"
        rows.append(f"| kNN eval, {q // 1000}k queries × {size} rows (k = 200) | chunked: "
                    f"{ch['seconds_for_all_queries']:,.1f} s, +{ch['peak_extra_mib']:,.0f} MiB | {naive} | "
                    f"{nv['naive_over_chunked_time']:.2f}× the speed, {tail} | — | {_src('knn_speed')} |")
    return rows


def _summary_search(name: str, bound: bool) -> list[str]:
    d = _load(name)
    if d is None:
        return [f"| search (`{name}`) | *not measured yet* ||||| |"]
    n = max(r["n"] for r in d["results"])
    res = [r for r in d["results"] if r["n"] == n]
    auto, npy, flat = _row(res, index="auto"), _row(res, index="numpy brute force"), _row(res, index="flat")
    knob = ", ".join(f"{k} {v}" for k, v in auto["params"].items())
    built = f", built in {auto['build_total_s'] / 60:.1f} min" if auto["build_total_s"] >= 60 else ""
    note = "—"
    if bound:  # where single-query p50 and recall stand against 5 ms and 0.95
        fast, accurate = auto["single_p50_ms"] <= 5, auto["recall_at_10"] >= 0.95
        note = (f"p50 {'under' if fast else 'over'} 5 ms at recall@10 "
                f"{'≥' if accurate else 'below'} 0.95")
    return [f"| search, {n / 1e6:.0f}M vectors, `auto` ({auto['factory']}{', ' + knob if knob else ''}) | p50 "
            f"{auto['single_p50_ms']:.2g} ms, recall@10 {auto['recall_at_10']:.3f} on fresh queries{built} | numpy "
            f"brute force p50 {npy['single_p50_ms']:,.0f} ms, FAISS Flat {flat['single_p50_ms']:,.0f} ms | "
            f"{_x(npy['single_p50_ms'] / auto['single_p50_ms'])} vs numpy | {note} | {_src(name)} |"]


def _summary_app(al: dict) -> list[str]:
    res = sorted((r for r in al["results"] if r.get("path", "gradio") == "gradio"), key=lambda r: r["clients"])
    clients = " / ".join(str(r["clients"]) for r in res)
    p50 = " / ".join(f"{r['p50_ms']:,.0f} ms" for r in res)
    return [f"| app, upload → results, {clients} clients | p50 {p50}, {sum(r['failed'] for r in res)} errors | — | "
            f"— | section 5 | {_src('app_latency')} |"]


def _summary(_: dict | None = None) -> list[str]:
    head = "| item | ours | baseline, same run | ratio | note | from |\n|---|---|---|---|---|---|"
    rows = [head]
    parts = (("train_throughput", _summary_training), ("objective_cost", _summary_objective),
             ("knn_speed", _summary_knn), ("app_latency", _summary_app))
    for name, fn in parts[:3]:
        d = _load(name)
        rows += fn(d) if d else [f"| `{name}` | *not measured yet* ||||| |"]
    rows += _summary_search("search_scale", True)
    rows += _summary_search("search_scale_10m", False)
    d = _load("app_latency")
    rows += _summary_app(d) if d else ["| app latency | *not measured yet* ||||| |"]
    gpu = _load("gpu_check")
    if gpu is None:
        rows.append("| GPU: projected 200-epoch paper-cifar run on one H100 | not measured: "
                    "`gpu_check.json` is missing | | | | script ready: `benchmarks/gpu_check.py` |")
    else:
        pr = gpu["projection"]
        rows.append(f"| GPU ({gpu['machine'].get('gpu')}): projected paper-cifar | {pr['total_minutes']} min | | | "
                    f"— | {_src('gpu_check')} |")
    return rows


# benchmark[:view] -> rows; a result file renders by the benchmark that wrote it, so a second file of
# one benchmark (a rerun on a quiet machine, the 10M run) needs no entry of its own
RENDER = {"search_scale": _search, "train_throughput": _train, "train_throughput:profile": _profile,
          "objective_cost": _objective, "knn_speed": _knn, "app_latency": _app, "gpu_check": _gpu,
          "index_bytes": _index_bytes, "faiss_blas_threshold": _blas, "budget_serve": _budget_serve,
          "milvus_vs_faiss": _milvus_vs_faiss}


def render(name: str) -> str:
    if name == "summary":  # several files: each row links the one it comes from
        return "\n".join(_summary()) + "\n"
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
