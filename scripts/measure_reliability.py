"""Reliability figures: bad inputs, kill -9 faults and load, written to results/reliability/*.json.

    python scripts/measure_reliability.py                      # all three (about 15 minutes on 2 CPU cores)
    python scripts/measure_reliability.py --part inputs        # the bad-input corpus through every path
    python scripts/measure_reliability.py --part faults [--timed-kills 6] [--seed 0]
    python scripts/measure_reliability.py --part timed [--timed-kills 6] [--seed 0]   # only the timed kills of faults
    python scripts/measure_reliability.py --part load [--clients 32] [--queries 50]

Everything runs on generated data in a scratch folder (--work); see RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from instdisc.fsutil import atomic_write_text
from reliability import faults, suite

PARTS = ("inputs", "faults", "load")  # "timed": the timed kills of "faults" alone


def table_inputs(r: dict) -> str:
    rows = [f"{'path':10s} {'tried':>5s} {'handled':>7s} {'processed':>9s} {'refused/skipped':>15s} {'ignored':>7s}"]
    for path, p in r["per_path"].items():
        rows.append(f"{path:10s} {p['tried']:5d} {p['handled']:7d} {p['processed']:9d} {p['refused_or_skipped']:15d} "
                    f"{p['ignored']:7d}")
        rows += [f"   NOT HANDLED: {o['kind']}: {o['result']} {o['detail']}" for o in p["not_handled"]]
    return f"{r['kinds_tried']} kinds tried\n" + "\n".join(rows)


def table_faults(r: dict) -> str:
    rows = [f"injected kills survived: {r['injected_survived']}/{r['injected_total']}"]
    for x in r["injected"]:
        at = f" @ {x['kill_at']}" if "kill_at" in x else ""
        rows.append(f"  {'ok ' if x['survived'] else 'FAIL'} {x['scenario']}{at}")
    t = r.get("timed") or {}
    for cmd in ("train", "add") if t else ():
        c = faults.count_timed(t[cmd])  # only kills that interrupted real work count as survived
        rows.append(f"timed kills of {cmd} (seed {t['seed']}): {c['survived']}/{c['interrupted_work']} that "
                    f"interrupted work survived; not counted: {c['finished_before_kill']} came after the command "
                    f"finished, {c['killed_before_any_write']} before it wrote anything")
    return "\n".join(rows)


def table_load(r: dict) -> str:
    lat, resp = r["latency"], r["responsive"]
    return (f"{r['clients']} clients x {r['queries_per_client']} queries: {r['answered']}/{r['requests']} answered, "
            f"{r['errors']} errors; p50 {lat.get('p50_ms')} ms, p99 {lat.get('p99_ms')} ms, "
            f"{r['throughput_qps']} queries/s; app peak RSS {r['app_peak_rss_mb']} MiB; page probes "
            f"{resp['ok']}/{resp['probes']} answered (p99 {resp.get('p99_ms')} ms); bound to {r['bound_to']}; "
            f"load average {r['loadavg_before']} -> {r['loadavg_after']} on {r['cpu_count']} CPUs")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=[*PARTS, "timed", "all"], default="all",
                   help="timed: only the faults part's timed kills from outside (a few minutes)")
    p.add_argument("--out", default="results/reliability", help="folder for the JSON reports")
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--queries", type=int, default=50, help="queries per client")
    p.add_argument("--timed-kills", type=int, default=6, help="random outside kills per command (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-http", action="store_true", help="inputs: skip the running-app HTTP path")
    args = p.parse_args(argv)
    parts = PARTS if args.part == "all" else (args.part,)
    out = Path(args.out)
    failed = False
    with tempfile.TemporaryDirectory(prefix="reliability-") as tmp:
        work = Path(args.work or tmp)
        for part in parts:
            if part == "inputs":
                r = suite.inputs_report(work / "inputs", http=not args.no_http)
                text = table_inputs(r)
                failed |= any(p["handled"] != p["tried"] for p in r["per_path"].values())
            elif part == "timed":
                r = suite.timed_only_report(work / "timed", args.timed_kills, args.seed)
                text = table_faults({"injected": [], "injected_survived": 0, "injected_total": 0, **r})
                failed |= not r["timed"]["all_ok"]
            elif part == "faults":
                r = suite.faults_report(work / "faults", args.timed_kills, args.seed)
                text = table_faults(r)
                failed |= r["injected_survived"] != r["injected_total"] or not r["timed"].get("all_ok", True)
            else:
                r = suite.load_report(work / "load", args.clients, args.queries)
                text = table_load(r)
                failed |= r["errors"] > 0
            args_used = argv if argv is not None else sys.argv[1:]
            r["command"] = "python scripts/measure_reliability.py " + " ".join(args_used)
            atomic_write_text(out / f"{part}.json", json.dumps(r, indent=1, default=str) + "\n")
            print(f"== {part} -> {out / (part + '.json')}\n{text}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
