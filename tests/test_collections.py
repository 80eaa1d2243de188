"""A user's own folder: resolution from the data, one aspect rule, the memory-mapped cache and its
RAM cap, and odd collections (formats, duplicates, symlinks, unreadable files) in the ingest report."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from instdisc.cli import add_config_flags, resolve_training
from instdisc.conventions import labels_and_splits, split_dirs, unwrap
from instdisc.data import load_folder
from instdisc.embed import embed
from instdisc.imagecache import StoredImages, parse_bytes
from instdisc.images import fit_square, load_image
from instdisc.ingest import REPORT_NAME
from instdisc.model import Encoder
from instdisc.resolution import SizeSample, choose_resolution, sample_sizes
from instdisc.scan import BROKEN, LOOP, OUTSIDE, scan_folder


def _save(path: Path, img: Image.Image, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def _noise(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


# ---------------------------------------------------------------- resolution


@pytest.mark.parametrize(("side", "size", "stem", "store"), [
    (32, 32, True, 32),  # CIFAR-like thumbnails: the originals have nothing above 32 px
    (40, 32, True, 40),  # <= 40 px still thumbnails, stored at 40 (1.25 x 32)
    (64, 64, False, 64),  # small photos (the tinyimagenet stand-in): ImageNet stem, no upsampled cache
    (100, 64, False, 80),  # stored at 1.25 x 64 for the random crops
    (3000, 96, False, 120),  # phone photos
])
def test_resolution_follows_the_sampled_sizes(tmp_path, side, size, stem, store):
    paths = [f"c{i % 3}/{i}.png" for i in range(12)]
    for i, p in enumerate(paths):
        w = side + (i % 4) * 7  # landscape and portrait mixed: only the short side counts
        _save(tmp_path / p, Image.new("RGB", (w, side) if i % 2 else (side, w)))
    sample = sample_sizes(tmp_path, paths)
    assert sample.short_median == side and sample.probed == 12
    res = choose_resolution(sample)
    assert (res.image_size, res.cifar_stem, res.store_size) == (size, stem, store)
    assert f"median short side {side} px" in res.reason
    assert res.preset(gpu=False) == ("cpu-cifar-fast" if stem else "cpu-photos-fast")


def test_resolution_overrides_and_unreadable_samples():
    sample = SizeSample(10, 2, 500, 300, 800)
    assert choose_resolution(sample, image_size=48).cifar_stem is False  # above 40 px: the ImageNet stem
    assert choose_resolution(sample, image_size=48).store_size == 60
    assert "--image-size 48" in choose_resolution(sample, image_size=48).reason
    with pytest.raises(ValueError, match="has a readable image header"):
        choose_resolution(SizeSample(5, 5, 0, 0, 0))


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default=None)
    add_config_flags(p)
    return p.parse_args(list(argv))


def test_training_configuration_from_sizes_preset_or_flags():
    photos = SizeSample(20, 0, 150, 120, 400)
    name, cfg, res = resolve_training(_args(), photos, gpu=False)
    assert name == "cpu-photos-fast" and (cfg.image_size, cfg.cifar_stem, cfg.width) == (96, False, 32)
    assert res.store_size == 120
    name, cfg, _ = resolve_training(_args("--image-size", "64"), photos, gpu=False)
    assert (cfg.image_size, cfg.cifar_stem) == (64, False)
    name, cfg, res = resolve_training(_args("--preset", "cpu-cifar"), photos, gpu=False)
    assert (name, cfg.image_size, cfg.cifar_stem, res.store_size) == ("cpu-cifar", 32, True, 40)
    name, cfg, _ = resolve_training(_args("--no-cifar-stem"), SizeSample(20, 0, 32, 32, 32), gpu=True)
    assert (name, cfg.image_size, cfg.cifar_stem) == ("paper-cifar", 32, False)  # the flag wins


# ---------------------------------------------------------------- one aspect rule


def test_fit_square_crops_the_centre_and_never_squashes():
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, :20] = (255, 0, 0)
    wide[:, 20:40] = (0, 255, 0)
    wide[:, 40:] = (0, 0, 255)
    sq = fit_square(Image.fromarray(wide), 10)
    assert sq.shape == (10, 10, 3)
    # only the centre third survives (squashing would put red and blue thirds at the sides); the
    # edge columns carry a little bicubic ringing from the neighbours cut away
    assert np.abs(sq[:, 1:-1].astype(int) - (0, 255, 0)).max() <= 2 and sq[..., 1].min() > 220
    tall = fit_square(Image.fromarray(wide.transpose(1, 0, 2).copy()), 10)
    assert np.abs(tall[1:-1].astype(int) - (0, 255, 0)).max() <= 2 and tall[..., 1].min() > 220


def test_stored_above_the_training_size_embeds_like_the_index(tmp_path):
    """Training stores 40 px squares for its crops; embedding them equals embedding 32 px decodes."""
    for i in range(6):
        _save(tmp_path / f"{i}.jpg", _noise(90, 60, i).resize((180, 120), Image.Resampling.BILINEAR), quality=95)
    stored = load_folder(tmp_path, 32, store_size=40, progress=False)
    plain = load_folder(tmp_path, 32, progress=False)
    assert isinstance(stored.images, StoredImages) and stored.image_size == 40 and stored.eval_size == 32
    assert stored.meta()["image_size"] == 32 and not isinstance(plain.images, StoredImages)
    assert isinstance(stored.images[2:4], StoredImages) and not isinstance(stored.images[torch.tensor([1])],
                                                                           StoredImages)
    torch.manual_seed(0)
    enc = Encoder(width=8, cifar_stem=True).eval()
    a, b = embed(enc, stored.images), embed(enc, plain.images)
    cos = (a * b).sum(1)
    assert a.shape == b.shape == (6, 128) and float(cos.min()) > 0.995, cos
    sub = stored.subset([1, 3])
    assert sub.eval_size == 32 and torch.allclose(embed(enc, sub.images), a[[1, 3]], atol=1e-5)
    # embedding above the stored side (embed_scale) and back: the same pixels, re-marked, never copied
    up = stored.at_eval_size(48)
    assert up.eval_size == 48 and up.image_size == 40 and up.images.data_ptr() == stored.images.data_ptr()
    assert embed(enc, up.images).shape == (6, 128) and not torch.allclose(embed(enc, up.images), a, atol=1e-3)
    back = up.at_eval_size(40)
    assert not isinstance(back.images, StoredImages) and back.eval_size == 40  # nothing left to resize
    assert stored.at_eval_size(32) is stored


# ---------------------------------------------------------------- the memory-mapped cache


def test_cache_is_memory_mapped_and_a_skipped_file_shrinks_it_in_place(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTDISC_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "imgs"
    for i in range(5):
        _save(root / f"{i}.png", _noise(30, 20, i))
    (root / "2.png").write_bytes(b"broken")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        mapped = load_folder(root, 16, progress=False)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        in_ram = load_folder(root, 16, progress=False, use_cache=False)
    npy = Path(mapped.report.cache)
    assert mapped.paths == in_ram.paths == ["0.png", "1.png", "3.png", "4.png"]
    assert np.load(npy, mmap_mode="r").shape == (4, 16, 16, 3)  # the header was rewritten for 4 rows
    assert npy.stat().st_size == mapped.report.cache_bytes == 128 + 4 * 16 * 16 * 3
    assert torch.equal(mapped.images, in_ram.images)
    assert mapped.images.untyped_storage().nbytes() == 4 * 16 * 16 * 3  # a view over the map, no copy


def test_parse_bytes():
    assert parse_bytes("2G") == 2 << 30 and parse_bytes("512M") == 512 << 20 and parse_bytes("1000") == 1000
    assert parse_bytes("1.5k") == 1536
    with pytest.raises(ValueError, match="examples"):
        parse_bytes("lots")


# ---------------------------------------------------------------- conventions


def test_conventions_shared_by_training_and_index(tmp_path):
    for p in ("wrap/train/a/1.png", "wrap/train/b/2.png", "wrap/test/a/3.png"):
        _save(tmp_path / p, _noise(8, 8))
    assert unwrap(tmp_path) == tmp_path / "wrap"
    assert split_dirs(tmp_path) == (tmp_path / "wrap" / "train", tmp_path / "wrap" / "test")
    (tmp_path / "solo" / "train" / "x").mkdir(parents=True)
    assert unwrap(tmp_path / "solo") == tmp_path / "solo"  # never descends into a split folder
    assert labels_and_splits(["train/a/1.png", "test/b/2.png"]) == (["a", "b"], ["train", "test"])
    assert labels_and_splits(["a/1.png", "a/2.png"]) == ([None, None], [None, None])


# ---------------------------------------------------------------- odd collections


def _odd_folder(root: Path, outside: Path) -> dict[str, str]:
    """Every kind of file a real folder holds; returns {kind: relative path}."""
    k: dict[str, str] = {}

    def put(kind: str, rel: str, img: Image.Image, **kw) -> None:
        _save(root / rel, img, **kw)
        k[kind] = rel

    put("jpeg", "2023/trip/beach.jpg", _noise(64, 48, 1), quality=90)
    put("png", "2023/a.png", _noise(50, 70, 2))
    put("webp", "misc/deep/er/w.webp", _noise(40, 40, 3))
    put("bmp", "b.bmp", _noise(33, 21, 4))
    put("tiff", "scans/t.tif", _noise(45, 45, 5))
    frames = [Image.new("RGB", (30, 30), (255, 0, 0)), Image.new("RGB", (30, 30), (0, 0, 255))]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    k["gif"] = "anim.gif"
    put("png16", "scans/deep16.png", Image.fromarray(np.full((20, 20), 65535, np.uint16)))
    put("tiff16", "scans/deep16.tif", Image.fromarray(np.full((20, 20), 32768, np.uint16)))
    put("cmyk", "print/cmyk.jpg", Image.new("CMYK", (30, 30), (0, 255, 255, 0)), quality=95)
    put("gray", "g.png", Image.new("L", (25, 25), 128))
    pal = Image.new("P", (20, 20), 0)
    pal.putpalette([0, 255, 0] + [0] * 765)
    pal.info["transparency"] = 1
    put("palette", "p.png", pal)
    put("rgba", "rgba.png", Image.new("RGBA", (20, 20), (0, 0, 0, 0)))  # transparent: flattened on white
    shutil.copy(root / k["png"], root / "copy-of-a.png")
    k["duplicate"] = "copy-of-a.png"
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.jpg").write_text("not an image")
    good = (root / k["png"]).read_bytes()
    (root / "cut.png").write_bytes(good[: len(good) // 2])
    os.symlink(root / k["jpeg"], root / "link-to-beach.jpg")  # inside: followed (and a duplicate)
    os.symlink(root / "2023", root / "misc" / "loop")  # a second way into 2023/: not walked twice
    os.symlink(root, root / "2023" / "trip" / "up")  # a loop back to the root
    _save(outside / "secret.png", _noise(10, 10, 9))
    os.symlink(outside / "secret.png", root / "outside.png")  # outside the root: not followed
    os.symlink(root / "gone.png", root / "dangling.png")
    return k


def test_odd_collection_is_ingested_as_readme_says(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTDISC_CACHE", str(tmp_path / "cache"))
    root, outside = tmp_path / "photos", tmp_path / "elsewhere"
    kinds = _odd_folder(root, outside)
    found = scan_folder(root)
    refused = dict(found.refused)
    assert refused["outside.png"].startswith(OUTSIDE) and refused["dangling.png"] == BROKEN
    assert refused["misc/loop"] == LOOP and refused["2023/trip/up"] == LOOP
    with pytest.warns(UserWarning, match="skipped 3 unreadable"):
        coll = load_folder(root, 16, progress=False)
    assert set(kinds.values()) | {"link-to-beach.jpg"} == set(coll.paths)
    assert {p for p, _ in coll.skipped} == {"empty.jpg", "notes.jpg", "cut.png"}
    assert coll.classes == []  # nested folders without class structure: unlabelled
    px = {kind: coll.images[coll.paths.index(rel)].float().mean(dim=(1, 2)).tolist() for kind, rel in kinds.items()}
    assert px["gif"] == [255.0, 0.0, 0.0]  # the first frame
    assert px["png16"] == [255.0] * 3 and abs(px["tiff16"][0] - 127.5) < 1.5  # 16-bit scaled, not clipped
    assert px["cmyk"][0] > 200 and px["cmyk"][1] < 60  # CMYK (0, 255, 255, 0) is red
    assert px["gray"] == [128.0] * 3 and px["palette"] == [0.0, 255.0, 0.0] and px["rgba"] == [255.0] * 3
    r = coll.report
    assert (r.found, r.decoded) == (len(coll.paths) + 3, len(coll.paths))
    assert r.facts.formats == {"BMP": 1, "GIF": 1, "JPEG": 3, "PNG": 6, "TIFF": 2, "WEBP": 1}
    assert r.facts.modes["CMYK"] == 1 and r.facts.modes["I;16"] == 2 and r.facts.animated == 1
    assert r.facts.duplicates == [["2023/a.png", "copy-of-a.png"], ["2023/trip/beach.jpg", "link-to-beach.jpg"]]
    text = r.summary()
    assert "3 unreadable, skipped" in text and "4 links not followed" in text and "2 groups of identical" in text
    assert load_image(root / kinds["cmyk"]).mode == "RGB"


def test_train_script_and_index_build_write_the_ingest_report(tmp_path, monkeypatch, tiny_run, capsys):
    monkeypatch.setenv("INSTDISC_CACHE", str(tmp_path / "cache"))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import train as train_script

    from index.build import BuildOptions, build, read_ingest_report

    root = tmp_path / "photos"
    _odd_folder(root, tmp_path / "elsewhere")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        rc = train_script.main(["--data", str(root), "--out", str(tmp_path / "run"), "--preset", "tiny",
                                "--epochs", "1", "--batch-size", "8", "--no-progress", "--device", "cpu"])
        assert rc == 0
        out = capsys.readouterr().out
        assert "resolution 32 px" in out and "--preset tiny" in out and "3 unreadable, skipped" in out
        report = json.loads((tmp_path / "run" / REPORT_NAME).read_text())
        assert report["resolution"]["image_size"] == 32 and report["splits"]["train"]["decoded"] == 14
        assert len(report["splits"]["train"]["refused"]) == 4
        build(tiny_run / "checkpoint.pt", tmp_path / "index", images=root, options=BuildOptions(progress=False))
    got = read_ingest_report(tmp_path / "index")
    assert got is not None and got.decoded == 14 and got.found == 17 and len(got.refused) == 4
    assert {p for p, _ in got.skipped} == {"empty.jpg", "notes.jpg", "cut.png"}
    assert got.facts.duplicates == [["2023/a.png", "copy-of-a.png"], ["2023/trip/beach.jpg", "link-to-beach.jpg"]]
