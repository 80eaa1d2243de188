"""How an index turns images into its vectors: the encoder at one or more sides, optionally whitened.

The checkpoint's encoder embeds a whole image at the checkpoint's side by default. Two retrieval
habits from the instance-retrieval literature are index options on top of it (Radenović et al.,
"Fine-tuning CNN image retrieval with no human annotation", TPAMI 2018: a multi-scale descriptor
averaged over image scales, then a whitening learned on the database):

* ``--scales 1 1.5``: the image embedded at 1x and 1.5x the checkpoint's side, the unit vectors
  summed and re-normalised. A network trained on random-resized crops recognises objects best a
  little enlarged (FixRes), while near-duplicate matching needs the training-size view: the
  average keeps both.
* ``--whiten``: PCA whitening (:mod:`instdisc.whitening`) fitted on the index's own vectors at
  build time, kept in the metadata database (its hash in the manifest) and applied to every
  vector the index ever sees: the gallery, ``--add``-ed images and queries.

:class:`IndexEmbedder` is the one place that applies both, so the build, ``--add``, the sharded
build, :class:`index.search.SearchIndex` (the app, explore) and the evaluation cannot disagree.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch

from instdisc.embed import embed
from instdisc.model import Encoder
from instdisc.whitening import Whitening

from .errors import IndexDirError
from .faiss_util import normalise
from .manifest import Manifest

MIN_SIDE = 8  # the smallest whole-image side an index embeds at
WHITENING_KEY = "whitening"  # the metadata database's info key holding the index's whitening (JSON)


def sides_for(base: int, scales: Sequence[float]) -> tuple[int, ...]:
    """Whole-image sides for ``scales`` x the checkpoint's side ``base``: distinct, largest first.

    Scales under 1 are allowed (a checkpoint exported at an enlarged side, ``--embed-scale``, can
    still embed at its training side: ``--scales 0.667 1`` at 48 px gives 32 and 48)."""
    if not scales:
        raise ValueError("scales must name at least one scale")
    bad = [s for s in scales if not round(base * float(s)) >= MIN_SIDE]
    if bad:
        raise ValueError(f"scales {bad} x the checkpoint's side {base} px give sides under {MIN_SIDE} px")
    return tuple(sorted({round(base * float(s)) for s in scales}, reverse=True))


class IndexEmbedder:
    """(N, 3, S, S) uint8 images -> the index's (N, d) float32 unit vectors."""

    def __init__(self, encoder: Encoder, sides: Sequence[int], whitening: Whitening | None = None,
                 device: torch.device | None = None, bf16: bool = False, batch_size: int = 256) -> None:
        if not sides:
            raise ValueError("an index embeds at one side at least")
        self.encoder = encoder
        self.sides = tuple(int(s) for s in sides)
        self.whitening = whitening
        self.device = device or next(encoder.parameters()).device
        self.bf16 = bf16
        self.batch_size = batch_size

    def placed(self, device: torch.device, bf16: bool, batch_size: int) -> IndexEmbedder:
        """The same embedding run on ``device`` (a copy of the encoder if it lives elsewhere)."""
        here = next(self.encoder.parameters()).device
        encoder = self.encoder if here == torch.device(device) else copy.deepcopy(self.encoder).to(device)
        return IndexEmbedder(encoder, self.sides, self.whitening, torch.device(device), bf16, batch_size)

    @property
    def input_size(self) -> int:
        """The side images are decoded at (the largest side; smaller ones are resized from it)."""
        return max(self.sides)

    @property
    def dim(self) -> int:
        return int(self.whitening.proj.shape[1]) if self.whitening is not None else int(self.encoder.low_dim)

    def unwhitened(self, images: torch.Tensor, progress: bool = False, desc: str = "embed") -> torch.Tensor:
        """The multi-scale unit vectors before whitening (what a whitening is fitted on): (N, low_dim)."""
        total = None
        for side in self.sides:
            v = embed(self.encoder, images, self.device, self.bf16, self.batch_size, progress,
                      desc if len(self.sides) == 1 else f"{desc} at {side} px", size=side)
            total = v if total is None else total + v
        return torch.nn.functional.normalize(total, dim=1)

    def whiten(self, vectors: torch.Tensor | np.ndarray) -> np.ndarray:
        """Unwhitened unit vectors -> the index's vectors (unchanged apart from the dtype without whitening)."""
        return whitened_vectors(vectors, self.whitening)

    def __call__(self, images: torch.Tensor, progress: bool = False, desc: str = "embed") -> np.ndarray:
        return self.whiten(self.unwhitened(images, progress, desc))


def whitened_vectors(vectors: torch.Tensor | np.ndarray, whitening: Whitening | None) -> np.ndarray:
    """(N, d) unwhitened unit vectors -> contiguous float32 unit rows, whitened when ``whitening`` is given."""
    v = torch.as_tensor(vectors, dtype=torch.float32)
    return normalise((whitening.apply(v) if whitening is not None else v).numpy())


def whitening_of(manifest: Manifest, info: dict[str, str], where: str) -> Whitening | None:
    """The whitening an index keeps (metadata ``info``), checked against the manifest's hash; None if unwhitened."""
    want = manifest.embedding.whitening_sha256
    text = info.get(WHITENING_KEY)
    if not want:
        return None
    if text is None:
        raise IndexDirError(f"{where}: the manifest says the vectors are whitened but the metadata holds no "
                            "whitening (the folder is damaged: rebuild it)")
    if Whitening.digest(text) != want:
        raise IndexDirError(f"{where}: the stored whitening does not match the manifest's hash (the folder "
                            "was edited or damaged: rebuild it)")
    try:
        w = Whitening.from_json(text)
    except ValueError as e:
        raise IndexDirError(f"{where}: {e}") from e
    if w.proj.shape[1] != manifest.dim:
        raise IndexDirError(f"{where}: the whitening gives {w.proj.shape[1]}-d vectors, "
                            f"the index holds {manifest.dim}-d")
    return w
