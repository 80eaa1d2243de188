"""The three objectives compared in the paper's Table 1, behind one interface.

Every objective takes the batch's L2-normalised features ``f`` (B x d), the instance indices
``idx`` and the memory bank, and returns an :class:`ObjectiveOutput`; gradients flow into
``f`` only -- the bank is a buffer. :func:`cross_view` is the extra term of the multi-view
levers: a softmax over the batch between two views of the same images. Each is
checked in ``tests/test_objectives.py`` / ``tests/test_levers.py`` against a direct computation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig
from .distributed import log_mean_exp
from .memory import MemoryBank


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor  # scalar
    positive_prob: torch.Tensor  # (B,) detached P(i | f_i): the gradient bank update's step size is 1 - P


class Objective(nn.Module):
    """The shared interface: ``forward(f, idx, bank, noise)``; ``sample_noise`` draws nothing."""

    def sample_noise(self, idx: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor | None:
        return None

    def forward(
        self, f: torch.Tensor, idx: torch.Tensor, bank: MemoryBank, noise: torch.Tensor | None = None
    ) -> ObjectiveOutput:
        raise NotImplementedError


def cross_view(anchor: torch.Tensor, other: torch.Tensor, temperature: float) -> torch.Tensor:
    """-log softmax over the batch: anchor i's positive is ``other[i]``, its negatives ``other[j != i]``
    (B x d each; Ye et al. 2019 / SimCLR without the projection head).

    Positives and negatives are both fresh features of this step. Taking the positive from the
    other view but the negatives from the bank instead lets the encoder tell "this step's
    features" from "the bank's" rather than one image from another: measured on CIFAR-10 it
    collapsed to chance (10.0 % kNN) within an epoch (results/efficiency/rejected/).
    """
    logits = (anchor / temperature) @ other.t()  # B x B
    return F.cross_entropy(logits.float(), torch.arange(anchor.shape[0], device=anchor.device))


class NonParametricSoftmax(Objective):
    """-log [exp(v_i . f / tau) / sum_j exp(v_j . f / tau)] over all N bank rows.

    ``self_distill`` > 0 adds Cao & Wu's (2024) self-distillation term, as we read it: the KL
    divergence from the square-root-renormalised softmax q = sqrt(p) / sum sqrt(p) (a detached,
    flatter target, the same as the softmax at 2 tau) to p. Every bank row then gets a gradient
    in proportion to its similarity, not only the positive, which is updated once an epoch.
    """

    def __init__(self, temperature: float, self_distill: float = 0.0) -> None:
        super().__init__()
        if self_distill < 0:
            raise ValueError(f"self_distill must be >= 0, got {self_distill}")
        self.temperature = temperature
        self.self_distill = self_distill

    def forward(
        self, f: torch.Tensor, idx: torch.Tensor, bank: MemoryBank, noise: torch.Tensor | None = None
    ) -> ObjectiveOutput:
        idx = idx.to(f.device)
        # 1/tau scales the B x d features, not the B x N logits: the same numbers, N/d times fewer divisions
        logits = (f / self.temperature) @ bank.features.t()  # B x N
        log_p = F.log_softmax(logits.float(), dim=1)  # B x N
        loss = F.nll_loss(log_p, idx)
        if self.self_distill:
            with torch.no_grad():
                q = F.softmax(logits.float() / 2, dim=1)  # sqrt(p), renormalised
            loss = loss + self.self_distill * (q * (q.clamp_min(1e-30).log() - log_p)).sum(1).mean()
        return ObjectiveOutput(loss, log_p.detach().gather(1, idx.view(-1, 1)).squeeze(1).exp())


class NCE(Objective):
    """Noise-contrastive estimation with m uniform noise rows (Pn = 1/N).

    The normaliser Z is a constant fixed from the first batch, as in the paper
    (``z_momentum=None``), or an exponential moving average of the per-batch estimate
    (the common fix for a badly estimated first-batch Z). Z is a buffer, so it is saved and
    a resumed run continues with the same value. Unlike the reference code, the positive is
    never drawn as its own noise sample.

    ``per_sample_z=True`` gives each row its own normaliser, Z_i = N x the mean of exp(v_j . f_i / tau)
    over that row's m noise rows (no gradient). Why: with one Z for every sample the expected push
    away from the noise rows is Z_i / Z times the softmax's, so samples in dense regions (Z_i > Z:
    images with many similar ones, i.e. their own class) are pushed apart hardest until every sample
    has the same Z_i -- the constraint of self-normalisation, which fights the clusters kNN needs.
    With Z_i the expected gradient is the full softmax's (results/nce/, REPRODUCTION.md).
    ``log_z`` then holds the last batch's mean, for logging.

    ``shared_noise=True`` draws one set of m noise rows for the whole batch instead of m per row
    (the paper's): the scores are one B x d by d x m product instead of a gather of B x (m+1) bank
    rows (128 x 4,097 x 128 floats a step at m = 4096), so NCE costs what a softmax over m rows
    costs. Each row's noise is still m uniform draws; rows are correlated through the shared draw.
    A row whose own instance is among the draws drops that entry (m/N of rows lose one, on average).
    """

    def __init__(
        self, num_instances: int, temperature: float, num_noise: int, z_momentum: float | None = None,
        per_sample_z: bool = False, shared_noise: bool = False,
    ) -> None:
        super().__init__()
        if num_instances < 2:
            raise ValueError("NCE needs at least 2 instances")
        if per_sample_z and z_momentum is not None:
            raise ValueError("per-sample Z is estimated afresh each step: it takes no z_momentum")
        self.per_sample_z = per_sample_z
        self.shared_noise = shared_noise
        self.temperature = temperature
        self.num_noise = num_noise
        self.num_instances = num_instances
        self.z_momentum = z_momentum
        self.register_buffer("log_z", torch.tensor(float("nan")))

    def sample_noise(self, idx: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """Uniform over the N - 1 other instances: draw from [0, N-2], shift past the positive. Shared:
        one draw of m over all N, the same row for every sample (B x m, expanded: sliced per rank like
        per-sample noise); the forward masks a sample's own instance."""
        if self.shared_noise:
            return torch.randint(0, self.num_instances, (1, self.num_noise), generator=gen).expand(idx.shape[0], -1)
        noise = torch.randint(0, self.num_instances - 1, (idx.shape[0], self.num_noise), generator=gen)
        return noise + (noise >= idx.cpu().view(-1, 1)).long()

    def forward(
        self, f: torch.Tensor, idx: torch.Tensor, bank: MemoryBank, noise: torch.Tensor | None = None
    ) -> ObjectiveOutput:
        """``noise``: the noise rows (B x m) drawn by :meth:`sample_noise`; data-parallel training draws
        them for the global batch and gives each rank its slice, so a sample's noise does not depend on
        the rank count."""
        if noise is None:
            raise ValueError("NCE needs noise rows: draw them with sample_noise(idx, generator)")
        noise = noise.to(f.device)
        idx = idx.to(f.device)
        fs = f / self.temperature
        # the score products may run in bf16 under autocast; everything after them in fp32: in bf16,
        # log(P + m Pn) ~ -2.5 has a resolution of 0.016, coarser than a noise sample's term (~1e-3), which
        # put the reported loss up to 30 % off (gradients stayed within 2 %; tests/test_objectives.py)
        if self.shared_noise:
            shared = noise[0]  # m: the batch's one draw
            own = noise == idx.view(-1, 1)  # B x m: a sample's own instance drawn as its noise
            log_s = torch.cat([(fs * bank.features[idx]).sum(1, keepdim=True),
                               fs @ bank.features[shared].t()], 1)  # B x (m+1), positive first
        else:
            own = None
            rows = torch.cat([idx.view(-1, 1), noise], 1)  # B x (m+1), positive first
            log_s = torch.einsum("bkd,bd->bk", bank.features[rows], fs)  # log exp(s/tau); gather B x (m+1) x d
        log_s = log_s.to(torch.promote_types(log_s.dtype, torch.float32))  # bf16 -> fp32; fp64 stays fp64
        kept = None if own is None else (~own).to(log_s.dtype)  # B x m: 1 for a noise entry the loss counts
        # Z's Monte-Carlo estimates keep every draw: Z_i sums over all N instances, the row's own included,
        # so a shared draw (uniform over all N) is an unbiased sample for it as it is
        with torch.no_grad():
            if self.per_sample_z:  # B x 1: N x mean over the row's own noise draws; log_z keeps the batch mean
                log_z = torch.logsumexp(log_s[:, 1:], 1, keepdim=True) + math.log(self.num_instances / self.num_noise)
                self.log_z.copy_(log_mean_exp(log_z.flatten()))
            else:
                # over every rank's batch when data-parallel, so all ranks hold the same Z
                batch_log_z = log_mean_exp(log_s.flatten()) + math.log(self.num_instances)
                if torch.isnan(self.log_z):
                    self.log_z.copy_(batch_log_z)
                elif self.z_momentum is not None:
                    z = self.z_momentum * self.log_z.exp() + (1 - self.z_momentum) * batch_log_z.exp()
                    self.log_z.copy_(z.log())
                log_z = self.log_z
        log_p = log_s - log_z  # log P(i|v)
        log_m_pn = math.log(self.num_noise / self.num_instances)
        # h = P / (P + m Pn); data term log h(pos), noise term log(1 - h(noise)).
        log_denominator = torch.logaddexp(log_p, torch.full_like(log_p, log_m_pn))
        data = log_p[:, 0] - log_denominator[:, 0]
        noise_terms = log_m_pn - log_denominator[:, 1:]  # B x m
        noise_term = (noise_terms if kept is None else noise_terms * kept).sum(1)
        return ObjectiveOutput(-(data + noise_term).mean(), log_p[:, 0].detach().exp().clamp(max=1.0))


class ParametricSoftmax(Objective):
    """The baseline: a learned N-way linear classifier on the features, P = softmax(W f).

    It has no bank and no temperature, so the multi-view levers do not apply to it.
    """

    def __init__(self, num_instances: int, dim: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(dim, num_instances, bias=False)

    def forward(
        self, f: torch.Tensor, idx: torch.Tensor, bank: MemoryBank, noise: torch.Tensor | None = None
    ) -> ObjectiveOutput:
        idx = idx.to(f.device)
        log_p = F.log_softmax(self.classifier(f).float(), dim=1)
        return ObjectiveOutput(F.nll_loss(log_p, idx), log_p.detach().gather(1, idx.view(-1, 1)).squeeze(1).exp())


OBJECTIVES = ("softmax", "nce", "parametric")
NCE_Z = ("constant", "per-sample")
NCE_NOISE = ("per-sample", "shared")


def build_objective(cfg: TrainConfig, num_instances: int) -> Objective:
    """The objective a configuration names, with only the arguments it uses."""
    if cfg.self_distill and cfg.objective != "softmax":
        raise ValueError("self_distill needs the full softmax (objective softmax)")
    if cfg.objective == "softmax":
        return NonParametricSoftmax(cfg.temperature, cfg.self_distill)
    if cfg.objective == "nce":
        if cfg.nce_z not in NCE_Z:
            raise ValueError(f"unknown nce_z {cfg.nce_z!r}; choose one of {NCE_Z}")
        if cfg.nce_noise not in NCE_NOISE:
            raise ValueError(f"unknown nce_noise {cfg.nce_noise!r}; choose one of {NCE_NOISE}")
        return NCE(num_instances, cfg.temperature, cfg.nce_k, cfg.z_momentum if cfg.z_momentum >= 0 else None,
                   per_sample_z=cfg.nce_z == "per-sample", shared_noise=cfg.nce_noise == "shared")
    if cfg.objective == "parametric":
        if cfg.views > 1 or cfg.small_crops:
            raise ValueError("views/small_crops need the softmax or nce objective, not the parametric classifier")
        return ParametricSoftmax(num_instances, cfg.low_dim)
    raise ValueError(f"unknown objective {cfg.objective!r}; choose one of {OBJECTIVES}")
