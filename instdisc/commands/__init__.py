"""``instdisc-search``: the one console command, with a subcommand per job.

    instdisc-search train     --data PATH --out RUN_DIR [--preset NAME] [--time-budget 20m] [--resume]
    instdisc-search index     --out INDEX_DIR [--checkpoint C] [--images PATH] [--add PATH] [--remove ...]
    instdisc-search serve     --index INDEX_DIR [--port 7860]
    instdisc-search duplicates --index INDEX_DIR --out REPORT_DIR [--threshold auto|0.95]
    instdisc-search explore   duplicates|clusters|map --index INDEX_DIR --out REPORT_DIR
    instdisc-search evaluate  --index INDEX_DIR --queries PATH --out REPORT_DIR
    instdisc-search export-encoder export|metrics ...

Each subcommand takes ``--help``. The ``scripts/*.py`` files and ``app.py`` in the repository are the
same commands (thin shims), for use from a checkout.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

# subcommand -> (module, function, one-line summary); modules are imported only when their command runs
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("instdisc.commands.train", "main", "train an encoder on a folder, an archive or CIFAR-10 (no labels)"),
    "index": ("index.cli", "main", "build, update, shard or merge a search index"),
    "serve": ("instdisc.commands.serve", "main", "serve the search page and the REST API for an index"),
    "duplicates": ("instdisc.explore.cli", "find_duplicates_main", "find duplicate and near-duplicate groups"),
    "explore": ("instdisc.explore.cli", "explore_main", "duplicate groups, clusters and a 2-D map of an index"),
    "evaluate": ("instdisc.commands.evaluate", "main", "retrieval evaluation of an index against baselines"),
    "export-encoder": ("instdisc.commands.export_encoder", "main", "export a run's encoder with its card"),
}
PROG = "instdisc-search"


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: {PROG} <command> [options]   ({PROG} <command> --help for its options)", "",
             "Image similarity search with an encoder trained on your own images, without labels", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, _, summary) in COMMANDS.items()]
    return "\n".join(lines)


def command(name: str) -> Callable[[list[str] | None], int]:
    """The ``main(argv)`` of a subcommand (KeyError for an unknown name)."""
    module, func, _ = COMMANDS[name]
    return getattr(importlib.import_module(module), func)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"{PROG}: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    sys.argv = [f"{PROG} {name}", *rest]  # argparse's prog in the subcommand's usage and errors
    return int(command(name)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
