"""PCA whitening fitted on a gallery: an index option, and the evaluation's fairness check on pixels.

Whitening (centre on the gallery mean, rotate to the principal axes, divide each axis by the square
root of its variance, re-normalise) is label-free and is learned from the gallery alone (Jégou &
Chum, ECCV 2012, "Negative evidences and co-occurrences in image retrieval: the benefit of PCA and
whitening"; Radenović et al., TPAMI 2018, learned whitening on top of a CNN descriptor). Two uses:

* ``scripts/build_index.py --whiten`` fits it on the index's own vectors and keeps it with the
  index (``index/embedding.py``), so queries, ``--add`` and the evaluation are whitened alike.
  Measured on the photo subset it lifts a 20-minute encoder's kNN (docs/photos.md); on CIFAR-10
  it costs mAP (REPRODUCTION.md, "Beyond the paper"), hence an option, not a default.
* the *fairness check* on the baselines: it lifts raw pixels' weighted kNN on CIFAR-10 from 41.2 %
  to 58-60 %, so a claim against raw pixels has to hold against whitened pixels too.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

DIMS = 128  # principal axes kept (pixels have 3,072; the encoders' 128-d output keeps all of its own)
POWER = -0.5  # eigenvalue exponent: -0.5 whitens, 0 is plain PCA, in between shrinks
EPS = 1e-3  # added to every eigenvalue, relative to the largest, so near-empty axes are not blown up


@dataclass(frozen=True)
class Whitening:
    """``x -> normalise((x - mean) @ proj)``; ``proj`` (d, k) holds the scaled principal axes."""

    mean: torch.Tensor  # (d,)
    proj: torch.Tensor  # (d, k)
    eigenvalues: torch.Tensor  # (k,) the gallery's variances along the kept axes, largest first

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """(N, d) -> (N, k) unit rows."""
        return F.normalize((x.float() - self.mean) @ self.proj, dim=1)

    def to_json(self) -> str:
        """The three arrays as base64 float32 in one JSON text (kept in an index's metadata database)."""
        arrays = {"mean": self.mean, "proj": self.proj, "eigenvalues": self.eigenvalues}
        return json.dumps({k: {"shape": list(v.shape), "float32": base64.b64encode(
            v.float().contiguous().numpy().tobytes()).decode("ascii")} for k, v in arrays.items()})

    @classmethod
    def from_json(cls, text: str) -> Whitening:
        """Inverse of :meth:`to_json`; ValueError naming what is malformed."""
        try:
            d = json.loads(text)
            arrays = {k: torch.from_numpy(np.frombuffer(base64.b64decode(d[k]["float32"]), np.float32)
                                          .reshape(d[k]["shape"]).copy()) for k in ("mean", "proj", "eigenvalues")}
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"malformed whitening ({type(e).__name__}: {e})") from e
        w = cls(**arrays)
        if w.mean.ndim != 1 or w.proj.shape[0] != w.mean.shape[0] or w.eigenvalues.shape != w.proj.shape[1:]:
            raise ValueError(f"inconsistent whitening shapes: mean {tuple(w.mean.shape)}, proj {tuple(w.proj.shape)}, "
                             f"eigenvalues {tuple(w.eigenvalues.shape)}")
        return w

    @staticmethod
    def digest(text: str) -> str:
        """SHA-256 of :meth:`to_json`'s text (the manifest records it; a mismatch is refused at open)."""
        return hashlib.sha256(text.encode("ascii")).hexdigest()


def fit_whitening(gallery: torch.Tensor, dims: int = DIMS, power: float = POWER, eps: float = EPS) -> Whitening:
    """The gallery's (N, d) principal axes, scaled by ``(eigenvalue + eps * largest) ** power``.

    The covariance and its eigen-decomposition run in float64 (``eigh`` of a 3,072-d pixel
    covariance in float32 loses the small axes that whitening then amplifies).
    """
    if gallery.ndim != 2 or gallery.shape[0] < 2:
        raise ValueError(f"whitening needs a (N >= 2, d) gallery, got shape {tuple(gallery.shape)}")
    if dims < 1:
        raise ValueError(f"dims must be >= 1, got {dims}")
    g = gallery.double()
    mean = g.mean(0)
    centred = g - mean
    cov = centred.T @ centred / g.shape[0]  # d x d
    vals, vecs = torch.linalg.eigh(cov)  # ascending
    k = min(dims, g.shape[1])
    vals, vecs = vals.flip(0)[:k].clamp_min(0.0), vecs.flip(1)[:, :k]
    # an eigenvector's sign is arbitrary and can flip with the last bits of the covariance (thread count,
    # BLAS path): fix it (largest component positive) so two fits of the same gallery give the same vectors
    signs = torch.sign(vecs.gather(0, vecs.abs().argmax(0, keepdim=True)))
    vecs = vecs * torch.where(signs == 0, torch.ones_like(signs), signs)
    proj = vecs * (vals + eps * vals[0]).pow(power)
    return Whitening(mean.float(), proj.float(), vals.float())


def whitened(gallery: torch.Tensor, queries: torch.Tensor, dims: int = DIMS) -> tuple[torch.Tensor, torch.Tensor]:
    """(gallery, queries) whitened by the gallery's own fit."""
    w = fit_whitening(gallery, dims)
    return w.apply(gallery), w.apply(queries)
