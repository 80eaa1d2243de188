"""Encoders: a ResNet trunk (torchvision's layout), an optional CIFAR stem, and the 128-d L2-normalised head.

The paper's encoder is a standard ResNet whose classifier is replaced by a linear map to
``low_dim`` followed by L2 normalisation (forgetting the normalisation breaks kNN). For
32x32 images the stem is a 3x3 stride-1 conv without max-pool. ``width`` scales every stage
so that CPU presets can train a narrower network with the same topology.

The blocks are written here with torchvision's module names, shapes and initialisation (He-normal
convolutions, BatchNorm at 1 and 0), so torchvision ResNet weights load into the trunk and give the
same outputs. Importing torchvision is what is avoided: it pulls in torch._dynamo, seconds of CPU at
the start of every command that only needs the network.

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

from .config import TrainConfig


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut (ResNet-18/34), as torchvision builds it."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 - 3x3 (strided) - 1x1 with 4x expansion (ResNet-50), as torchvision builds it."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


ARCHS: dict[str, tuple[type[BasicBlock | Bottleneck], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}


def trunk_dim(arch: str, width: int) -> int:
    """The pooled feature's dimension of a trunk: the last stage's channels (8 x width x expansion)."""
    block, _ = ARCHS[arch]
    return width * 8 * block.expansion


class ResNetTrunk(nn.Module):
    """A ResNet with a configurable base width and stem, ending at the pooled feature.

    With ``width=64`` and ``cifar_stem=False`` the parameter names and shapes equal
    ``torchvision.models.resnet18()``'s (without ``fc``), so torchvision weights load into it.
    """

    def __init__(self, arch: str = "resnet18", width: int = 64, cifar_stem: bool = False) -> None:
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
        super().__init__()
        block, layers = ARCHS[arch]
        self.inplanes = width
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

    def _make_layer(self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int,
                    stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(_conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, out_dim) pooled feature."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


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
