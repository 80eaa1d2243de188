"""The bundled encoders: export (encoder only, size limit, card with SHA-256), verification against the
card, the choice of encoder by the folder's image sizes, `build_index.py --images` without --checkpoint,
and fine-tuning with `train.py --init`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from instdisc import bundled
from instdisc.checkpoint import CheckpointError
from instdisc.config import preset
from instdisc.data import load_splits
from instdisc.embed import embed
from instdisc.resolution import THUMBNAIL_MAX_SIDE, SizeSample
from instdisc.train import Trainer
from instdisc.trained import Checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("general")
    bundled.export(tiny_run / "checkpoint.pt", out, "python scripts/train.py --data shapes", "shapes", "now")
    return out


def test_export_keeps_the_encoder_and_nothing_else(exported: Path, tiny_run: Path, shapes_root: Path) -> None:
    card = bundled.ModelCard.read(exported / "card.json")
    path = bundled.verified(exported / "card.json")
    assert path == exported / "encoder.pt" and card.bytes == path.stat().st_size
    full, small = Checkpoint.load(tiny_run), Checkpoint.load(path)
    assert card.training_images == len(full.files.paths) == 240 and small.files.paths == []
    assert set(small.state["model"]) == {k for k in full.state["model"] if k.startswith("encoder.")}
    assert "optimizer" not in small.state and small.config == full.config
    assert path.stat().st_size < (tiny_run / "checkpoint.pt").stat().st_size
    train, _ = load_splits(shapes_root, 32, progress=False)
    imgs = train.images[:8]
    a = embed(full.encoder(), imgs, torch.device("cpu"), False, 8, progress=False)
    b = embed(small.encoder(), imgs, torch.device("cpu"), False, 8, progress=False)
    assert torch.equal(a, b)  # the same vectors from the stripped file
    with pytest.raises(CheckpointError, match="encoder only, no memory bank"):
        small.bank()
    # the run's training log ships beside it, summarised on the card from the log itself
    log = (tiny_run / "metrics.jsonl").read_text()
    assert (exported / bundled.TRAINING_LOG).read_text() == log
    rows = [json.loads(line) for line in log.splitlines()]
    training = card.metrics["training"]
    assert training["log"] == bundled.TRAINING_LOG and training["epochs"] == full.config.epochs == 2
    assert training["last_monitor"]["knn_top1"] == rows[-1]["knn_top1"]
    assert training["wall_minutes"] == round(max(r["wall"] for r in rows) / 60, 1)


@pytest.fixture(scope="module")
def two_encoders(exported: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder with a thumbnail encoder and a photo encoder (the photo card says 64 px, ImageNet stem:
    the choice reads only the cards; the files are verified against them)."""
    models = tmp_path_factory.mktemp("models")
    shutil.copytree(exported, models / bundled.THUMBNAIL)
    shutil.copytree(exported, models / bundled.PHOTO)
    card = json.loads((models / bundled.PHOTO / "card.json").read_text())
    card["config"].update(image_size=64, cifar_stem=False)
    (models / bundled.PHOTO / "card.json").write_text(json.dumps(card))
    return models


def _sample(median: int) -> SizeSample:
    return SizeSample(probed=256, unreadable=0, short_median=median, short_min=median // 2, short_max=median * 2)


def test_the_encoder_is_chosen_by_the_folders_image_sizes_and_says_why(two_encoders: Path, tmp_path: Path) -> None:
    thumbs = bundled.choose(_sample(32), two_encoders)
    assert thumbs.name == bundled.THUMBNAIL and thumbs.side == 32
    assert thumbs.path == two_encoders / bundled.THUMBNAIL / "encoder.pt"
    assert "median short side 32 px" in thumbs.reason and "thumbnails" in thumbs.reason
    edge = bundled.choose(_sample(THUMBNAIL_MAX_SIDE), two_encoders)
    above = bundled.choose(_sample(THUMBNAIL_MAX_SIDE + 1), two_encoders)
    assert (edge.name, above.name) == (bundled.THUMBNAIL, bundled.PHOTO)
    photos = bundled.choose(_sample(215), two_encoders)
    assert photos.name == bundled.PHOTO and photos.side == 64 and "ImageNet stem" in photos.reason
    assert bundled.choose(None, two_encoders).name == bundled.PHOTO  # nothing to choose by: the larger one
    assert bundled.resolve("general", _sample(215), two_encoders) == photos.path
    assert bundled.resolve("thumbnail", _sample(215), two_encoders) == thumbs.path  # a name forces it
    assert bundled.resolve(tmp_path / "x.pt", None, two_encoders) == tmp_path / "x.pt"
    # only the thumbnail encoder present: photos fall back to it, and the reason says so
    only = tmp_path / "only"
    shutil.copytree(two_encoders / bundled.THUMBNAIL, only / bundled.THUMBNAIL)
    fallback = bundled.choose(_sample(215), only)
    assert fallback.name == bundled.THUMBNAIL and "only the thumbnail encoder is bundled" in fallback.reason
    with pytest.raises(CheckpointError, match="no bundled encoder named 'photo'"):
        bundled.resolve("photo", None, only)
    # a tampered photo encoder is refused when chosen
    data = bytearray((two_encoders / bundled.PHOTO / "encoder.pt").read_bytes())
    bad = tmp_path / "bad"
    shutil.copytree(two_encoders, bad)
    data[-100] ^= 0xFF
    (bad / bundled.PHOTO / "encoder.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its card"):
        bundled.choose(_sample(215), bad)


def test_a_changed_byte_or_a_missing_file_is_refused(exported: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(exported, bad)
    data = bytearray((bad / "encoder.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "encoder.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its card"):
        bundled.verified(bad / "card.json")
    (bad / "encoder.pt").unlink()
    with pytest.raises(CheckpointError, match="is missing"):
        bundled.verified(bad / "card.json")
    with pytest.raises(CheckpointError, match="no bundled encoder"):
        bundled.verified(tmp_path / "nowhere" / "card.json")


def test_export_refuses_an_encoder_over_the_limit(tiny_run: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bundled, "MAX_BYTES", 1000)
    with pytest.raises(CheckpointError, match="over the 0 MiB limit"):
        bundled.export(tiny_run, tmp_path, "cmd", "data", "now")
    assert not (tmp_path / "encoder.pt").exists() and not (tmp_path / "card.json").exists()


@pytest.mark.parametrize("name", bundled.available())
def test_the_committed_encoder_matches_its_card_and_embeds(name: str) -> None:
    card = bundled.ModelCard.read(bundled.MODELS_DIR / name / "card.json")
    ck = Checkpoint.load(bundled.bundled_checkpoint(name))
    assert card.bytes <= bundled.MAX_BYTES and ck.sha256 == card.sha256
    assert card.training_images > 25_000 and "tinyimagenet" in card.trained_on
    assert (bundled.MODELS_DIR / name / card.metrics["training"]["log"]).is_file()  # the training log ships too
    size = ck.architecture.image_size
    assert (size <= 40) == (name == bundled.THUMBNAIL)  # the thumbnail encoder is the one for thumbnails
    v = embed(ck.encoder(), torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8), torch.device("cpu"),
              False, 2, progress=False)
    assert v.shape == (2, ck.config.low_dim) and torch.allclose(v.norm(dim=1), torch.ones(2), atol=1e-5)


def test_the_committed_encoders_split_thumbnails_from_photos() -> None:
    """The shipped pair: 32 px CIFAR-stem thumbnails up to 40 px, the 64 px ImageNet-stem photo encoder above."""
    assert bundled.available() == [bundled.PHOTO, bundled.THUMBNAIL]
    thumbs, photos = bundled.choose(_sample(32)), bundled.choose(_sample(215))
    assert (thumbs.name, thumbs.side) == (bundled.THUMBNAIL, 32) and "CIFAR stem" in thumbs.reason
    assert (photos.name, photos.side) == (bundled.PHOTO, 64) and "ImageNet stem" in photos.reason
    assert "median short side 215 px" in photos.reason and "photos" in photos.reason
    assert photos.path == bundled.MODELS_DIR / bundled.PHOTO / "encoder.pt"
    card = bundled.ModelCard.read(bundled.MODELS_DIR / bundled.PHOTO / "card.json")
    assert "caltech" in card.trained_on and card.training_images == 29_040  # the held-out categories left out


def test_build_index_images_without_checkpoint_uses_the_bundled_encoder(shapes_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "idx"
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_index.py"), "--images", str(shapes_root / "test"),
                        "--out", str(out), "--no-progress"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "the bundled thumbnail encoder (32 px, CIFAR stem" in p.stderr and "median short side 32 px" in p.stderr
    m = json.loads((out / "manifest.json").read_text())
    card = bundled.ModelCard.read(bundled.MODELS_DIR / bundled.THUMBNAIL / "card.json")
    assert m["count"] == 100 and m["checkpoint"]["sha256"] == card.sha256
    # the memory bank cannot be exported from an encoder-only file
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_index.py"), "--checkpoint", "general",
                        "--out", str(tmp_path / "idx2")], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 2 and "no memory bank" in p.stderr


def test_start_from_loads_the_weights_and_the_bank_is_filled_from_them(exported: Path, shapes_root: Path,
                                                                       tmp_path: Path) -> None:
    init = Checkpoint.load(exported / "encoder.pt")
    train, ev = load_splits(shapes_root, 32, progress=False)
    cfg = preset("tiny", epochs=1, batch_size=32, precision="fp32", lr=0.0, weight_decay=0.0, momentum=0.0)
    t = Trainer(cfg, train, ev, tmp_path / "run", device="cpu", progress=False)
    t.start_from(init.encoder().state_dict(), {"path": str(init.path), "sha256": init.sha256})
    for k, v in init.encoder().state_dict().items():
        if v.dtype.is_floating_point and "running" not in k:
            assert torch.equal(t.model.encoder.state_dict()[k], v), k
    t.fit()
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert saved["init"]["sha256"] == init.sha256
    with pytest.raises(ValueError, match="for a new run"):
        t.start_from(init.encoder().state_dict(), {})


def test_train_init_takes_the_architecture_and_refuses_a_conflicting_flag(exported: Path, shapes_root: Path,
                                                                          tmp_path: Path) -> None:
    script = str(ROOT / "scripts" / "train.py")
    base = [sys.executable, script, "--data", str(shapes_root), "--init", str(exported / "encoder.pt"),
            "--no-progress", "--epochs", "1", "--batch-size", "32", "--precision", "fp32"]
    p = subprocess.run([*base, "--out", str(tmp_path / "bad"), "--width", "32"], capture_output=True, text=True,
                       timeout=300, cwd=ROOT)
    assert p.returncode == 2 and "--width 32 does not fit --init" in p.stderr
    p = subprocess.run([*base, "--out", str(tmp_path / "ok"), "--preset", "cpu-cifar"], capture_output=True,
                       text=True, timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "fine-tuning from" in p.stdout
    ck = Checkpoint.load(tmp_path / "ok")
    init = Checkpoint.load(exported / "encoder.pt")
    assert ck.config.width == init.config.width == 8 and ck.state["init"]["sha256"] == init.sha256
