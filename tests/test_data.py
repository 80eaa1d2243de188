"""Data loading: stable indices, labels, archives, and unreadable files."""

import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instdisc.data import DataError, infer_labels, load_folder, load_splits, scan


def _write_images(root: Path, names: list[str], size=(40, 30)) -> None:
    rng = np.random.default_rng(0)
    for n in names:
        p = root / n
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(p)


def test_indices_are_sorted_relative_paths_and_labels_from_folders(tmp_path):
    _write_images(tmp_path, ["b/2.png", "a/10.png", "a/1.png", "b/sub/3.jpg"])
    coll = load_folder(tmp_path, 16, progress=False)
    assert coll.paths == ["a/1.png", "a/10.png", "b/2.png", "b/sub/3.jpg"]
    assert coll.classes == ["a", "b"] and coll.labels.tolist() == [0, 0, 1, 1]
    assert coll.images.shape == (4, 3, 16, 16) and coll.images.dtype.is_floating_point is False
    assert scan(tmp_path) == coll.paths


def test_unlabelled_nested_and_flat_folders(tmp_path):
    _write_images(tmp_path, ["x.png", "deep/y.png"])
    coll = load_folder(tmp_path, 8, progress=False)
    assert coll.classes == [] and coll.labels.tolist() == [-1, -1] and not coll.has_labels
    with pytest.raises(DataError, match="class folders"):
        infer_labels(coll.paths, "folders")
    assert infer_labels(["a/1.png", "b/2.png"], "none")[1] == []


def test_corrupt_files_are_skipped_with_a_listing_or_refused_when_strict(tmp_path):
    _write_images(tmp_path, ["cls/good1.png", "cls/good2.png", "other/good3.png"])
    (tmp_path / "cls" / "empty.jpg").write_bytes(b"")
    (tmp_path / "cls" / "text.jpg").write_text("not an image")
    good = (tmp_path / "cls" / "good1.png").read_bytes()
    (tmp_path / "other" / "truncated.png").write_bytes(good[: len(good) // 2])
    with pytest.warns(UserWarning, match="skipped 3 unreadable") as rec:
        coll = load_folder(tmp_path, 8, progress=False, use_cache=False)
    message = str(rec[0].message)
    assert "cls/empty.jpg" in message and "cls/text.jpg" in message and "other/truncated.png" in message
    assert coll.paths == ["cls/good1.png", "cls/good2.png", "other/good3.png"]
    assert {p for p, _ in coll.skipped} == {"cls/empty.jpg", "cls/text.jpg", "other/truncated.png"}
    with pytest.raises(DataError, match="3 unreadable"):
        load_folder(tmp_path, 8, strict=True, progress=False, use_cache=False)


def test_tar_archive_with_splits_and_decode_cache(tmp_path):
    src = tmp_path / "src"
    _write_images(src, ["ds/train/cat/1.png", "ds/train/dog/1.png", "ds/train/dog/2.png",
                        "ds/test/cat/9.png", "ds/test/dog/9.png"])
    arc = tmp_path / "ds.tar.gz"
    with tarfile.open(arc, "w:gz") as t:
        t.add(src / "ds", arcname="ds")
    train, ev = load_splits(arc, 8, progress=False)
    assert train.paths == ["cat/1.png", "dog/1.png", "dog/2.png"]
    assert ev is not None and ev.paths == ["cat/9.png", "dog/9.png"] and ev.labels.tolist() == [0, 1]
    assert Path(train.root, train.paths[0]).is_file()  # extracted: every row maps to a real file
    with _no_decoding():  # the second load must come from the decode cache: decoding again fails the test
        again, ev2 = load_splits(arc, 8, progress=False)
    assert np.array_equal(again.images.numpy(), train.images.numpy()) and again.paths == train.paths
    assert np.array_equal(ev2.images.numpy(), ev.images.numpy())


class _no_decoding:
    """Within the block any call of ``instdisc.data.decode_all`` is an error."""

    def __enter__(self):
        import instdisc.data as data

        self._data, self._orig = data, data.decode_all

        def refuse(*a, **k):
            raise AssertionError("decoded again instead of reading the decode cache")

        data.decode_all = refuse

    def __exit__(self, *exc):
        self._data.decode_all = self._orig
        return False


def test_decode_cache_is_hit_and_invalidated_when_a_file_changes(tmp_path, monkeypatch):
    import instdisc.data as data

    monkeypatch.setenv("INSTDISC_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "imgs"
    _write_images(root, ["a/1.png", "a/2.png", "b/3.png"])
    calls = []
    real = data.decode_all
    monkeypatch.setattr(data, "decode_all", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    first = load_folder(root, 8, progress=False)
    assert len(calls) == 1 and len(list((tmp_path / "cache" / "decoded").glob("*.npy"))) == 1
    assert np.array_equal(load_folder(root, 8, progress=False).images.numpy(), first.images.numpy())
    assert len(calls) == 1  # hit: nothing decoded

    Image.new("RGB", (40, 30), (255, 0, 0)).save(root / "a" / "2.png")  # the same name, new pixels
    changed = load_folder(root, 8, progress=False)
    assert len(calls) == 2  # the file's size/mtime changed: decoded again, not the stale pixels
    assert changed.images[1].float().mean(dim=(1, 2)).tolist() == [255.0, 0.0, 0.0]
    assert np.array_equal(changed.images[[0, 2]].numpy(), first.images[[0, 2]].numpy())

    _write_images(root, ["b/4.png"])  # a new file: a new list, a new key
    assert load_folder(root, 8, progress=False).paths == ["a/1.png", "a/2.png", "b/3.png", "b/4.png"]
    assert len(calls) == 3
    assert load_folder(root, 16, progress=False).images.shape[-1] == 16 and len(calls) == 4  # another size

    for npy in (tmp_path / "cache" / "decoded").glob("*.npy"):  # a damaged cache is re-decoded, not trusted
        npy.write_bytes(b"garbage")
    again = load_folder(root, 16, progress=False)
    assert len(calls) == 5 and again.images.shape == (4, 3, 16, 16)


def test_missing_and_wrong_sources_give_clear_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_splits(tmp_path / "nope", 8)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="expected a folder"):
        load_splits(tmp_path / "notes.txt", 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        load_splits(tmp_path / "empty", 8)
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"garbage" * 100)
    with pytest.raises(DataError, match="cannot extract"):
        load_splits(bad, 8)


def test_eval_split_reuses_training_class_ids(tmp_path):
    _write_images(tmp_path, ["train/a/1.png", "train/b/1.png", "train/c/1.png", "test/b/1.png", "test/c/1.png"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train, ev = load_splits(tmp_path, 8, progress=False)
    assert ev.classes == train.classes and ev.labels.tolist() == [1, 2]
