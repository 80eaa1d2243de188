"""Instance discrimination in one module: encoder + memory bank + objective.

Like MoCo's builder, all state is explicit: the bank is a buffer of this module (saved in
its ``state_dict``), ``forward`` computes the loss without touching the bank, and the loop
calls :meth:`InstDisc.update_bank` with the step's output after the optimiser step.

Beyond the paper (each off by default; REPRODUCTION.md, "Beyond the paper"): ``views`` >= 2 encodes several augmented
views per image; every view gets the paper's loss against the bank, and each view and the
next are each other's extra positive in a softmax over the batch (Ye et al., CVPR 2019),
symmetrically. Small crops (multi-crop, SwAV) are extra anchors the same way: the paper's
loss against the bank, plus the batch softmax with the first full view. ``bank_weight`` scales
the bank terms; at 0 only the batch softmax trains the encoder (the bank is still updated, for
the monitor and the export) and the step skips the product with all N bank rows. With a
``projector`` (SimCLR's MLP head) the batch softmax runs on the projections and the bank
receives the embeddings (the trunk's features), so it needs ``bank_weight`` 0. ``neighbours``
w > 0 (NNCLR, Dwibedi et al., ICCV 2021) mixes into every view pair's term the same softmax with
the anchor replaced by its nearest bank row other than itself: (1 - w) x the pair term + w x the
neighbour term. Images of one class are then pulled together, not only one image's views; the
loop turns it on from ``neighbours_from`` of the schedule, once the bank's neighbours mean something.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig
from .memory import MemoryBank
from .model import Encoder, embedding_dim
from .objectives import build_objective, cross_view


@dataclass
class StepOutput:
    loss: torch.Tensor  # scalar: bank_weight x mean of the bank terms + mean of the cross-view terms (if any)
    features: torch.Tensor  # (B, embedding d) detached: what the bank receives (the mean of the full views)
    positive_prob: torch.Tensor | None  # (B,) detached P(i | first view), for the gradient bank update; None
    # when the bank loss is off (bank_weight 0)


class InstDisc(nn.Module):
    def __init__(self, cfg: TrainConfig, num_instances: int) -> None:
        super().__init__()
        if cfg.views < 1 or cfg.small_crops < 0:
            raise ValueError(f"views must be >= 1 and small_crops >= 0, got {cfg.views} and {cfg.small_crops}")
        if cfg.bank_weight < 0 or (cfg.bank_weight == 0 and cfg.views < 2 and cfg.small_crops == 0):
            raise ValueError(f"bank_weight must be > 0, or 0 with views >= 2 or small crops (a batch softmax to "
                             f"learn from), got {cfg.bank_weight} with views {cfg.views}")
        if cfg.bank_weight == 0 and cfg.bank_update == "gradient":
            raise ValueError("the gradient bank update needs the bank loss's probabilities: bank_weight must be > 0")
        if not 0.0 <= cfg.neighbours <= 1.0 or not 0.0 <= cfg.neighbours_from <= 1.0:
            raise ValueError(f"neighbours and neighbours_from must be in [0, 1], got {cfg.neighbours} and "
                             f"{cfg.neighbours_from}")
        if cfg.neighbours and (cfg.views < 2 or cfg.projector):
            raise ValueError("neighbour positives replace a view pair's anchor with its nearest bank row: they need "
                             "views >= 2 and no projector (the bank holds embeddings, not projections)")
        if cfg.projector and cfg.bank_weight > 0:
            raise ValueError("a projector head needs bank_weight 0: the bank holds the embeddings (the trunk's "
                             "features), not the projections the loss compares")
        self.encoder = Encoder.from_config(cfg)
        self.bank = MemoryBank(num_instances, embedding_dim(cfg), cfg.memory_momentum, cfg.bank_update)
        self.objective = build_objective(cfg, num_instances)
        self.temperature = cfg.temperature
        self.bank_weight = cfg.bank_weight

    def forward(
        self, views: list[torch.Tensor], idx: torch.Tensor, noise: torch.Tensor | None = None,
        small: torch.Tensor | None = None, neighbours: float = 0.0,
    ) -> StepOutput:
        """The loss of one batch: ``views`` V tensors (B, 3, S, S) of the same B instances ``idx``;
        ``small`` (C*B, 3, s, s) low-resolution crops, crop-major; ``noise`` the objective's rows
        drawn beforehand by :meth:`sample_noise` (for the global batch when data-parallel);
        ``neighbours`` the weight of the nearest-neighbour positives this step (the loop's schedule).
        """
        b = idx.shape[0]
        emb, full = self.encoder.encode(torch.cat(views) if len(views) > 1 else views[0])
        emb, full = emb.view(len(views), b, -1), full.view(len(views), b, -1)  # V x B x embedding d, V x B x d
        # Under the loop's bf16 autocast the objective's matmul runs in bf16 too: measured on the
        # 2-core AMX CPU it is faster than fp32 at 50k bank rows (21.5 vs 33.2 ms a step) and as
        # fast at 1.28M, and its gradient stays within ~1 % of fp64 (BENCHMARKS.md section 2).
        bank_loss = self.bank_weight > 0  # 0: the batch softmax alone (Ye et al.'s own form), no N-row product
        terms = [self.objective(fv, idx, self.bank, noise) for fv in full] if bank_loss else []  # every view
        pairs = []
        if len(views) > 1:  # view v and view v+1 are each other's positive (two views: one symmetric pair)
            for v in range(len(views) if len(views) > 2 else 1):
                a, o = full[v], full[(v + 1) % len(views)]
                for x, y in ((a, o), (o, a)):
                    term = cross_view(x, y, self.temperature)
                    if neighbours > 0:  # NNCLR: the anchor's nearest other bank row (no gradient) as the anchor
                        near = cross_view(self.bank.nearest_other(x, idx), y, self.temperature)
                        term = (1 - neighbours) * term + neighbours * near
                    pairs.append(term)
        if small is not None:
            crops = self.encoder.encode(small)[1].view(-1, b, full.shape[-1])  # C x B x d
            if bank_loss:
                terms += [self.objective(c, idx, self.bank, noise) for c in crops]
            pairs += [cross_view(c, full[0], self.temperature) for c in crops]
        parts = [self.bank_weight * torch.stack([t.loss for t in terms]).mean()] if terms else []
        if pairs:
            parts.append(torch.stack(pairs).mean())
        loss = sum(parts[1:], parts[0])
        feats = F.normalize(emb.detach().float().mean(0), dim=1) if len(views) > 1 else emb[0].detach().float()
        return StepOutput(loss, feats, terms[0].positive_prob if terms else None)

    def sample_noise(self, idx: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor | None:
        """The objective's noise rows for these instances (None for objectives that draw none)."""
        return self.objective.sample_noise(idx, gen)

    @torch.no_grad()
    def update_bank(self, idx: torch.Tensor, out: StepOutput) -> None:
        self.bank.update(idx, out.features, out.positive_prob)
