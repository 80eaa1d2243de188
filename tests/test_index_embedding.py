"""An index's own embedding (index/embedding.py): several whole-image sides averaged, and a PCA whitening
fitted on the gallery, kept with the index and applied to every vector it sees (build, --add, queries,
the evaluation). Real FAISS, real SQLite, the tiny trained checkpoint."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from index.build import BuildOptions, add, build
from index.cli import main as build_index_main
from index.embedding import WHITENING_KEY, IndexEmbedder, sides_for
from index.errors import IndexDirError
from index.search import SearchIndex
from instdisc.data import load_folder
from instdisc.embed import embed
from instdisc.trained import Checkpoint
from instdisc.whitening import Whitening, fit_whitening


@pytest.fixture(scope="module")
def whitened_index(tiny_run: Path, shapes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("whitened-index")
    build(tiny_run / "checkpoint.pt", out, images=shapes_root, overwrite=True,
          options=BuildOptions(progress=False, index_type="flat", scales=(1.0, 1.5), whiten=True, precision="fp32"))
    return out


def test_sides_for_scales():
    assert sides_for(32, (1.0, 1.5)) == (48, 32)
    assert sides_for(32, (1.5, 1.0, 1.0)) == (48, 32)  # distinct, largest first
    assert sides_for(48, (0.6667, 1.0)) == (48, 32)
    with pytest.raises(ValueError, match="under 8 px"):
        sides_for(32, (0.2,))
    with pytest.raises(ValueError, match="at least one"):
        sides_for(32, ())


def test_multi_scale_whitened_vectors_are_what_the_index_stores(whitened_index: Path, tiny_run: Path,
                                                                shapes_root: Path):
    """The stored vectors are the encoder's unit vectors at 32 and 48 px, summed, normalised, then whitened by a
    fit on exactly those gallery vectors; a query image finds itself first with score ~1."""
    ckpt = Checkpoint.load(tiny_run / "checkpoint.pt")
    with SearchIndex.open(whitened_index, device="cpu") as idx:
        m = idx.manifest
        assert m.sides == (48, 32) and m.embedding.sides == [48, 32]
        assert idx.image_size == 48  # queries decoded at the largest side
        assert m.embedding.whitening_sha256 and m.embedding.whitening_fitted_on == len(idx) == 340
        paths = idx.paths()
        imgs = torch.cat([load_folder(shapes_root / s, 48, progress=False).images for s in ("test", "train")])
        assert paths == sorted(paths) and paths[0].startswith("test/")  # the index's order: sorted paths
        enc = ckpt.encoder()
        raw = F.normalize(embed(enc, imgs, size=32) + embed(enc, imgs, size=48), dim=1)
        w = fit_whitening(raw)
        expected = F.normalize(w.apply(raw), dim=1).numpy()
        stored = idx.vectors(idx.ids())
        assert np.abs(stored - expected).max() < 2e-3
        # not a no-op: whitening moved the vectors away from the plain multi-scale ones
        assert np.abs(stored - raw.numpy()).max() > 0.1
        from instdisc.web.collection import CollectionFacts

        assert "48 + 32px input, whitened" in CollectionFacts(idx).info_markdown()  # the app's info panel
        files = [shapes_root / p for p in paths[::70]]
        for f, hits in zip(files, idx.search_images(files, 3), strict=True):
            assert hits[0].path == f.relative_to(shapes_root).as_posix()
            assert hits[0].score > 0.98  # queries embed in bf16 where the chip has it


def test_add_embeds_with_the_stored_whitening(whitened_index: Path, shapes_root: Path, tmp_path: Path):
    idx_dir = tmp_path / "idx"
    shutil.copytree(whitened_index, idx_dir)
    with SearchIndex.open(idx_dir, device="cpu") as idx:
        w_before = idx.embedder.whitening
        test_file = sorted((shapes_root / "test").rglob("*.png"))[0]  # already indexed under test/
        expected = idx.embed_images([test_file])[0]
    extra = tmp_path / "extra"
    extra.mkdir()
    shutil.copy(test_file, extra / "new.png")
    m = add(idx_dir, extra, options=BuildOptions(progress=False))
    assert m.embedding.whitening_sha256  # unchanged record after the update
    with SearchIndex.open(idx_dir, device="cpu") as idx:
        assert len(idx) == 341
        assert torch.equal(idx.embedder.whitening.proj, w_before.proj)  # kept, not refitted
        new_id = max(idx.ids())
        v = idx.vectors([new_id])[0]
        assert float(v @ expected) > 0.999
        assert idx.search_images([test_file], 2)[0][1].score > 0.99  # the copy and the original, both first


def test_a_tampered_whitening_is_refused(whitened_index: Path, tmp_path: Path):
    idx_dir = tmp_path / "idx"
    shutil.copytree(whitened_index, idx_dir)
    m = json.loads((idx_dir / "manifest.json").read_text())
    db = idx_dir / m["files"]["db"]
    with sqlite3.connect(db) as con:
        text = con.execute("SELECT value FROM info WHERE key = ?", (WHITENING_KEY,)).fetchone()[0]
        w = Whitening.from_json(text)
        tampered = Whitening(w.mean + 0.01, w.proj, w.eigenvalues).to_json()
        con.execute("UPDATE info SET value = ? WHERE key = ?", (tampered, WHITENING_KEY))
    m["files"]["db_bytes"] = db.stat().st_size
    (idx_dir / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexDirError, match="does not match the manifest's hash"):
        SearchIndex.open(idx_dir, device="cpu")


def test_other_sides_than_the_bank_re_embed_the_training_folder(tiny_run: Path, shapes_root: Path, tmp_path: Path):
    m = build(tiny_run / "checkpoint.pt", tmp_path / "idx", options=BuildOptions(progress=False, scales=(1.0, 1.5)))
    assert m.source == "embedded" and m.sides == (48, 32) and m.count == 240
    assert Path(m.root) == (shapes_root / "train").resolve()
    # whitening alone is fitted on the bank rows (240 here: too few for 128 axes)
    with pytest.raises(ValueError, match="at least 256 images, this one has 240"):
        build(tiny_run / "checkpoint.pt", tmp_path / "idx2", options=BuildOptions(progress=False, whiten=True))


@pytest.fixture(scope="module")
def recipe_run(shapes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint whose recipe embeds at 1x and 1.5x, whitened (the photo preset's), trained on a copy
    of the shapes folder (``<run>/../data``)."""
    from instdisc.config import preset
    from instdisc.data import load_splits
    from instdisc.train import Trainer

    base = tmp_path_factory.mktemp("recipe")
    shutil.copytree(shapes_root, base / "data")
    cfg = preset("tiny", epochs=1, batch_size=32, precision="fp32", index_scales=(1.0, 1.5), index_whiten=True)
    train, ev = load_splits(base / "data", cfg.image_size, progress=False)
    Trainer(cfg, train, ev, base / "run", device="cpu", progress=False).fit()
    return base / "run"


def test_the_recipe_needs_the_training_folder_or_images(recipe_run: Path, shapes_root: Path, tmp_path: Path):
    """Trained on a folder since moved away: the build says to pass --images; with --images it builds at the
    recipe's sides, whitened by the recipe; too small a gallery skips the recipe's whitening with a warning."""
    data = recipe_run.parent / "data"
    data.rename(recipe_run.parent / "moved")
    try:
        with pytest.raises(ValueError, match="pass --images"):
            build(recipe_run / "checkpoint.pt", tmp_path / "idx", options=BuildOptions(progress=False))
    finally:
        (recipe_run.parent / "moved").rename(data)
    m = build(recipe_run / "checkpoint.pt", tmp_path / "idx", images=shapes_root,
              options=BuildOptions(progress=False))
    assert m.sides == (48, 32) and m.embedding.whitening_fitted_on == 340
    with pytest.warns(UserWarning, match="not whitened although the checkpoint's recipe asks for it"):
        m = build(recipe_run / "checkpoint.pt", tmp_path / "idx3", images=shapes_root / "test",
                  options=BuildOptions(progress=False))
    assert not m.embedding.whitening_sha256 and m.sides == (48, 32)


def test_explore_embeds_a_collection_as_its_index_would(recipe_run: Path, shapes_root: Path, tmp_path: Path):
    """explore's featuriser for a checkpoint (the planted-duplicate evaluation) follows the index recipe."""
    from instdisc.explore.featurisers import recipe_embedder
    from instdisc.images import load_image

    m = build(recipe_run / "checkpoint.pt", tmp_path / "idx", images=shapes_root,
              options=BuildOptions(progress=False, precision="fp32"))
    with SearchIndex.open(tmp_path / "idx", device="cpu") as idx:
        paths, stored = idx.paths(), idx.vectors(idx.ids())
    feat = recipe_embedder(Checkpoint.load(recipe_run / "checkpoint.pt"), [load_image(shapes_root / p) for p in paths])
    v = feat([load_image(shapes_root / p) for p in paths[:20]])
    assert m.embedding.whitening_sha256 and v.shape == (20, 128)
    assert np.abs(v - stored[:20]).max() < 2e-3


def test_whitening_refuses_a_gallery_too_small_to_fit(tiny_run: Path, shapes_root: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="at least 256 images, this one has 100"):
        build(tiny_run / "checkpoint.pt", tmp_path / "idx", images=shapes_root / "test",
              options=BuildOptions(progress=False, whiten=True))
    assert not (tmp_path / "idx" / "manifest.json").exists()


def test_cli_refuses_changing_the_embedding_on_add(whitened_index: Path, shapes_root: Path, capsys):
    rc = build_index_main(["--out", str(whitened_index), "--add", str(shapes_root / "test"), "--whiten"])
    assert rc == 2
    assert "fixed when an index is built" in capsys.readouterr().err


def test_cli_summary_names_the_embedding(tiny_run: Path, shapes_root: Path, tmp_path: Path, capsys):
    rc = build_index_main(["--checkpoint", str(tiny_run / "checkpoint.pt"), "--out", str(tmp_path / "i"),
                           "--images", str(shapes_root), "--scales", "1", "1.5", "--whiten",
                           "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "whole images at 48 px + 32 px, averaged, PCA-whitened (fitted on 340 vectors)" in out


def test_embedder_placed_elsewhere_gives_the_same_vectors(whitened_index: Path, shapes_root: Path):
    with SearchIndex.open(whitened_index, device="cpu") as idx:
        imgs = load_folder(shapes_root / "test", idx.image_size, progress=False).images[:8]
        a = idx.embedder(imgs)
        b = idx.embedder.placed(torch.device("cpu"), idx.embedder.bf16, batch_size=3)(imgs)
        assert isinstance(idx.embedder, IndexEmbedder)
        assert np.abs(a - b).max() < 1e-5


def test_whitening_json_round_trip():
    x = F.normalize(torch.randn(50, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    w = fit_whitening(x, dims=6)
    back = Whitening.from_json(w.to_json())
    assert torch.equal(back.proj, w.proj) and torch.equal(back.mean, w.mean)
    assert Whitening.digest(w.to_json()) == Whitening.digest(back.to_json())
    with pytest.raises(ValueError, match="malformed"):
        Whitening.from_json("{}")


def test_the_recipe_is_a_training_flag_and_survives_the_checkpoint_round_trip():
    import argparse

    from instdisc.cli import add_config_flags, config_from_args
    from instdisc.config import TrainConfig, preset

    p = argparse.ArgumentParser()
    add_config_flags(p)
    cfg = config_from_args(p.parse_args(["--index-scales", "1", "1.25", "--no-index-whiten"]), "cpu-photos-fast")
    assert cfg.index_scales == (1.0, 1.25) and cfg.index_whiten is False
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    photos = preset("cpu-photos-fast")
    assert photos.index_scales == (1.0, 1.5) and photos.index_whiten
    cifar = preset("cpu-cifar-fast")
    assert cifar.index_scales == (1.0, 1.5) and not cifar.index_whiten and cifar.embed_scale == 1.0
