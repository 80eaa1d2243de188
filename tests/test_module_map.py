"""The module map in docs/architecture.md matches the tree: every tracked source file of every package has
its line, and no line names a file that is gone."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("instdisc", "index", "benchmarks", "reliability", "experiments", "scripts")


def mapped() -> set[str]:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text[text.index("## Module map"):]
    section = section[: section.index("\n## ")] if "\n## " in section else section
    files, package = set(), None
    for line in section.splitlines():
        head = re.match(r"\*\*`([a-z_/]+)/`\*\*", line)
        if head:
            package = head.group(1)
        entry = re.match(r"\* `([\w.]+)` – \S", line)
        if entry and package:
            files.add(f"{package}/{entry.group(1)}")
    return files


def tracked() -> set[str]:
    out = subprocess.run(["git", "ls-files", *PACKAGES], cwd=ROOT, capture_output=True, text=True, check=True)
    source = re.compile(r"[a-z_]+(/[a-z_]+)*/[\w.]+\.(py|sh)")
    return {p for p in out.stdout.split() if source.fullmatch(p) and "/results/" not in p}


def test_every_file_of_every_package_has_one_line_and_no_line_is_stale():
    have, want = mapped(), tracked()
    assert want, "git ls-files found nothing"
    assert sorted(want - have) == [], "files missing from the module map in docs/architecture.md"
    assert sorted(have - want) == [], "docs/architecture.md's module map names files that are not in the tree"
