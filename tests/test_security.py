"""Security checks: no unsafe deserialisation anywhere in the code, and index folders that were
edited or damaged are refused before use. (Loopback binding, served files and upload limits of
the running app are in test_reliability_app.py and test_app*.py.)"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from index.build import BuildOptions, build
from index.errors import IndexDirError
from index.layout import write_index_file
from index.search import SearchIndex
from instdisc.web.handlers import QueryError, SearchHandlers

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".venv", ".git", "node_modules", "__pycache__"}
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value
    return None


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _dotted(node) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def unsafe_calls(source: str, filename: str = "<src>") -> list[str]:
    """Every deserialisation that could run code from a file: torch.load without weights_only=True,
    pickle-family imports, np.load(allow_pickle=True), yaml.load without a safe loader,
    tarfile extraction without a filter, eval/exec."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{where}: imports {n}" for n in names if n.split(".")[0] in UNSAFE_MODULES]
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name.endswith("torch.load"):
            if not _is_true(_kw(node, "weights_only")):
                found.append(f"{where}: torch.load without weights_only=True")
        elif name in ("np.load", "numpy.load") and _is_true(_kw(node, "allow_pickle")):
            found.append(f"{where}: np.load(allow_pickle=True)")
        elif name == "yaml.load" and "Safe" not in ast.unparse(_kw(node, "Loader") or ast.Constant(None)):
            found.append(f"{where}: yaml.load without SafeLoader")
        elif name.endswith(".extractall") and _kw(node, "filter") is None:
            found.append(f"{where}: extractall without filter=")
        elif name in ("eval", "exec"):
            found.append(f"{where}: {name}()")
    return found


def python_files() -> list[Path]:
    return [p for p in ROOT.rglob("*.py") if not (set(p.relative_to(ROOT).parts) & SKIP_DIRS)]


def test_the_scanner_finds_each_unsafe_pattern():
    bad = """
import pickle
from joblib import load
import torch, numpy as np, yaml, tarfile
torch.load("x.pt")
torch.load("x.pt", weights_only=False)
np.load("x.npy", allow_pickle=True)
yaml.load(open("c.yml"))
tarfile.open("a.tar").extractall("out")
eval("1+1")
"""
    found = unsafe_calls(bad)
    assert len(found) == 8, found
    good = """
import torch, numpy as np, yaml, tarfile
torch.load("x.pt", map_location="cpu", weights_only=True)
np.load("x.npy", mmap_mode="r")
yaml.load(open("c.yml"), Loader=yaml.SafeLoader)
tarfile.open("a.tar").extractall("out", filter="data")
"""
    assert unsafe_calls(good) == []


def test_no_unsafe_deserialisation_in_the_repository():
    files = python_files()
    assert len(files) > 30 and any(p.name == "checkpoint.py" for p in files)
    found = [f for p in files for f in unsafe_calls(p.read_text(encoding="utf-8"), str(p.relative_to(ROOT)))]
    assert found == []


# ---------------------------------------------------------------- index folders that were tampered with


@pytest.fixture(scope="module")
def index_dir(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sec") / "idx"
    build(tiny_run / "checkpoint.pt", out, options=BuildOptions(progress=False, device="cpu"))
    return out


def _edited(src: Path, tmp_path: Path, **changes) -> tuple[Path, dict]:
    d = tmp_path / "edited"
    shutil.copytree(src, d)
    m = json.loads((d / "manifest.json").read_text())
    m.update(changes)
    (d / "manifest.json").write_text(json.dumps(m))
    return d, m


def test_manifest_pointing_outside_the_folder_is_refused(index_dir: Path, tmp_path: Path):
    m = json.loads((index_dir / "manifest.json").read_text())
    outside = tmp_path / "elsewhere.faiss"
    shutil.copy(index_dir / m["files"]["index"], outside)
    d, _ = _edited(index_dir, tmp_path, files=dict(m["files"], index=f"../{outside.name}"))
    with pytest.raises(IndexDirError, match=r"files.index is '\.\./elsewhere.faiss'.*edited or damaged"):
        SearchIndex.open(d)
    shutil.rmtree(d)
    d, _ = _edited(index_dir, tmp_path, generation="../../x")
    with pytest.raises(IndexDirError, match="invalid generation"):
        SearchIndex.open(d)


def test_vectors_of_another_dimension_than_the_model_are_refused(index_dir: Path, tmp_path: Path):
    d, m = _edited(index_dir, tmp_path)
    old = faiss.read_index(str(d / m["files"]["index"]))
    ids = faiss.vector_to_array(old.id_map) if hasattr(old, "id_map") else np.arange(old.ntotal)
    wrong = faiss.IndexIDMap(faiss.IndexFlatIP(64))
    vecs = np.random.default_rng(0).standard_normal((old.ntotal, 64)).astype(np.float32)
    wrong.add_with_ids(vecs, ids.astype(np.int64))
    size = write_index_file(d / m["files"]["index"], wrong)
    m.update(dim=64, files=dict(m["files"], index_bytes=size))
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexDirError, match="encoder gives 128-d vectors but the index holds 64-d"):
        SearchIndex.open(d)


def test_manifest_architecture_must_match_the_checkpoint(index_dir: Path, tmp_path: Path):
    m = json.loads((index_dir / "manifest.json").read_text())
    d, _ = _edited(index_dir, tmp_path, architecture=dict(m["architecture"], image_size=224))
    with pytest.raises(IndexDirError, match="manifest records architecture .*image_size.: 224"):
        SearchIndex.open(d)


def test_data_url_over_the_upload_limit_is_refused(index_dir: Path):
    import base64

    with SearchIndex.open(index_dir, device="cpu") as idx:
        h = SearchHandlers(idx, max_query_bytes=1000)
        url = "data:image/png;base64," + base64.b64encode(b"\0" * 2000).decode()
        with pytest.raises(QueryError, match="upload limit"):
            h.search({"path": None, "url": url}, 3)
