"""Sharded gallery embedding: shards merged into one index equal the single-process build."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from index import cli
from index.build import BuildOptions, build
from index.errors import IndexDirError
from index.layout import open_dir
from index.shards import build_from_shards, embed_shard, merge_shards, shard_path

ROOT = Path(__file__).resolve().parents[1]

OPTS = BuildOptions(index_type="flat", progress=False, device="cpu")


def _contents(index_dir: Path) -> tuple[np.ndarray, np.ndarray, list]:
    """(ids, vectors in id order, metadata rows) of an index folder."""
    loaded = open_dir(index_dir)
    try:
        rows = loaded.store.rows()
        ids = np.array(sorted(r.id for r in rows), dtype=np.int64)
        vecs = loaded.index.reconstruct_batch(ids)
        return ids, vecs, sorted(rows, key=lambda r: r.id)
    finally:
        loaded.store.close()


@pytest.fixture(scope="module")
def single_build(tiny_run: Path, shapes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single")
    build(tiny_run / "checkpoint.pt", out, images=shapes_root, options=OPTS, overwrite=True)
    return out


def test_two_shards_merge_into_the_single_process_index(tiny_run, shapes_root, single_build, tmp_path):
    ckpt = tiny_run / "checkpoint.pt"
    out = tmp_path / "merged"
    for i in range(2):
        written = embed_shard(ckpt, shapes_root, out / "shards", i, 2, OPTS)
        assert written == shard_path(out / "shards", i, 2) and written.is_file()
    m = build_from_shards(ckpt, out, 2, options=OPTS)
    assert m.count == 340 and m.source == "embedded"
    assert not (out / "shards").exists()  # removed after the merge
    ids1, vecs1, rows1 = _contents(single_build)
    ids2, vecs2, rows2 = _contents(out)
    assert np.array_equal(ids1, ids2)
    def meta(rows: list) -> list:
        return [(r.path, r.label, r.split, r.sha256) for r in rows]

    assert meta(rows1) == meta(rows2)
    # the same encoder on the same pixels; only the batch boundaries differ (float reordering)
    np.testing.assert_allclose(vecs2, vecs1, atol=1e-5, rtol=0)
    assert {r.split for r in rows2} == {"train", "test"} and rows2[0].path == "test/circle/0000.png"


def test_merge_refuses_missing_or_foreign_shards(tiny_run, shapes_root, tmp_path):
    ckpt = tiny_run / "checkpoint.pt"
    shards = tmp_path / "s"
    embed_shard(ckpt, shapes_root, shards, 0, 3, OPTS)
    with pytest.raises(IndexDirError, match=r"shard-00001-of-00003.npz: shard missing"):
        build_from_shards(ckpt, tmp_path / "out", 3, shards, OPTS)
    embed_shard(ckpt, shapes_root / "test", shards, 1, 3, OPTS)  # another file list
    with pytest.raises(IndexDirError, match="another file list"):
        build_from_shards(ckpt, tmp_path / "out", 3, shards, OPTS)
    with pytest.raises(IndexDirError, match="another checkpoint"):
        merge_shards(shards, 3, "0" * 64)
    with pytest.raises(ValueError, match="shard id 3"):
        embed_shard(ckpt, shapes_root, shards, 3, 3, OPTS)
    (shards / "shard-00000-of-00003.npz").write_bytes(b"not a zip")
    with pytest.raises(IndexDirError, match="not a readable embedding shard"):
        build_from_shards(ckpt, tmp_path / "out", 3, shards, OPTS)


def test_cli_shard_jobs_then_merge(tiny_run, shapes_root, single_build, tmp_path, capsys):
    ckpt, out = str(tiny_run / "checkpoint.pt"), tmp_path / "cli"
    base = ["--checkpoint", ckpt, "--out", str(out), "--index-type", "flat", "--device", "cpu", "--no-progress"]
    for i in range(2):
        assert cli.main([*base, "--images", str(shapes_root), "--shards", "2", "--shard-id", str(i)]) == 0
    assert cli.main([*base, "--merge-shards", "2"]) == 0
    assert "index: 340 entries" in capsys.readouterr().out
    np.testing.assert_allclose(_contents(out)[1], _contents(single_build)[1], atol=1e-5, rtol=0)
    assert cli.main([*base, "--images", str(shapes_root), "--shards", "2"]) == 2
    assert "--shards and --shard-id go together" in capsys.readouterr().err


def test_torchrun_embeds_on_two_processes_and_rank_zero_builds(tiny_run, shapes_root, single_build, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "torchrun"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           str(ROOT / "scripts" / "build_index.py"), "--checkpoint", str(tiny_run / "checkpoint.pt"),
           "--out", str(out), "--images", str(shapes_root), "--index-type", "flat", "--device", "cpu",
           "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "GLOO_SOCKET_IFNAME": "lo"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "embedded by 2 processes" in r.stdout and r.stdout.count("index: 340 entries") == 1
    np.testing.assert_allclose(_contents(out)[1], _contents(single_build)[1], atol=1e-5, rtol=0)
