"""A loaded checkpoint as one typed object: what index building, evaluation and the app read from a run.

:mod:`instdisc.checkpoint` writes and reads the file (a dict of tensors and plain containers,
``weights_only=True``); :class:`Checkpoint` is the read side's contract: loaded and validated
once, hashed over exactly the bytes loaded, with attributes instead of string keys and
:meth:`Checkpoint.encoder` for the trained network.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .checkpoint import CheckpointError, bank_from, encoder_from, load
from .config import TrainConfig
from .fsutil import sha256_file
from .model import Encoder, embedding_dim

LOAD_ATTEMPTS = 3  # a training run replaces checkpoint.pt every epoch: re-read if it changed under us


@dataclass(frozen=True)
class Architecture:
    """The encoder's shape, so a reader knows which network produced the vectors."""

    arch: str
    width: int
    cifar_stem: bool
    low_dim: int  # the embedding's dimension (the index's vectors)
    image_size: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Architecture:
        return cls(str(d["arch"]), int(d["width"]), bool(d["cifar_stem"]), int(d["low_dim"]), int(d["image_size"]))


@dataclass(frozen=True)
class TrainingFiles:
    """The training collection a checkpoint was made from: bank row i is ``paths[i]``."""

    root: Path
    paths: list[str]
    labels: list[int]  # class ids, -1 unknown
    classes: list[str]
    image_size: int | None

    def label_names(self) -> list[str | None]:
        return [self.classes[y] if 0 <= y < len(self.classes) else None for y in self.labels]


@dataclass
class Checkpoint:
    """A validated training checkpoint (see the module doc); ``state`` is the raw loaded dict."""

    path: Path
    sha256: str
    config: TrainConfig
    epoch: int
    files: TrainingFiles
    history: list[dict]
    state: dict = field(repr=False)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Checkpoint:
        """Load ``path`` (or ``path/checkpoint.pt``); CheckpointError with the reason otherwise."""
        p = Path(path)
        if p.is_dir():
            p = p / "checkpoint.pt"
        for _ in range(LOAD_ATTEMPTS):
            try:
                before = sha256_file(p)
                state = load(p)
                after = sha256_file(p)
            except FileNotFoundError:
                raise CheckpointError(f"{p}: no checkpoint there") from None
            if before == after:
                return cls.from_state(state, p.resolve(), before)
        raise CheckpointError(f"{p}: the checkpoint keeps changing while being read (a training run is writing "
                              "it); copy it and use the copy")

    @classmethod
    def from_state(cls, state: dict, path: Path, sha256: str) -> Checkpoint:
        ds = state["dataset"]
        cfg = TrainConfig.from_dict(state["config"])
        paths = list(ds.get("paths", []))
        files = TrainingFiles(Path(ds.get("root", "")), paths, [int(y) for y in ds.get("labels", [-1] * len(paths))],
                              list(ds.get("classes") or []),
                              int(ds["image_size"]) if ds.get("image_size") is not None else None)
        return cls(path, sha256, cfg, int(state.get("epoch", 0)), files, list(state.get("history") or []), state)

    @property
    def architecture(self) -> Architecture:
        c = self.config
        size = self.files.image_size if self.files.image_size is not None else c.image_size
        return Architecture(c.arch, c.width, c.cifar_stem, embedding_dim(c), int(size))

    @property
    def temperature(self) -> float:
        return float(self.config.temperature)

    @property
    def knn_top1(self) -> float | None:
        """The last kNN top-1 the training monitor recorded, or None."""
        for row in reversed(self.history):
            if row.get("knn_top1") is not None:
                return float(row["knn_top1"])
        return None

    def encoder(self) -> Encoder:
        """The trained encoder (eval mode, CPU)."""
        return encoder_from(self.state)

    def untrained_encoder(self, seed: int) -> Encoder:
        """The same architecture with seeded random weights (the random-network baseline)."""
        c = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return Encoder.from_config(c).eval()

    @property
    def encoder_only(self) -> bool:
        """True for an exported encoder (a bundled one): no memory bank, no training folder to go back to."""
        return "bank.features" not in self.state["model"]

    def bank(self) -> torch.Tensor:
        """The memory bank, (N, low_dim): row i belongs to ``files.paths[i]``."""
        return bank_from(self.state)
