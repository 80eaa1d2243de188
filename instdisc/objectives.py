"""The three objectives compared in the paper's Table 1.

All take the batch's L2-normalised features ``f`` (B x d), the instance indices ``idx`` and
the memory bank, and return a scalar loss; gradients flow into ``f`` only (the bank is a
buffer). Each is checked in ``tests/test_objectives.py`` against a direct computation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import log_mean_exp
from .memory import MemoryBank


class NonParametricSoftmax(nn.Module):
    """-log [exp(v_i . f / tau) / sum_j exp(v_j . f / tau)] over all N bank rows."""

    def __init__(self, num_instances: int, dim: int, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(
        self, f: torch.Tensor, idx: torch.Tensor, bank: MemoryBank, gen: torch.Generator | None = None
    ) -> torch.Tensor:
        # 1/tau scales the B x d features, not the B x N logits: the same numbers, N/d times fewer divisions
        logits = (f / self.temperature) @ bank.features.t()
        return F.cross_entropy(logits, idx.to(f.device))


class NCE(nn.Module):
    """Noise-contrastive estimation with m uniform noise rows (Pn = 1/N).

    The normaliser Z is a constant fixed from the first batch, as in the paper
    (``z_momentum=None``), or an exponential moving average of the per-batch estimate
    (the common fix for a badly estimated first-batch Z). Z is a buffer, so it is saved and
    a resumed run continues with the same value. Unlike the reference code, the positive is
    never drawn as its own noise sample.
    """

    def __init__(
        self, num_instances: int, dim: int, temperature: float, num_noise: int, z_momentum: float | None = None
    ) -> None:
        super().__init__()
        if num_instances < 2:
            raise ValueError("NCE needs at least 2 instances")
        self.temperature = temperature
        self.num_noise = num_noise
        self.num_instances = num_instances
        self.z_momentum = z_momentum
        self.register_buffer("log_z", torch.tensor(float("nan")))

    def sample_noise(self, idx: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """Uniform over the N - 1 other instances: draw from [0, N-2], shift past the positive."""
        noise = torch.randint(0, self.num_instances - 1, (idx.shape[0], self.num_noise), generator=gen)
        return noise + (noise >= idx.cpu().view(-1, 1)).long()

    def forward(
        self, f: torch.Tensor, idx: torch.Tensor, bank: MemoryBank, gen: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``noise``: pre-drawn noise rows (B x m); data-parallel training draws them for the global
        batch and gives each rank its slice, so a sample's noise does not depend on the rank count."""
        noise = (self.sample_noise(idx, gen) if noise is None else noise).to(f.device)
        rows = torch.cat([idx.to(f.device).view(-1, 1), noise], 1)  # B x (m+1), positive first
        weights = bank.features[rows]  # B x (m+1) x d
        log_s = torch.einsum("bkd,bd->bk", weights, f / self.temperature)  # log exp(s/tau)
        with torch.no_grad():
            # over every rank's batch when data-parallel, so all ranks hold the same Z
            batch_log_z = log_mean_exp(log_s.flatten()) + math.log(self.num_instances)
            if torch.isnan(self.log_z):
                self.log_z.copy_(batch_log_z)
            elif self.z_momentum is not None:
                z = self.z_momentum * self.log_z.exp() + (1 - self.z_momentum) * batch_log_z.exp()
                self.log_z.copy_(z.log())
        log_p = log_s - self.log_z  # log P(i|v)
        log_m_pn = math.log(self.num_noise / self.num_instances)
        # h = P / (P + m Pn); data term log h(pos), noise term log(1 - h(noise)).
        log_denominator = torch.logaddexp(log_p, torch.full_like(log_p, log_m_pn))
        data = log_p[:, 0] - log_denominator[:, 0]
        noise_term = (log_m_pn - log_denominator[:, 1:]).sum(1)
        return -(data + noise_term).mean()


class ParametricSoftmax(nn.Module):
    """The baseline: a learned N-way linear classifier on the features, P = softmax(W f)."""

    def __init__(self, num_instances: int, dim: int, temperature: float) -> None:
        super().__init__()
        self.classifier = nn.Linear(dim, num_instances, bias=False)

    def forward(
        self, f: torch.Tensor, idx: torch.Tensor, bank: MemoryBank, gen: torch.Generator | None = None
    ) -> torch.Tensor:
        return F.cross_entropy(self.classifier(f), idx.to(f.device))


OBJECTIVES = ("softmax", "nce", "parametric")


def build_objective(
    name: str, num_instances: int, dim: int, temperature: float, nce_k: int, z_momentum: float | None
) -> nn.Module:
    if name == "softmax":
        return NonParametricSoftmax(num_instances, dim, temperature)
    if name == "nce":
        return NCE(num_instances, dim, temperature, nce_k, z_momentum)
    if name == "parametric":
        return ParametricSoftmax(num_instances, dim, temperature)
    raise ValueError(f"unknown objective {name!r}; choose one of {OBJECTIVES}")
