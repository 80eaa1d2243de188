"""The duplicate finder's native copy embedding (explore/embeddings.py, ``--embedding native``): every entry
re-embedded at the checkpoint's native side, unwhitened, cached per index generation, calibrated the same
way -- checked against the encoder run by hand on the same files. Real FAISS, real images, the tiny checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance

import instdisc.explore.embeddings as embeddings_mod
from index.build import BuildOptions, add, build
from index.search import SearchIndex
from instdisc.embed import embed
from instdisc.explore import ExploreError, Explorer
from instdisc.explore.cli import explore_main, find_duplicates_main
from instdisc.explore.collection import CACHED, COMPUTED, STORED, Embedding
from instdisc.explore.embeddings import EMBEDDING, with_embedding
from instdisc.images import fit_square, load_image, nchw
from instdisc.trained import Checkpoint

RECIPE = BuildOptions(progress=False, index_type="flat", scales=(1.0, 1.5), whiten=True, precision="fp32")


@pytest.fixture(scope="module")
def recipe_index(tiny_run: Path, shapes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every shapes image at 32 and 48 px, averaged, PCA-whitened: an index whose recipe is not the native one."""
    out = tmp_path_factory.mktemp("recipe-index")
    build(tiny_run / "checkpoint.pt", out, images=shapes_root, overwrite=True, options=RECIPE)
    return out


@pytest.fixture()
def index_copy(recipe_index: Path, tmp_path: Path) -> Path:
    shutil.copytree(recipe_index, tmp_path / "idx")
    return tmp_path / "idx"


def _native(ckpt_path: Path, images: list[Image.Image]) -> np.ndarray:
    """By hand: the checkpoint's encoder at its own side on the images fitted to that side, L2-normalised."""
    ckpt = Checkpoint.load(ckpt_path)
    side = ckpt.architecture.image_size
    x = nchw(np.stack([fit_square(im.convert("RGB"), side) for im in images]))
    return F.normalize(embed(ckpt.encoder(), x, torch.device("cpu"), size=side), dim=1).numpy()


def _files(root: Path, idx: Path) -> list[Image.Image]:
    with SearchIndex.open(idx, device="cpu") as si:
        return [load_image(root / p) for p in si.paths()]


def _counting(monkeypatch) -> list[int]:
    """Count the re-embeddings (each a pass of index.build.embed_files over the collection)."""
    calls, real = [], embeddings_mod.embed_files

    def counted(embedder, root, paths, progress):
        calls.append(len(paths))
        return real(embedder, root, paths, progress)

    monkeypatch.setattr(embeddings_mod, "embed_files", counted)
    return calls


def test_native_vectors_are_the_encoder_at_its_native_side_unwhitened(index_copy: Path, tiny_run: Path,
                                                                      shapes_root: Path):
    ex = Explorer.open(index_copy, embedding="native")
    assert ex.collection.embedding == Embedding("native", [32], False, COMPUTED)
    assert ex.featuriser == "native"  # its kNN graph and calibration are cached apart from the index's
    expected = _native(tiny_run / "checkpoint.pt", _files(shapes_root, index_copy))
    assert ex.collection.vectors.shape == expected.shape == (340, 128)
    np.testing.assert_allclose(ex.collection.vectors, expected, atol=1e-5)
    stored = Explorer.open(index_copy).collection  # the default: the index's own 48 + 32 px whitened vectors
    assert EMBEDDING == "index" and stored.embedding == Embedding("index", [48, 32], True, STORED)
    assert np.abs(stored.vectors - expected).max() > 0.1  # so the two really differ


def test_cached_per_generation_and_recomputed_after_add(index_copy: Path, tiny_run: Path, shapes_root: Path,
                                                        tmp_path: Path, monkeypatch):
    calls = _counting(monkeypatch)
    first = Explorer.open(index_copy, embedding="native")
    gen = first.cache.generation
    assert calls == [340] and first.collection.embedding.source == COMPUTED
    assert len(list((index_copy / "explore" / gen).glob("native-vectors-*.npz"))) == 1
    again = Explorer.open(index_copy, embedding="native")
    assert calls == [340] and again.collection.embedding.source == CACHED  # read back, not re-embedded
    assert np.array_equal(again.collection.vectors, first.collection.vectors)

    extra = tmp_path / "extra"
    extra.mkdir()
    shutil.copy(shapes_root / "test" / "cross" / "0001.png", extra / "new.png")
    add(index_copy, extra, options=BuildOptions(progress=False))
    after = Explorer.open(index_copy, embedding="native")
    assert after.cache.generation != gen and calls == [340, 341]  # a new generation: every entry again
    assert after.collection.embedding.source == COMPUTED and len(after.collection) == 341
    row = after.collection.paths.index(next(p for p in after.collection.paths if p.endswith("new.png")))
    np.testing.assert_allclose(after.collection.vectors[row],
                               _native(tiny_run / "checkpoint.pt", [load_image(extra / "new.png")])[0], atol=1e-5)
    assert sorted(p.name for p in (index_copy / "explore").iterdir()) == [after.cache.generation]  # old one pruned


def test_an_index_whose_recipe_is_native_keeps_its_stored_vectors(shapes_index: Path, monkeypatch):
    calls = _counting(monkeypatch)
    ex = Explorer.open(shapes_index, embedding="native")
    plain = Explorer.open(shapes_index)
    assert calls == []  # nothing re-embedded
    assert ex.collection.embedding == Embedding("native", [32], False, STORED)
    assert "the index's own recipe is native" in ex.collection.embedding.describe()
    assert np.array_equal(ex.collection.vectors, plain.collection.vectors)
    assert ex.featuriser == plain.featuriser == "index"  # the same vectors share their cached results


def test_calibration_re_embeds_edited_images_the_native_way(recipe_index: Path, tiny_run: Path, shapes_root: Path):
    ex = Explorer.open(recipe_index, embedding="native")
    ckpt = tiny_run / "checkpoint.pt"
    row = 17
    original = load_image(shapes_root / ex.collection.paths[row])
    edited = ImageEnhance.Brightness(original.crop((2, 2, 30, 30))).enhance(1.15)
    by_hand = _native(ckpt, [edited])[0]
    got = ex.collection.embed([edited])[0]
    np.testing.assert_allclose(got, by_hand, atol=1e-5)
    score = float(got @ ex.collection.vectors[row])  # what calibrate.py computes for a true copy
    assert score == pytest.approx(float(by_hand @ _native(ckpt, [original])[0]), abs=1e-5)
    with SearchIndex.open(recipe_index, device="cpu") as si:  # not the index's recipe
        assert np.abs(si.embed_images([edited])[0] - got).max() > 0.1


def test_cli_records_the_embedding_and_refuses_a_bad_value(recipe_index: Path, tmp_path: Path, capsys):
    out = tmp_path / "native"
    rc = find_duplicates_main(["--index", str(recipe_index), "--out", str(out), "--embedding", "native",
                               "--samples", "20", "--similar", "off"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "native embedding: 32 px, not whitened" in printed.out and "auto threshold" in printed.out
    assert "native embedding);" in printed.out
    recorded = json.loads((out / "groups.json").read_text())["embedding"]
    assert recorded["name"] == "native" and recorded["sides"] == [32] and recorded["whitened"] is False

    rc = explore_main(["duplicates", "--index", str(recipe_index), "--out", str(tmp_path / "index"),
                       "--threshold", "0.95", "--similar", "off"])
    assert rc == 0 and "index embedding: 48 px + 32 px, averaged, whitened" in capsys.readouterr().out
    recorded = json.loads((tmp_path / "index" / "groups.json").read_text())["embedding"]
    assert recorded == {"name": "index", "sides": [48, 32], "whitened": True, "source": "stored"}

    with pytest.raises(SystemExit) as e:
        find_duplicates_main(["--index", str(recipe_index), "--out", str(out), "--embedding", "copy"])
    assert e.value.code == 2 and "invalid choice: 'copy'" in capsys.readouterr().err
    with pytest.raises(ExploreError, match="--embedding must be one of index, native, got 'copy'"):
        Explorer.open(recipe_index, embedding="copy")


def test_missing_unreadable_or_unreachable_files_stop_with_one_line(tiny_run: Path, shapes_root: Path,
                                                                    tmp_path: Path, capsys):
    folder = tmp_path / "photos"
    shutil.copytree(shapes_root / "test", folder)
    idx = tmp_path / "idx"
    build(tiny_run / "checkpoint.pt", idx, images=folder,
          options=BuildOptions(progress=False, scales=(1.0, 1.5), precision="fp32"))
    (folder / "circle" / "0003.png").write_bytes(b"not a png")
    with pytest.raises(ExploreError, match=r"1 of 100 indexed files cannot be decoded \(circle/0003.png\)"):
        Explorer.open(idx, embedding="native")
    (folder / "circle" / "0003.png").unlink()
    (folder / "square" / "0000.png").unlink()
    capsys.readouterr()
    rc = find_duplicates_main(["--index", str(idx), "--out", str(tmp_path / "r"), "--embedding", "native"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1  # before any embedding
    assert "2 of 100 indexed files are missing" in err and "circle/0003.png, square/0000.png" in err
    assert Explorer.open(idx).collection.embedding.name == "index"  # the stored vectors still serve
    folder.rename(tmp_path / "moved")
    with pytest.raises(ExploreError, match="image folder .* is not here; use --embedding index"):
        Explorer.open(idx, embedding="native")


def test_a_milvus_index_is_refused(shapes_index: Path):
    with SearchIndex.open(shapes_index, device="cpu") as si:
        from instdisc.explore import from_index

        coll = from_index(si)
    fake = SimpleNamespace(dir=Path("/srv/milvus-index"), manifest=SimpleNamespace(backend="milvus"))
    with pytest.raises(ExploreError, match="FAISS index folders only, this index is milvus-backed"):
        with_embedding(fake, coll, "native", cache=None)  # type: ignore[arg-type]
