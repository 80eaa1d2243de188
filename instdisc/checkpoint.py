"""Checkpoints: one self-describing file, written atomically, read with ``weights_only=True``.

It holds everything a resumed run or an index build needs: the configuration, the model's
state (encoder, memory bank, objective buffers), optimiser, schedule position, RNG states,
the training file list (bank row i is ``dataset.paths[i]``) and the metric history. Only
tensors and plain containers go in, so loading never unpickles arbitrary objects.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from .config import TrainConfig
from .fsutil import atomic_write_bytes, stale_temps
from .model import Encoder

FORMAT = "instdisc-checkpoint"
VERSION = 1
REQUIRED = ("format", "version", "config", "model", "dataset")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated, or not ours; the message says which."""


def save(path: str | os.PathLike, state: dict) -> None:
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **state}, buf)
    atomic_write_bytes(path, buf.getvalue())
    for tmp in stale_temps(path):  # left by a run killed mid-write (one writer per run folder)
        tmp.unlink(missing_ok=True)


def load(path: str | os.PathLike) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.exists():
        raise CheckpointError(f"{path}: no checkpoint there (train one with scripts/train.py)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle refused by weights_only, ...
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an instdisc checkpoint")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}")
    if ckpt["version"] > VERSION:
        raise CheckpointError(f"{path}: format version {ckpt['version']} is newer than this code ({VERSION})")
    return ckpt


def encoder_from(ckpt: dict) -> Encoder:
    """The trained encoder (eval mode, CPU) of a loaded checkpoint: the weight average where the run kept one."""
    cfg = TrainConfig.from_dict(ckpt["config"])
    enc = Encoder.from_config(cfg)
    if "ema_encoder" in ckpt:  # runs with cfg.ema > 0 export, index and query with the averaged weights
        state = ckpt["ema_encoder"]
    else:
        prefix = "encoder."
        state = {k[len(prefix):]: v for k, v in ckpt["model"].items() if k.startswith(prefix)}
    try:
        enc.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint weights do not fit its recorded architecture: {e}") from e
    return enc.eval()


def bank_from(ckpt: dict) -> torch.Tensor:
    if "bank.features" not in ckpt["model"]:
        raise CheckpointError("this checkpoint holds an encoder only, no memory bank (e.g. a bundled encoder): "
                              "build the index from images with --images FOLDER")
    return ckpt["model"]["bank.features"]
