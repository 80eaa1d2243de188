"""Export a trained encoder as a bundled encoder, and record what it measured on its card.

    # strip a run's checkpoint to config + encoder weights: instdisc/models/photo/encoder.pt + card.json
    instdisc-search export-encoder export --checkpoint RUN_DIR --encoder photo \
        --command "instdisc-search train ..." --trained-on "caltech101-half (28 categories) + ..."
    # attach an evaluation report's numbers (instdisc-search evaluate's report.json) to the card
    instdisc-search export-encoder metrics --encoder photo --name caltech-heldout --report REPORT_DIR/report.json \
        --command "instdisc-search evaluate ..."

See instdisc/bundled.py and docs/photos.md.
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
    e.add_argument("--encoder", choices=[bundled.THUMBNAIL, bundled.PHOTO], required=True,
                   help="which bundled encoder this becomes (written to instdisc/models/NAME unless --out)")
    e.add_argument("--out", default=None, help="another folder to export to (its name becomes the card's name)")
    e.add_argument("--command", required=True, help="the command that trained it (recorded on the card)")
    e.add_argument("--trained-on", required=True)
    m = sub.add_parser("metrics", help="attach an evaluation report to the card")
    m.add_argument("--encoder", default=None, help="a bundled encoder's name (its card is updated)")
    m.add_argument("--card", default=None, help="or the path of a card.json")
    m.add_argument("--name", required=True, help="what the evaluation measured, e.g. photos-test")
    m.add_argument("--report", required=True, help="scripts/evaluate.py's report.json")
    m.add_argument("--command", required=True, help="the command that made the report")
    args = p.parse_args(argv)
    try:
        if args.what == "export":
            out = Path(args.out) if args.out else bundled.MODELS_DIR / args.encoder
            card = bundled.export(args.checkpoint, out, args.command, args.trained_on,
                                  time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
            print(f"{out / card.file}: {card.bytes / 2**20:.2f} MiB, sha256 {card.sha256}")
            return 0
        if (args.card is None) == (args.encoder is None):
            raise ValueError("pass exactly one of --encoder NAME and --card PATH")
        card_path = Path(args.card) if args.card else bundled.MODELS_DIR / args.encoder / "card.json"
        card = bundled.ModelCard.read(card_path)
        card.metrics[args.name] = report_summary(json.loads(Path(args.report).read_text()), args.command)
        atomic_write_text(card_path, card.to_json())
        print(json.dumps(card.metrics[args.name], indent=1))
        return 0
    except (CheckpointError, OSError, KeyError, ValueError) as err:
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
