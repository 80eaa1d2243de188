"""One package, one command: the product (``instdisc``, ``index``) never imports the measurement tooling,
a wheel built from the repository holds only the product (with the bundled encoder as package data), and
that wheel installed into a fresh virtual environment runs ``instdisc-search`` with no checkout beside it."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("instdisc", "index")
TOOLING = ("benchmarks", "experiments", "reliability", "scripts", "tests", "app")


def _imports(path: Path) -> set[str]:
    """Top-level names of the absolute imports in one file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_product_never_imports_the_tooling_and_the_tooling_uses_the_product():
    product_files = [p for pkg in PRODUCT for p in (ROOT / pkg).rglob("*.py")]
    assert len(product_files) > 50
    bad = {str(p.relative_to(ROOT)): sorted(_imports(p) & set(TOOLING)) for p in product_files}
    assert {k: v for k, v in bad.items() if v} == {}
    # the names that moved into the package are gone as top-level imports everywhere
    everywhere = [p for p in ROOT.rglob("*.py") if ".venv" not in p.parts and "data" not in p.parts]
    old = {"evaluation", "explore", "webapp"}
    stale = {str(p.relative_to(ROOT)): sorted(_imports(p) & old) for p in everywhere}
    assert {k: v for k, v in stale.items() if v} == {}
    # tooling imports the product (the direction that is allowed), so the check above is not vacuous
    assert "instdisc" in _imports(ROOT / "benchmarks" / "planted.py")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the working tree (tracked and new files), as ``pip wheel .`` would."""
    src = tmp_path_factory.mktemp("src")
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.split("\n")
    for rel in filter(None, listed):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    out = tmp_path_factory.mktemp("dist")
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(out)], cwd=src, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    (whl,) = out.glob("instdisc_search-*.whl")
    return whl


def test_the_wheel_holds_only_the_product_with_the_encoder_its_command_and_the_readme(wheel: Path):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = z.read(info).decode()
        entry_points = z.read(info.replace("METADATA", "entry_points.txt")).decode()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == set(PRODUCT), tops
    for needed in ("instdisc/models/thumbnail/encoder.pt", "instdisc/models/thumbnail/card.json",
                   "instdisc/commands/__init__.py", "instdisc/web/server.py", "instdisc/explore/explorer.py",
                   "instdisc/evaluation/run.py", "index/search.py"):
        assert needed in names, needed
    assert not any(n.startswith(("instdisc/tests", "benchmarks/")) or n.endswith("planted.py") for n in names)
    assert "instdisc-search = instdisc.commands:main" in entry_points
    readme_title = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()[0]
    assert readme_title in metadata and "Description-Content-Type: text/markdown" in metadata
    assert "License-Expression: MIT" in metadata


def test_the_wheel_in_a_fresh_venv_indexes_a_folder_with_the_bundled_encoder(wheel: Path, tmp_path: Path,
                                                                              shapes_root: Path):
    """No checkout on the path: the venv sees the wheel, and the runtime libraries (torch, FAISS, Gradio)
    through a path entry to this environment's site-packages (a real ``pip install`` would download them)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    vpy = venv / "bin" / "python"
    site = subprocess.run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "runtime-libraries.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    p = subprocess.run([sys.executable, "-m", "pip", "--python", str(vpy), "install", "-q", "--no-deps", "--no-index",
                        str(wheel)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["INSTDISC_CACHE"] = str(tmp_path / "cache")
    work = tmp_path / "work"
    work.mkdir()
    cmd = str(venv / "bin" / "instdisc-search")

    p = subprocess.run([cmd, "--help"], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "train" in p.stdout and "duplicates" in p.stdout, p.stdout + p.stderr
    where = subprocess.run([str(vpy), "-c", "import instdisc, index; print(instdisc.__file__, index.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(w.startswith(str(venv)) for w in where), where  # the installed copy, not the checkout

    out = work / "idx"
    p = subprocess.run([cmd, "index", "--images", str(shapes_root / "test"), "--out", str(out), "--no-progress"],
                       cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "bundled" in p.stderr and str(venv) in p.stderr  # says which encoder, from the installed package
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == len(list((shapes_root / "test").rglob("*.png")))
    p = subprocess.run([cmd, "serve", "--index", str(tmp_path / "missing")], cwd=work, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "no index at" in p.stderr
