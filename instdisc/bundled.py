"""The bundled general encoder: a small encoder committed in the repository, so that any folder can be
indexed and searched at once, with no training.

``instdisc/models/general/encoder.pt`` is an ordinary instdisc checkpoint stripped to what embedding needs: the
configuration and the encoder's weights (the weight average where the run kept one), no memory bank,
optimiser, RNG state or file list. ``instdisc/models/general/card.json`` (:class:`ModelCard`) holds its
SHA-256, the command that trained it, what it was trained on and what it measured;
:func:`bundled_checkpoint` refuses a file whose bytes do not match the card.

Written by ``scripts/export_encoder.py``; read by ``build_index.py --images`` without ``--checkpoint``
(or ``--checkpoint general``) and by ``train.py --init general`` (fine-tuning).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .checkpoint import CheckpointError, load, save
from .fsutil import atomic_write_text, sha256_file

BUNDLED_DIR = Path(__file__).resolve().parent / "models" / "general"  # package data: ships in the wheel
NAME = "general"  # what --checkpoint / --init accept for the bundled encoder
MAX_BYTES = 16 << 20  # the repository's limit for a committed encoder


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
    card = ModelCard(NAME, path.name, sha256_file(path), size, command, trained_on,
                     len(state["dataset"].get("paths", [])), dict(state["config"]), sha256_file(src), exported)
    atomic_write_text(out / "card.json", card.to_json())
    return card


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


def bundled_checkpoint() -> Path:
    """``instdisc/models/general/encoder.pt``, verified against its card (CheckpointError otherwise)."""
    return verified(BUNDLED_DIR / "card.json")


def resolve(name_or_path: str | os.PathLike) -> Path:
    """``general`` -> the verified bundled encoder; anything else is a checkpoint path, returned as is."""
    return bundled_checkpoint() if str(name_or_path) == NAME else Path(name_or_path)
