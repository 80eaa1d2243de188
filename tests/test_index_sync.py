"""``build_index.py --sync FOLDER``: a changing folder (files added, deleted, moved, renamed, edited, touched)
kept in step with its index. Moved files must keep their vector (never re-embedded) and the result must
search exactly like a fresh build of the same folder; a kill -9 mid-sync leaves the previous generation
serving and a rerun finishes; a SearchIndex opened with ``follow=True`` (the app) sees the new generation."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import index.sync as sync_mod
from index.build import BuildOptions, build
from index.search import SearchIndex
from index.sync import plan_sync, sync
from instdisc import bundled
from reliability import faults
from reliability.corpus import ordinary_image, write_ordinary
from reliability.inputs import run_script

OPTS = BuildOptions(progress=False, index_type="flat")


@pytest.fixture(scope="module")
def encoder() -> str:
    return str(bundled.resolve("general"))


def _folder(root: Path) -> Path:
    write_ordinary(root, 24, folders=("a", "b", "c"))
    return root


def _change(f: Path) -> dict:
    """Every kind of change a photo folder sees; returns what was done."""
    (f / "d").mkdir()
    shutil.move(f / "a/img0000.png", f / "d/img0000.png")  # moved to another folder
    os.rename(f / "b/img0001.png", f / "b/holiday.png")  # renamed
    shutil.move(f / "c/img0002.png", f / "d/beach.png")  # moved and renamed
    (f / "a/img0003.png").unlink()  # deleted
    ordinary_image(1000).save(f / "b/img0004.png")  # edited in place
    ordinary_image(1001).save(f / "d/new.png")  # new
    os.utime(f / "c/img0005.png", ns=(10**18, 10**18))  # touched: same bytes, new time
    return {"moved": {"a/img0000.png": "d/img0000.png", "b/img0001.png": "b/holiday.png",
                      "c/img0002.png": "d/beach.png"}}


def _answers(idx: Path) -> list[list[tuple[str, float]]]:
    """Every entry's neighbours by path and score (ids may differ between two builds)."""
    with SearchIndex.open(idx, device="cpu") as s:
        q = np.random.default_rng(0).standard_normal((6, s.dim)).astype(np.float32)
        return [[(h.path, round(h.score, 5)) for h in row] for row in s.search_vectors(q, len(s))]


def _rows(idx: Path) -> dict[str, tuple]:
    with SearchIndex.open(idx, device="cpu") as s:
        return {r.path: (r.label, r.split, r.sha256, r.width, r.height) for r in s.rows()}


def test_sync_follows_every_change_and_equals_a_fresh_build(tmp_path: Path, encoder: str, monkeypatch):
    f = _folder(tmp_path / "photos")
    idx = tmp_path / "idx"
    first = sync(idx, f, encoder, OPTS)
    assert first.built and first.count == 24
    with SearchIndex.open(idx, device="cpu") as s:
        before = {r.path: r.id for r in s.rows()}
        vec_before = dict(zip([r.path for r in s.rows()], s.vectors(s.ids()), strict=True))
    done = _change(f)

    embedded: list[str] = []
    real = sync_mod.embed_files

    def spy(embedder, root, paths, progress):
        embedded.extend(paths)
        return real(embedder, root, paths, progress)

    monkeypatch.setattr(sync_mod, "embed_files", spy)
    monkeypatch.setattr("index.search.FOLLOW_CHECK_S", 0.0)  # look at the manifest on every call
    follower = SearchIndex.open(idx, device="cpu", follow=True)  # what the app holds
    r = sync(idx, f, None, OPTS)
    assert (r.added, r.removed, r.moved, r.changed, r.touched) == (1, 1, 3, 1, 1)
    assert r.unchanged == 24 - 3 - 1 - 1 - 1 and r.count == 24 and r.embedded == 2
    assert sorted(embedded) == ["b/img0004.png", "d/new.png"]  # the moved files were not re-embedded
    assert sorted(map(tuple, r.moved_paths)) == sorted(done["moved"].items())
    with SearchIndex.open(idx, device="cpu") as s:
        after = {row.path: row.id for row in s.rows()}
        vecs = dict(zip([row.path for row in s.rows()], s.vectors(s.ids()), strict=True))
    for old, new in done["moved"].items():
        assert after[new] == before[old]  # same id ...
        np.testing.assert_array_equal(vecs[new], vec_before[old])  # ... and the very same vector
    assert after["b/img0004.png"] != before["b/img0004.png"]  # edited: re-embedded under a new id
    assert "a/img0003.png" not in after
    report = json.loads((idx / "sync.json").read_text())
    assert report["moved"] == 3 and report["times"]["total"] > 0

    fresh = tmp_path / "fresh"
    build(encoder, fresh, f, OPTS)
    assert _answers(idx) == _answers(fresh)  # same paths, same scores
    assert _rows(idx) == _rows(fresh)  # labels follow the new folders, as a build gives them
    # the follower switched to the new generation without being reopened
    assert sorted(follower.paths()) == sorted(after)
    follower.close()

    again = sync(idx, f, None, OPTS)  # nothing changed: nothing read, nothing written
    assert not again.did_something and again.unchanged == 24


def test_plan_hashes_only_what_size_and_time_do_not_settle():
    indexed = {"a.png": (0, "h0", 10, 1), "b.png": (1, "h1", 10, 1), "c.png": (2, "h2", 10, 1),
               "old.png": (3, "h3", 10, 1)}
    found = {"a.png": (10, 1), "b.png": (10, 2), "c.png": (11, 3), "new.png": (10, 5)}
    read_calls = []

    def read(paths):
        read_calls.extend(paths)
        from index.build import FileInfo

        sha = {"b.png": "h1", "c.png": "other", "new.png": "h3"}
        return {p: FileInfo(None, sha[p]) for p in paths}

    plan = plan_sync(indexed, found, read)
    assert sorted(read_calls) == ["b.png", "c.png", "new.png"]  # a.png: size and time agree, never read
    assert plan.unchanged == 1 and plan.touched == [(1, "b.png")] and plan.changed == [(2, "c.png")]
    assert plan.moved == [(3, "old.png", "new.png")] and plan.new == [] and plan.removed == []


def test_sync_command_line_then_a_kill_during_the_commit_then_rerun(tmp_path: Path, encoder: str):
    f = _folder(tmp_path / "photos")
    base = tmp_path / "base"
    r = run_script(["scripts/build_index.py", "--sync", str(f), "--out", str(base), "--index-type", "flat",
                    "--no-progress"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "built" in r.stdout
    _change(f)
    before = faults.snapshot(base)
    ref = faults.copy_index(base, tmp_path / "ref")
    r = run_script(["scripts/build_index.py", "--sync", str(f), "--out", str(ref), "--no-progress"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "3 moved or renamed (not re-embedded)" in r.stdout, r.stdout
    after = faults.snapshot(ref)
    assert not faults.same_state(before, after)
    # the commit point by default; the metadata write too with INSTDISC_SLOW_TESTS=1 (the full matrix)
    targets = ("meta-*.sqlite", "manifest.json") if os.environ.get("INSTDISC_SLOW_TESTS") == "1" else ("manifest.json",)
    for target in targets:
        d = faults.copy_index(base, tmp_path / f"killed-{target[:4]}")
        out = faults.kill_index_write(["--sync", str(f), "--out", str(d)], d, target, "mid", before, after, "sync")
        assert out["killed"], out
        assert out["reader_saw_expected_state"], out  # the previous generation still served
        assert out["rerun_returncode"] == 0 and out["final_equals_uninterrupted"], out  # the rerun finished
        assert out["leftovers_after_rerun"] == [], out


def test_sync_of_a_folder_with_an_unreadable_file_lists_it(tmp_path: Path, encoder: str):
    f = _folder(tmp_path / "photos")
    idx = tmp_path / "idx"
    sync(idx, f, encoder, OPTS)
    (f / "a/broken.jpg").write_bytes(b"not a photo")
    r = sync(idx, f, None, OPTS)
    assert [p for p, _ in r.unreadable] == ["a/broken.jpg"] and r.count == 24
    ingest = json.loads((idx / "ingest.json").read_text())["splits"]["images"]
    assert [p for p, _ in ingest["skipped"]] == ["a/broken.jpg"]
    assert "not a recognised image format" in ingest["skipped"][0][1]
