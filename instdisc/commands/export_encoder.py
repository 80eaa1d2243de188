"""Export a trained encoder as the bundled general encoder, and record what it measured on its card.

    # strip a run's checkpoint to config + encoder weights: instdisc/models/general/encoder.pt + card.json
    python scripts/export_encoder.py export --checkpoint RUN_DIR --command "python scripts/train.py ..." \
        --trained-on "CIFAR-10 train + tinyimagenet-subset train"
    # attach an evaluation report's numbers (scripts/evaluate.py's report.json) to the card
    python scripts/export_encoder.py metrics --name photos-test --report REPORT_DIR/report.json \
        --command "python scripts/evaluate.py ..."

See instdisc/bundled.py and README "Search your own photos".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from instdisc import bundled
from instdisc.checkpoint import CheckpointError
from instdisc.fsutil import atomic_write_text


def report_summary(report: dict, command: str) -> dict:
    """The class-level numbers of every method in an evaluation report, with the command that made it."""
    methods = {}
    for name, m in report["methods"].items():
        if "knn_top1" in m:
            methods[name] = {"knn_200": m["knn_top1"]["200"], "nn_1": m["knn_top1"]["1"], "map": m["map"],
                             "note": m.get("note", "")}
    return {"command": command, "queries": report["queries"]["count"], "gallery": report["gallery"]["count"],
            "methods": methods}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    e = sub.add_parser("export", help="write encoder.pt + card.json from a training checkpoint")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--out", default=str(bundled.BUNDLED_DIR))
    e.add_argument("--command", required=True, help="the command that trained it (recorded on the card)")
    e.add_argument("--trained-on", required=True)
    m = sub.add_parser("metrics", help="attach an evaluation report to the card")
    m.add_argument("--card", default=str(bundled.BUNDLED_DIR / "card.json"))
    m.add_argument("--name", required=True, help="what the evaluation measured, e.g. photos-test")
    m.add_argument("--report", required=True, help="scripts/evaluate.py's report.json")
    m.add_argument("--command", required=True, help="the command that made the report")
    args = p.parse_args(argv)
    try:
        if args.what == "export":
            card = bundled.export(args.checkpoint, args.out, args.command, args.trained_on,
                                  time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
            print(f"{Path(args.out) / card.file}: {card.bytes / 2**20:.2f} MiB, sha256 {card.sha256}")
            return 0
        card = bundled.ModelCard.read(args.card)
        card.metrics[args.name] = report_summary(json.loads(Path(args.report).read_text()), args.command)
        atomic_write_text(args.card, card.to_json())
        print(json.dumps(card.metrics[args.name], indent=1))
        return 0
    except (CheckpointError, OSError, KeyError, ValueError) as err:
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
