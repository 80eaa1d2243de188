"""experiments/nce_diagnosis.py's probe: the normaliser statistics against direct sums."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
from nce_diagnosis import normaliser_stats  # noqa: E402


def _batch(n=2000, d=16, b=8, m=500, seed=0):
    g = torch.Generator().manual_seed(seed)
    bank = F.normalize(torch.randn(n, d, generator=g), dim=1)
    idx = torch.randint(0, n, (b,), generator=g)
    f = F.normalize(bank[idx] + 0.5 * torch.randn(b, d, generator=g), dim=1)
    noise = torch.randint(0, n, (b, m), generator=g)
    return f, idx, bank, noise


def test_exact_normaliser_is_the_sum_over_the_bank():
    f, idx, bank, noise = _batch()
    tau = 0.1
    st = normaliser_stats(0, f, idx, bank, noise, tau, float("nan"))
    e = (bank.double().numpy() @ f.double().numpy().T / tau).T  # b x n scores, summed directly in numpy
    zi = [float(sum(math.exp(x) for x in row)) for row in e]
    assert st.log_z_exact == pytest.approx(math.log(sum(zi) / len(zi)), rel=1e-9)
    assert st.p_positive_softmax == pytest.approx(
        sum(math.exp(e[i, int(idx[i])]) / zi[i] for i in range(len(f))) / len(f), rel=1e-9)
    assert math.isnan(st.noise_weight) and math.isnan(st.h_positive)  # no Z used: the softmax
    assert 0.7 < st.noise_weight_exact_z < 1.3  # m noise rows under the exact Z weigh about 1 in all


def test_noise_weight_falls_in_proportion_when_z_is_too_large():
    f, idx, bank, noise = _batch()
    right = normaliser_stats(0, f, idx, bank, noise, 0.1, float(normaliser_stats(
        0, f, idx, bank, noise, 0.1, float("nan")).log_z_exact))
    large = normaliser_stats(0, f, idx, bank, noise, 0.1, right.log_z_used + math.log(100))
    assert 0.7 < right.noise_weight < 1.3
    assert large.noise_weight == pytest.approx(right.noise_weight / 100, rel=0.05)  # h ~ P/(m Pn) when small
    assert large.h_positive < right.h_positive
