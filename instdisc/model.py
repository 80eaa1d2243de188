"""Encoders: a torchvision ResNet trunk, an optional CIFAR stem, and the 128-d L2-normalised head.

The paper's encoder is a standard ResNet whose classifier is replaced by a linear map to
``low_dim`` followed by L2 normalisation (forgetting the normalisation breaks kNN). For
32x32 images the stem is a 3x3 stride-1 conv without max-pool. ``width`` scales every stage
so that CPU presets can train a narrower network with the same topology.

With ``projector`` > 0 (a lever beyond the paper, SimCLR's: Chen et al., ICML 2020, section
4.2) the loss sees an MLP projection (Linear-BN-ReLU-Linear to ``low_dim``) of the trunk's
pooled feature, and the embedding that the bank, the index and every query hold is that
pooled feature itself, L2-normalised: the layers just before a contrastive loss learn to
discard what the augmentations change (colour, crop), which retrieval still wants.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet as tv_resnet

from .config import TrainConfig

ARCHS: dict[str, tuple[type[nn.Module], list[int]]] = {
    "resnet18": (tv_resnet.BasicBlock, [2, 2, 2, 2]),
    "resnet34": (tv_resnet.BasicBlock, [3, 4, 6, 3]),
    "resnet50": (tv_resnet.Bottleneck, [3, 4, 6, 3]),
}


def trunk_dim(arch: str, width: int) -> int:
    """The pooled feature's dimension of a trunk: the last stage's channels (8 x width x expansion)."""
    block, _ = ARCHS[arch]
    return width * 8 * block.expansion


class ResNetTrunk(tv_resnet.ResNet):
    """torchvision's ResNet with a configurable base width and stem.

    With ``width=64`` and ``cifar_stem=False`` the parameter names and shapes equal
    ``torchvision.models.resnet18()``'s, so torchvision weights load into it.
    """

    def __init__(self, arch: str = "resnet18", width: int = 64, cifar_stem: bool = False) -> None:
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
        block, layers = ARCHS[arch]
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = width
        self.dilation = 1
        self.groups = 1
        self.base_width = 64
        if cifar_stem:
            self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Identity()
        self.out_dim = trunk_dim(arch, width)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


class Encoder(nn.Module):
    """Image batch (float, normalised) -> unit-length embedding of ``low_dim`` dimensions.

    ``low_dim`` is the embedding's dimension: the linear head's (the paper's 128), or with a
    ``projector`` the trunk's pooled feature's (``embedding_dim``); :meth:`encode` also returns
    what the loss sees. ``flip_average``: in eval mode the embedding is the normalised sum of
    the image's and its mirror's embeddings (test-time flip), so the bank export, the index and
    every query are embedded alike; training (one augmented view) is unchanged.
    """

    def __init__(
        self, arch: str = "resnet18", width: int = 64, cifar_stem: bool = True, low_dim: int = 128,
        flip_average: bool = False, projector: int = 0,
    ) -> None:
        super().__init__()
        if projector < 0:
            raise ValueError(f"projector must be >= 0 (0: none), got {projector}")
        self.trunk = ResNetTrunk(arch, width, cifar_stem)
        d = self.trunk.out_dim
        # no projector: the paper's linear map to low_dim is both the embedding and what the loss sees
        self.head = nn.Identity() if projector else nn.Linear(d, low_dim)
        self.projector = nn.Sequential(nn.Linear(d, projector), nn.BatchNorm1d(projector), nn.ReLU(inplace=True),
                                       nn.Linear(projector, low_dim)) if projector else None
        self.low_dim = d if projector else low_dim
        self.flip_average = flip_average

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> Encoder:
        """The one place an encoder is built from a training configuration."""
        return cls(cfg.arch, cfg.width, cfg.cifar_stem, cfg.low_dim, cfg.flip_embed, cfg.projector)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training: (embedding B x low_dim, what the loss sees B x cfg.low_dim), both unit length; the
        same tensor twice without a projector."""
        h = self.head(self.trunk(x))
        emb = F.normalize(h.float(), dim=1)
        if self.projector is None:
            return emb, emb
        return emb, F.normalize(self.projector(h).float(), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flip_average and not self.training:
            b = x.shape[0]
            z = self.head(self.trunk(torch.cat([x, x.flip(3)]))).float()  # 2B x low_dim
            return F.normalize(F.normalize(z[:b], dim=1) + F.normalize(z[b:], dim=1), dim=1)
        return F.normalize(self.head(self.trunk(x)).float(), dim=1)


def embedding_dim(cfg: TrainConfig) -> int:
    """The dimension of the vectors a configuration's encoder embeds, banks and indexes."""
    return trunk_dim(cfg.arch, cfg.width) if cfg.projector else cfg.low_dim
