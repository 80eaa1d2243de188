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

UPDATE_RULES = ("momentum", "gradient")


class MemoryBank(nn.Module):
    """N x d unit rows. ``rule``: how a batch's features enter the bank (see :meth:`update`)."""

    def __init__(self, num_instances: int, dim: int, momentum: float = 0.5, rule: str = "momentum") -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"memory momentum must be in [0, 1), got {momentum}")
        if rule not in UPDATE_RULES:
            raise ValueError(f"unknown bank update {rule!r}; choose one of {UPDATE_RULES}")
        self.momentum = momentum
        self.rule = rule
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
    def nearest_other(self, f: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Each feature's most similar bank row that is not its own instance (B x d): the positive of the
        nearest-neighbour lever (NNCLR). ``f`` (B x d), ``idx`` (B,) the instances the features are of."""
        sims = f.detach() @ self.features.t().to(f.dtype)  # B x N (bf16 under autocast: only the argmax is used)
        rows = torch.arange(f.shape[0], device=sims.device)
        sims[rows, idx.to(sims.device)] = float("-inf")
        return self.features[sims.argmax(1)]  # B x d

    @torch.no_grad()
    def update(self, idx: torch.Tensor, feats: torch.Tensor, positive_prob: torch.Tensor | None = None) -> None:
        """Move the batch's rows towards their new features.

        ``momentum`` (the paper): v_i <- normalise(m v_i + (1 - m) f_i).
        ``gradient`` (Cao & Wu 2024, as we read it): treat v_i as a parameter of the softmax and step
        along -dL/dv_i = (1 - P(i|f_i)) f_i / tau; with the step scaled so that an unlearnt instance
        (P = 0) moves exactly as the momentum rule moves it, v_i <- normalise(m v_i + (1 - m)(1 - P) f_i):
        rows the encoder already discriminates stay put instead of being overwritten by one view.
        """
        idx = idx.to(self.features.device)
        f = feats.detach().float()
        if self.rule == "gradient":
            if positive_prob is None:
                raise ValueError("the gradient bank update needs each positive's probability")
            f = f * (1.0 - positive_prob.detach().float().to(f.device)).view(-1, 1)
        mixed = self.momentum * self.features[idx] + (1.0 - self.momentum) * f
        self.features[idx] = F.normalize(mixed, dim=1)
