"""The bundled encoders: small encoders shipped inside the package, so that any folder can be indexed
and searched at once, with no training.

Each lives in ``instdisc/models/<name>/``: ``encoder.pt``, an ordinary instdisc checkpoint stripped to
what embedding needs (the configuration and the encoder's weights, the weight average where the run
kept one; no memory bank, optimiser, RNG state or file list), and ``card.json`` (:class:`ModelCard`)
with its SHA-256, the command that trained it, what it was trained on and what it measured.
:func:`verified` refuses a file whose bytes do not match its card.

``general`` is not a file but a choice: :func:`choose` takes the bundled encoder whose input side fits
the folder's images (the thumbnail encoder for thumbnails up to
:data:`~instdisc.resolution.THUMBNAIL_MAX_SIDE` px, the photo encoder above) and says why. Any bundled
name (``thumbnail``, ``photo``) forces that one.

Written by ``instdisc-search export-encoder``; read by ``instdisc-search index --images`` without
``--checkpoint`` (or with ``--checkpoint general|thumbnail|photo``) and by ``train --init`` (fine-tuning).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .checkpoint import CheckpointError, load, save
from .fsutil import atomic_write_text, sha256_file
from .resolution import THUMBNAIL_MAX_SIDE, SizeSample

MODELS_DIR = Path(__file__).resolve().parent / "models"  # package data: ships in the wheel
NAME = "general"  # what --checkpoint / --init accept for "the bundled encoder that fits these images"
THUMBNAIL, PHOTO = "thumbnail", "photo"  # the bundled encoders, by what they are for
MAX_BYTES = 20 << 20  # the limit for an encoder shipped in the package
RUN_LOG = "metrics.jsonl"  # a training run's per-epoch log (instdisc.train), beside its checkpoint
TRAINING_LOG = "training_metrics.jsonl"  # the same log, shipped beside a bundled encoder


@dataclass
class ModelCard:
    """What the bundled encoder is and how it was made (``card.json``)."""

    name: str
    file: str  # relative to the card
    sha256: str
    bytes: int
    command: str  # the project command that trained it
    trained_on: str
    training_images: int
    config: dict  # the training configuration (TrainConfig.to_dict())
    source_checkpoint_sha256: str
    exported: str  # UTC time
    metrics: dict = field(default_factory=dict)  # measured after export (evaluation reports), with commands

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"

    @classmethod
    def read(cls, path: str | os.PathLike) -> ModelCard:
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise CheckpointError(f"{path}: unreadable model card ({type(e).__name__}: {e})") from e


def encoder_only(state: dict) -> dict:
    """A checkpoint state reduced to config + encoder weights (the EMA weights where the run kept them)."""
    if "ema_encoder" in state:
        weights = {f"encoder.{k}": v for k, v in state["ema_encoder"].items()}
    else:
        weights = {k: v for k, v in state["model"].items() if k.startswith("encoder.")}
    if not weights:
        raise CheckpointError("the checkpoint holds no encoder weights")
    ds = state.get("dataset", {})
    return {
        "config": state["config"],
        "model": {k: v.clone() for k, v in weights.items()},
        "dataset": {"root": "", "paths": [], "labels": [], "classes": [], "image_size": ds.get("image_size")},
        "epoch": int(state.get("epoch", 0)),
        "history": list(state.get("history") or [])[-3:],
        "encoder_only": True,
    }


def export(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, command: str, trained_on: str,
           exported: str) -> ModelCard:
    """Write ``out_dir/encoder.pt`` and ``out_dir/card.json`` from a training checkpoint; return the card."""
    src = Path(checkpoint)
    if src.is_dir():
        src = src / "checkpoint.pt"
    state = load(src)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "encoder.pt"
    save(path, encoder_only(state))
    size = path.stat().st_size
    if size > MAX_BYTES:
        path.unlink()
        raise CheckpointError(f"the exported encoder is {size / 2**20:.1f} MiB, over the {MAX_BYTES >> 20} MiB "
                              "limit for a committed model: train a narrower one (--width)")
    card = ModelCard(out.name, path.name, sha256_file(path), size, command, trained_on,
                     len(state["dataset"].get("paths", [])), dict(state["config"]), sha256_file(src), exported)
    run_log = src.parent / RUN_LOG
    if run_log.is_file():  # the training log ships with the encoder, summarised on the card
        text = run_log.read_text()
        atomic_write_text(out / TRAINING_LOG, text)
        card.metrics["training"] = {"log": TRAINING_LOG, **training_summary(text)}
    atomic_write_text(out / "card.json", card.to_json())
    return card


def training_summary(log: str) -> dict:
    """Epochs, wall minutes, median images/s and the last kNN monitor of a run's ``metrics.jsonl`` text."""
    rows = [json.loads(line) for line in log.splitlines() if line.strip()]
    trained = [r for r in rows if r.get("images_per_s")]
    out: dict = {"epochs": max((int(r["epoch"]) for r in trained), default=0)}
    if trained:
        speeds = sorted(float(r["images_per_s"]) for r in trained)
        out["median_images_per_s"] = round(speeds[len(speeds) // 2], 1)
    walls = [float(r["wall"]) for r in rows if "wall" in r]
    if walls:
        out["wall_minutes"] = round(max(walls) / 60, 1)
    last = next((r for r in reversed(rows) if "knn_top1" in r), None)
    if last:
        out["last_monitor"] = {k: last[k] for k in ("epoch", "knn_top1", "knn_1nn") if k in last}
    return out


def verified(card_path: str | os.PathLike) -> Path:
    """The encoder file a card describes, after checking its size and SHA-256 against the card."""
    card_path = Path(card_path)
    if not card_path.exists():
        raise CheckpointError(f"no bundled encoder: {card_path} is missing (a partial checkout?)")
    card = ModelCard.read(card_path)
    path = card_path.parent / card.file
    if not path.exists():
        raise CheckpointError(f"the bundled encoder {path} is missing; its card is {card_path}")
    if path.stat().st_size != card.bytes or sha256_file(path) != card.sha256:
        raise CheckpointError(f"{path} does not match its card {card_path} (size or SHA-256 differ): a damaged "
                              "or replaced file. Restore it with `git checkout -- models/` or re-export it.")
    return path


def available(models_dir: Path = MODELS_DIR) -> list[str]:
    """Names of the bundled encoders (folders with a card), sorted."""
    return sorted(p.parent.name for p in Path(models_dir).glob("*/card.json"))


def bundled_checkpoint(name: str = THUMBNAIL, models_dir: Path = MODELS_DIR) -> Path:
    """``instdisc/models/<name>/encoder.pt``, verified against its card (CheckpointError otherwise)."""
    if name not in available(models_dir):
        raise CheckpointError(f"no bundled encoder named {name!r}; bundled: {', '.join(available(models_dir))}")
    return verified(Path(models_dir) / name / "card.json")


@dataclass(frozen=True)
class Choice:
    """Which bundled encoder embeds a folder, and why (printed by the commands that choose)."""

    name: str
    path: Path  # the verified encoder file
    side: int  # the side it embeds whole images at
    reason: str


def _side(card: ModelCard) -> int:
    cfg = card.config
    return round(int(cfg["image_size"]) * float(cfg.get("embed_scale", 1.0)))


def choose(sample: SizeSample | None, models_dir: Path = MODELS_DIR) -> Choice:
    """The bundled encoder for a folder whose sampled image sizes are ``sample``.

    Thumbnails (median short side up to THUMBNAIL_MAX_SIDE) get the thumbnail encoder, whose CIFAR stem
    keeps every pixel of a 32 px image; larger images get the photo encoder (ImageNet stem, 64 px and up).
    With only one bundled encoder, or no sample, the choice falls back and says so.
    """
    names = available(models_dir)
    if not names:
        raise CheckpointError(f"no bundled encoder under {models_dir} (a partial install?)")
    cards = {n: ModelCard.read(Path(models_dir) / n / "card.json") for n in names}
    if sample is None or sample.probed == sample.unreadable:
        name = PHOTO if PHOTO in cards else names[0]
        why = "no readable image sizes to choose by"
    else:
        want = THUMBNAIL if sample.short_median <= THUMBNAIL_MAX_SIDE else PHOTO
        kind = "thumbnails" if want == THUMBNAIL else "photos"
        if want in cards:
            name, why = want, f"{sample.describe()}: {kind}"
        else:
            name = names[0]
            why = f"{sample.describe()}: {kind}, but only the {name} encoder is bundled"
    card = cards[name]
    stem = "CIFAR" if card.config.get("cifar_stem") else "ImageNet"
    reason = (f"the bundled {name} encoder ({_side(card)} px, {stem} stem, {card.training_images:,} training "
              f"images): {why}")
    return Choice(name, verified(Path(models_dir) / name / "card.json"), _side(card), reason)


def resolve(name_or_path: str | os.PathLike, sample: SizeSample | None = None,
            models_dir: Path = MODELS_DIR) -> Path:
    """``general`` -> the bundled encoder that fits ``sample``; a bundled name -> that encoder, verified;
    anything else is a checkpoint path, returned as is."""
    s = str(name_or_path)
    if s == NAME:
        return choose(sample, models_dir).path
    if s in (THUMBNAIL, PHOTO) and not Path(s).exists():
        return bundled_checkpoint(s, models_dir)
    return Path(name_or_path)
