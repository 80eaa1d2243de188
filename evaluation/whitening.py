"""PCA whitening fitted on a gallery: the classic retrieval post-processing, applied to every featuriser alike.

Whitening (centre on the gallery mean, rotate to the principal axes, divide each axis by the square
root of its variance, re-normalise) is label-free and is learned from the gallery alone (Jégou &
Chum, ECCV 2012, "Negative evidences and co-occurrences in image retrieval: the benefit of PCA and
whitening"). It is here as a *fairness check* on the baselines, not as a lever: measured on the
CIFAR-10 JPEG copy (test vs train, k = 200), it lifts raw pixels' weighted kNN from 41.2 % to
58-60 % and a 7-minute ``cpu-cifar-fast`` encoder's from 53.6 % to 58.7 % (REPRODUCTION.md,
"Beyond the paper"), so a claim against raw pixels has to hold against whitened pixels too.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    proj = vecs * (vals + eps * vals[0]).pow(power)
    return Whitening(mean.float(), proj.float(), vals.float())


def whitened(gallery: torch.Tensor, queries: torch.Tensor, dims: int = DIMS) -> tuple[torch.Tensor, torch.Tensor]:
    """(gallery, queries) whitened by the gallery's own fit."""
    w = fit_whitening(gallery, dims)
    return w.apply(gallery), w.apply(queries)
