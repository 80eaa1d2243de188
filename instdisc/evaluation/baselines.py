"""Baseline featurisers computed the same way on the same images: raw pixels (as they are and
PCA-whitened on the gallery), a random-init encoder, an ImageNet-supervised ResNet18 (only when its
weights are already on disk)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from instdisc.whitening import Whitening

BASELINES = ("reembed", "pixels", "pixels-whitened", "random", "imagenet")  # what --baselines accepts


@dataclass
class Method:
    """One featuriser's gallery and query vectors (ours or a baseline)."""

    name: str
    gallery: torch.Tensor  # (N, d) unit rows, gallery order
    queries: torch.Tensor | None  # (Q, d) unit rows or None (not computed)
    featurise: Callable  # callable: (B, 3, S, S) uint8 -> (B, d) unit rows
    note: str = ""
    extra: dict = field(default_factory=dict)


def imagenet_weights() -> Path | None:
    """torchvision ResNet18 ImageNet weights already in the torch hub cache (never downloaded)."""
    d = Path(torch.hub.get_dir()) / "checkpoints"
    found = sorted(d.glob("resnet18-*.pth")) if d.is_dir() else []
    return found[0] if found else None


class TorchvisionEmbedder(nn.Module):
    """A torchvision classifier minus its last layer, as an ``embed``-compatible encoder."""

    def __init__(self, net: nn.Module, dim: int, size: int) -> None:
        super().__init__()
        self.net = net
        self.low_dim = dim
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return F.normalize(self.net(x).float(), dim=1)


def imagenet_resnet18(weights: Path, size: int) -> TorchvisionEmbedder:
    import torchvision

    net = torchvision.models.resnet18()
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    net.fc = nn.Identity()
    return TorchvisionEmbedder(net, 512, size).eval()


def pixel_featuriser(mean: torch.Tensor, size: int, whitening: Whitening | None = None):
    """Raw pixels with the gallery's ``mean`` (and, for the whitened baseline, its ``whitening``)."""
    def feat(imgs: torch.Tensor, desc: str = "") -> np.ndarray:
        x = pixel_features(imgs, size, mean)[0]
        return (x if whitening is None else whitening.apply(x)).numpy()

    return feat


def pixel_features(images: torch.Tensor, size: int = 32, mean: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw-pixel baseline: (N, 3, S, S) uint8 -> resized to ``size`` (area) if larger, flattened,
    the gallery mean subtracted, L2-normalised. Returns (features, mean); pass the gallery's mean
    when featurising queries."""
    x = images.float().div(255.0)
    if x.shape[-1] > size or x.shape[-2] > size:
        x = F.interpolate(x, size=(size, size), mode="area")
    x = x.flatten(1)
    if mean is None:
        mean = x.mean(0)
    return F.normalize(x - mean, dim=1), mean
