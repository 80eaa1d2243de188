"""The repository speaks of the product only, and its docs hold together.

* No words about how the project was developed in any tracked text file or path (run numbers, issue
  references, remarks on borrowed machines or background jobs, "this day's" commands): a user cannot
  map any of them to a version, a date or a commit; dated entries name the date, the commit and the machine.
* Every relative link in every Markdown file resolves: the file exists and, where the link names a
  heading (``file.md#heading``), the heading exists.
* The README stays a README: at most 220 lines, with the sections a user looks for.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROCESS_WORDS = re.compile(
    r"\bsessions? ?\d+|\bsessions \d+|\bsession-\d+|\bissues? #?\d+|(?<![&\w/])#\d+\b(?![\w-])"
    r"|\blent\b|\bhelper jobs?\b|\btoday's\b|\bthe issue's\b",
    re.IGNORECASE,
)
# product words that look alike: a numbered write in a fault scenario, CSS colours
ALLOWED = re.compile(r"write #\d+|(border|color|background)[^;\n]*#\d+", re.IGNORECASE)
PROCESS_PATHS = re.compile(r"(^|/)(s\d+-|session|issue)|-s\d+(\.|/|$)", re.IGNORECASE)
SELF = "tests/test_docs.py"


def tracked(*patterns: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", *patterns], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    return [p for p in out.splitlines() if (ROOT / p).is_file()]


def text_of(rel: str) -> str | None:
    data = (ROOT / rel).read_bytes()
    if b"\0" in data[:8192]:
        return None  # binary (images, checkpoints)
    return data.decode("utf-8", errors="replace")


def process_words(text: str) -> list[str]:
    found = []
    for n, line in enumerate(text.splitlines(), 1):
        cleaned = ALLOWED.sub("", line)
        found += [f"{n}: {m.group(0)!r} in {line.strip()[:120]}" for m in PROCESS_WORDS.finditer(cleaned)]
    return found


def test_the_process_word_rule_catches_what_it_should_and_spares_product_words():
    # the examples are assembled here so that this file does not carry the words it forbids
    s, i, h = "sess" + "ion", "iss" + "ue", "#"
    bad = [f"{s} 9's weights", f"({s}s 8-11)", f"see {i} 14", f"{i} {h}6", f"as in {h}16,", "no GPU was " + "lent",
           "run by hel" + "per jobs", "tod" + "ay's commands", f"the {i}'s target", "results/s12-fresh/"]
    assert all(process_words(t) for t in bad[:-1]), [t for t in bad[:-1] if not process_words(t)]
    assert PROCESS_PATHS.search(bad[-1]) and PROCESS_PATHS.search("results/photos/cpu-photos-fast-s11/run")
    good = ["Gradio's session hash", "kill -9 mid checkpoint write #2", "border: 1px solid #888;", "issues found",
            "a 2-session budget", "s12 = 12", "the lentil", "results/photos/cpu-photos-fast-20min/"]
    assert not any(process_words(t) for t in good[:-1]), [process_words(t) for t in good]
    assert not PROCESS_PATHS.search(good[-1])


def test_no_development_process_words_in_any_tracked_text_or_path():
    files = [p for p in tracked() if p != SELF]
    assert len(files) > 100
    hits = {}
    for rel in files:
        text = text_of(rel)
        if text is not None and (found := process_words(text)):
            hits[rel] = found[:5]
    assert hits == {}
    assert [p for p in files if PROCESS_PATHS.search(p)] == []


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(md: Path) -> set[str]:
    out, seen = set(), {}
    in_code = False
    for line in md.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        m = None if in_code else re.match(r"#{1,6} (.+)", line)
        if m:
            s = slug(m.group(1))
            n = seen.get(s, 0)
            seen[s] = n + 1
            out.add(s if n == 0 else f"{s}-{n}")
    return out


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?: \"[^\"]*\")?\)|<img [^>]*src=\"([^\"]+)\"")


def test_every_relative_link_in_the_markdown_resolves():
    broken = []
    for rel in tracked("*.md"):
        md = ROOT / rel
        text = re.sub(r"```.*?```", "", md.read_text(encoding="utf-8"), flags=re.S)  # links in code are code
        for m in LINK.finditer(text):
            target = m.group(1) or m.group(2)
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto
            path, _, frag = target.partition("#")
            dest = (md.parent / path).resolve() if path else md
            if not dest.exists():
                broken.append(f"{rel}: {target} (no such file)")
            elif frag and dest.suffix == ".md" and frag not in anchors(dest):
                broken.append(f"{rel}: {target} (no such heading)")
    assert broken == []


def test_the_readme_is_short_and_has_what_a_user_looks_for():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 220
    heads = [h.lower() for h in re.findall(r"^## (.+)$", text, re.M)]
    for want in ("install", "search your own photos", "find duplicates", "rest api", "results", "citation",
                 "licen"):
        assert any(want in h for h in heads), (want, heads)
    assert "@inproceedings{wu2018unsupervised" in text and (ROOT / "LICENSE").exists()
    assert "bash scripts/quickstart.sh" in text and "bash scripts/test.sh" in text
    assert "instdisc-search" in text and "curl" in text
