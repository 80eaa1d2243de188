"""An exponential moving average of the encoder's weights (fast-CIFAR-training habit).

The average is smoother than the last step's weights; with ``TrainConfig.ema`` > 0 the loop
updates it after every optimiser step, and it is the encoder that evaluates, refreshes the
bank, and goes into the checkpoint (``ema_encoder``) for the index and the app's queries.
BatchNorm statistics are averaged like the weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightEMA(nn.Module):
    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """avg <- d avg + (1 - d) w, with d warmed up as min(decay, (1 + t) / (10 + t)) so early
        averages are not dominated by the random initialisation."""
        t = int(self.updates)
        d = min(self.decay, (1 + t) / (10 + t))
        for avg, cur in zip(self.module.state_dict().values(), model.state_dict().values(), strict=True):
            if avg.dtype.is_floating_point:
                avg.mul_(d).add_(cur.detach(), alpha=1 - d)
            else:
                avg.copy_(cur)
        self.updates += 1
