"""The memory bank: one unit-length row per training instance, saved with the model.

It is a registered buffer (like MoCo's queue), so ``state_dict`` carries it into every
checkpoint, and it changes only through :meth:`MemoryBank.update`, an explicit ``no_grad``
call made by the training loop after the optimiser step -- never as a side effect of
``backward`` (the reference code's design) and never during evaluation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MemoryBank(nn.Module):
    def __init__(self, num_instances: int, dim: int, momentum: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"memory momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.register_buffer("features", torch.zeros(num_instances, dim))

    def __len__(self) -> int:
        return self.features.shape[0]

    @torch.no_grad()
    def reset_random(self, gen: torch.Generator | None = None) -> None:
        """The paper's start: random directions, unit length."""
        v = torch.randn(self.features.shape, generator=gen)
        self.features.copy_(F.normalize(v, dim=1).to(self.features))

    @torch.no_grad()
    def fill(self, idx: torch.Tensor, feats: torch.Tensor) -> None:
        """Overwrite rows (warm start from an encoder, or rebuilding from recomputed features)."""
        self.features[idx.to(self.features.device)] = F.normalize(feats.float(), dim=1).to(self.features)

    @torch.no_grad()
    def update(self, idx: torch.Tensor, feats: torch.Tensor) -> None:
        """v_i <- normalise(m v_i + (1 - m) f_i) for the batch's instances."""
        idx = idx.to(self.features.device)
        mixed = self.momentum * self.features[idx] + (1.0 - self.momentum) * feats.detach().float()
        self.features[idx] = F.normalize(mixed, dim=1)
