"""Objectives against direct reference computations on tiny tensors (value and gradient)."""

import math

import pytest
import torch
import torch.nn.functional as F

from instdisc.config import TrainConfig
from instdisc.memory import MemoryBank
from instdisc.objectives import NCE, NonParametricSoftmax, ParametricSoftmax, build_objective


def _setup(n=7, d=5, b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    bank = MemoryBank(n, d)
    bank.reset_random(g)
    f = F.normalize(torch.randn(b, d, generator=g), dim=1).requires_grad_(True)
    idx = torch.tensor([4, 0, 6])[:b]
    return bank, f, idx


def test_softmax_matches_direct_formula():
    bank, f, idx = _setup()
    tau = 0.1
    loss = NonParametricSoftmax(tau)(f, idx, bank).loss
    ref = 0.0
    for r in range(f.shape[0]):
        num = math.exp(float(bank.features[idx[r]] @ f[r].detach()) / tau)
        den = sum(math.exp(float(bank.features[j] @ f[r].detach()) / tau) for j in range(7))
        ref += -math.log(num / den)
    assert loss.item() == pytest.approx(ref / f.shape[0], rel=1e-5)
    (g,) = torch.autograd.grad(loss, f)
    # d/df of -log softmax: (sum_j p_j v_j - v_i) / tau / B
    p = torch.softmax(f.detach() @ bank.features.t() / tau, 1)
    expected = (p @ bank.features - bank.features[idx]) / tau / f.shape[0]
    assert torch.allclose(g, expected, atol=1e-5)


def test_nce_matches_direct_formula_and_excludes_positive():
    n, m, tau = 50, 6, 0.07
    bank, f, idx = _setup(n=n)
    nce = NCE(n, tau, m)
    noise = nce.sample_noise(idx, torch.Generator().manual_seed(3))
    assert not (noise == idx.view(-1, 1)).any()
    loss = nce(f, idx, bank, noise).loss
    # Reference: Z from this first batch = mean(exp(s/tau)) * N over positive + noise scores.
    rows = torch.cat([idx.view(-1, 1), noise], 1)
    s = torch.stack([torch.stack([bank.features[j] @ f[r] for j in rows[r]]) for r in range(3)]).detach()
    z = torch.exp(s / tau).mean() * n
    pn = 1 / n
    ref = 0.0
    for r in range(3):
        p_pos = math.exp(s[r, 0] / tau) / z
        ref += math.log(p_pos / (p_pos + m * pn))
        for j in range(1, m + 1):
            p_noise = math.exp(s[r, j] / tau) / z
            ref += math.log(m * pn / (p_noise + m * pn))
    assert loss.item() == pytest.approx(-ref / 3, rel=1e-4)
    assert nce.log_z.item() == pytest.approx(math.log(float(z)), rel=1e-5)
    # Gradient against autograd through a plain-float reimplementation.
    f2 = f.detach().clone().requires_grad_(True)
    s2 = torch.einsum("bkd,bd->bk", bank.features[rows], f2) / tau
    p2 = torch.exp(s2) / z
    ref_t = -(torch.log(p2[:, 0] / (p2[:, 0] + m * pn)) + torch.log(m * pn / (p2[:, 1:] + m * pn)).sum(1)).mean()
    (g_ref,) = torch.autograd.grad(ref_t, f2)
    (g,) = torch.autograd.grad(nce(f, idx, bank, noise).loss, f)
    assert torch.allclose(g, g_ref, atol=1e-4)


def test_nce_z_fixed_vs_running_average():
    bank, f, idx = _setup(n=40)
    fixed, ema = NCE(40, 0.1, 5), NCE(40, 0.1, 5, z_momentum=0.5)
    noise = fixed.sample_noise(idx, torch.Generator().manual_seed(0))
    fixed(f, idx, bank, noise)
    ema(f, idx, bank, noise)
    z0 = fixed.log_z.item()
    assert ema.log_z.item() == pytest.approx(z0)
    f_other = F.normalize(torch.randn(3, 5, generator=torch.Generator().manual_seed(9)), dim=1)
    noise = fixed.sample_noise(idx, torch.Generator().manual_seed(1))
    fixed(f_other, idx, bank, noise)
    ema(f_other, idx, bank, noise)
    assert fixed.log_z.item() == z0  # the paper: constant after the first batch
    assert ema.log_z.item() != pytest.approx(z0)  # the running average moves
    assert "log_z" in fixed.state_dict()  # saved with checkpoints


def test_parametric_softmax_is_linear_classifier_cross_entropy():
    bank, f, idx = _setup()
    obj = ParametricSoftmax(7, 5)
    loss = obj(f, idx, bank).loss
    logits = f @ obj.classifier.weight.t()
    assert loss.item() == pytest.approx(F.cross_entropy(logits, idx).item(), rel=1e-6)
    loss.backward()
    assert obj.classifier.weight.grad is not None and f.grad is not None


def test_objectives_do_not_write_the_bank():
    for name in ("softmax", "nce", "parametric"):
        bank, f, idx = _setup(n=20)
        before = bank.features.clone()
        obj = build_objective(TrainConfig(objective=name, low_dim=5, nce_k=4), 20)
        obj(f, idx, bank, obj.sample_noise(idx, torch.Generator().manual_seed(0))).loss.backward()
        assert torch.equal(bank.features, before)


def test_unknown_objective_is_rejected():
    with pytest.raises(ValueError, match="unknown objective"):
        build_objective(TrainConfig(objective="triplet"), 10)



@pytest.mark.parametrize("tau", [0.07, 0.1])
def test_softmax_under_bf16_autocast_stays_close_to_fp64(tau):
    """The loop runs the objective under bf16 autocast (faster on AMX/GPUs); its loss and gradient
    must stay close to an fp64 computation on a CIFAR-sized bank (measured ~1 % median)."""
    g = torch.Generator().manual_seed(0)
    n, b, d = 50_000, 32, 128
    bank = MemoryBank(n, d)
    bank.reset_random(g)
    idx = torch.randint(0, n, (b,), generator=g)
    # features near their own rows, as in a trained model, so the positive dominates the softmax
    f0 = F.normalize(bank.features[idx] + 0.6 * F.normalize(torch.randn(b, d, generator=g), dim=1), dim=1)
    obj = NonParametricSoftmax(tau)

    f64 = f0.double().requires_grad_(True)
    ref = F.cross_entropy(f64 @ bank.features.double().t() / tau, idx)
    (g64,) = torch.autograd.grad(ref, f64)
    f = f0.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = obj(f, idx, bank).loss
    (gb,) = torch.autograd.grad(loss, f)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref.item(), rel=5e-3)
    rel = (gb.double() - g64).norm(dim=1) / g64.norm(dim=1)
    assert rel.median() < 0.03 and rel.max() < 0.1
    assert F.cosine_similarity(gb.double(), g64, dim=1).min() > 0.995


@pytest.mark.parametrize("tau", [0.07, 0.1])
def test_nce_under_bf16_autocast_stays_close_to_fp64(tau):
    """NCE at CIFAR scale (N = 50k, m = 4096) under the loop's bf16 autocast: loss and gradient as in
    fp64 with the same noise rows and Z. Before the post-product maths moved to fp32 the loss was off
    by up to 30 % (1.15 vs 1.69) although the gradient agreed."""
    g = torch.Generator().manual_seed(0)
    n, b, d, m = 50_000, 32, 128, 4096
    bank = MemoryBank(n, d)
    bank.reset_random(g)
    idx = torch.randint(0, n, (b,), generator=g)
    f0 = F.normalize(bank.features[idx] + 0.6 * F.normalize(torch.randn(b, d, generator=g), dim=1), dim=1)
    ref_obj, obj = NCE(n, tau, m), NCE(n, tau, m)
    noise = ref_obj.sample_noise(idx, torch.Generator().manual_seed(1))
    bank64 = MemoryBank(n, d)
    bank64.features = bank.features.double()
    f64 = f0.double().requires_grad_(True)
    ref = ref_obj(f64, idx, bank64, noise).loss
    (g64,) = torch.autograd.grad(ref, f64)
    f = f0.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = obj(f, idx, bank, noise).loss
    (gb,) = torch.autograd.grad(loss, f)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref.item(), rel=0.03)
    rel = (gb.double() - g64).norm(dim=1) / g64.norm(dim=1)
    assert rel.median() < 0.03 and rel.max() < 0.1


def _float64_batch(seed: int, n: int, d: int, b: int) -> tuple[MemoryBank, torch.Tensor, torch.Tensor]:
    """A random float64 bank and a batch of features near their own rows."""
    g = torch.Generator().manual_seed(seed)
    bank = MemoryBank(n, d)
    bank.reset_random(g)
    bank.features = bank.features.double()
    idx = torch.randint(0, n, (b,), generator=g)
    f = F.normalize(bank.features[idx] + F.normalize(torch.randn(b, d, generator=g).double(), dim=1), dim=1)
    return bank, idx, f


def _paper_nce(bank: MemoryBank, f: torch.Tensor, idx: torch.Tensor, noise: torch.Tensor, tau: float,
               z_of_row, drop_own: bool = False) -> tuple[float, torch.Tensor]:  # noqa: ANN001 (row, exp scores -> Z)
    """The paper's NCE loss and analytic gradient in plain float64 loops, with Z given per row:
    h = P/(P + m Pn), loss = -log h(pos) - sum log(1 - h), dL/df = [-(1 - h_pos) v_pos + sum h_j v_j] / (tau B).
    ``drop_own``: a row's own instance among its noise draws is left out (m stays the draw's size)."""
    n, b, m = bank.features.shape[0], f.shape[0], noise.shape[1]
    v, fn = bank.features.numpy(), f.numpy()
    loss, grad = 0.0, torch.zeros_like(f)
    for r in range(b):
        rows = [int(idx[r]), *[j for j in noise[r].tolist() if not (drop_own and j == int(idx[r]))]]
        e = [math.exp(float(v[j] @ fn[r]) / tau) for j in rows]
        z = z_of_row(r, e)
        hs = [x / z / (x / z + m / n) for x in e]
        loss -= math.log(hs[0]) + sum(math.log(1 - h) for h in hs[1:])
        grad[r] = (-(1 - hs[0]) * bank.features[rows[0]]
                   + sum(h * bank.features[j] for h, j in zip(hs[1:], rows[1:], strict=True))) / (tau * b)
    return loss / b, grad


def _scores(bank: MemoryBank, f: torch.Tensor, idx: torch.Tensor, noise: torch.Tensor, tau: float) -> list[list[float]]:
    """Per row, v_j . f / tau for the positive then each noise draw, in float64."""
    v, fn = bank.features.numpy(), f.numpy()
    return [[float(v[j] @ fn[r]) / tau for j in [int(idx[r]), *noise[r].tolist()]] for r in range(f.shape[0])]


def _first_batch_z(nce: NCE, bank: MemoryBank, f: torch.Tensor, idx: torch.Tensor, noise: torch.Tensor) -> float:
    """Check the constant Z the objective fixed: N x the mean of exp over the first batch's positive and noise
    scores (the paper's estimate); returns the Z it holds (float32), for the reference to use."""
    scores = _scores(bank, f, idx, noise, nce.temperature)
    z = nce.num_instances * sum(math.exp(s) for row in scores for s in row) / (len(scores) * len(scores[0]))
    assert float(nce.log_z) == pytest.approx(math.log(z), rel=1e-6)  # the buffer holds it in float32
    return math.exp(float(nce.log_z))


def test_nce_loss_and_gradient_match_the_papers_equations_in_float64():
    """The paper's NCE written out independently in float64 -- P(i|f) = exp(v_i.f/tau)/Z,
    h = P/(P + m Pn), Pn = 1/N, loss = -log h(pos) - sum_noise log(1 - h) -- and its analytic gradient
    dL/df = [-(1 - h_pos) v_pos + sum_j h_j v_j] / (tau B), with Z held constant as the paper does."""
    n, d, b, m, tau = 300, 16, 6, 25, 0.07
    bank, idx, f = _float64_batch(5, n, d, b)
    nce = NCE(n, tau, m)
    noise = nce.sample_noise(idx, torch.Generator().manual_seed(2))
    fg = f.clone().requires_grad_(True)
    loss = nce(fg, idx, bank, noise).loss
    (grad,) = torch.autograd.grad(loss, fg)
    z = _first_batch_z(nce, bank, f, idx, noise)
    ref_loss, ref_grad = _paper_nce(bank, f, idx, noise, tau, lambda r, e: z)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-10)
    assert torch.allclose(grad, ref_grad, rtol=1e-9, atol=1e-12)


def test_nce_noise_is_uniform_over_the_other_instances():
    """Pn = 1/N over the bank, the positive excluded: every other row as likely as any other."""
    n = 10
    nce = NCE(n, 0.07, 2000)
    idx = torch.full((20,), 3)
    noise = nce.sample_noise(idx, torch.Generator().manual_seed(0))
    counts = torch.bincount(noise.flatten(), minlength=n).double()
    assert counts[3] == 0
    others = counts[torch.arange(n) != 3]
    expected = noise.numel() / (n - 1)
    chi2 = float(((others - expected) ** 2 / expected).sum())
    assert chi2 < 26.1  # the 99.9 % point of chi-square with 8 degrees of freedom


def test_nce_per_sample_z_matches_its_equations_in_float64():
    """Per-sample normaliser: Z_i = N x mean over row i's own m noise rows of exp(v_j . f_i / tau), no
    gradient through it; the rest is the paper's NCE, loss and analytic gradient as above."""
    n, d, b, m, tau = 200, 12, 5, 30, 0.1
    bank, idx, f = _float64_batch(7, n, d, b)
    nce = NCE(n, tau, m, per_sample_z=True)
    noise = nce.sample_noise(idx, torch.Generator().manual_seed(4))
    fg = f.clone().requires_grad_(True)
    loss = nce(fg, idx, bank, noise).loss
    (grad,) = torch.autograd.grad(loss, fg)
    zs: list[float] = []

    def own_z(r: int, e: list[float]) -> float:  # N x the mean over the row's noise rows (not the positive)
        zs.append(n * sum(e[1:]) / m)
        return zs[-1]

    ref_loss, ref_grad = _paper_nce(bank, f, idx, noise, tau, own_z)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-10)
    assert torch.allclose(grad, ref_grad, rtol=1e-9, atol=1e-12)
    assert float(nce.log_z) == pytest.approx(math.log(sum(zs) / b), rel=1e-6)  # logged: the batch mean
    with pytest.raises(ValueError, match="no z_momentum"):
        NCE(n, tau, m, z_momentum=0.9, per_sample_z=True)
    with pytest.raises(ValueError, match="unknown nce_z"):
        build_objective(TrainConfig(objective="nce", nce_z="exact"), n)


def _noise_weights(nce: NCE, f: torch.Tensor, idx: torch.Tensor, bank: MemoryBank, noise: torch.Tensor) -> torch.Tensor:
    """Per sample, sum_j h_j: the total weight of the noise rows in the real objective's gradient.

    Read from autograd through the bank rows, one sample at a time (Z already fixed by the whole batch):
    dL/dv = -(1 - h_pos) f / tau at the positive row and h_j f / tau at each noise row."""
    nce(f, idx, bank, noise)  # the first batch fixes the constant Z, as in training
    out = []
    for r in range(len(idx)):
        rows = bank.features.detach().clone().requires_grad_(True)
        one = MemoryBank(*rows.shape)
        one.features = rows
        (g,) = torch.autograd.grad(nce(f[r : r + 1], idx[r : r + 1], one, noise[r : r + 1]).loss, rows)
        out.append(float((g.sum(0) - g[idx[r]]) @ f[r]) * nce.temperature)
    return torch.tensor(out)


def test_constant_z_pushes_dense_regions_apart_per_sample_z_does_not():
    """NCE's slow start, the cause: with one Z for all samples the push away from the noise rows is Z_i / Z times the
    softmax's (whose total is always 1), so a sample among many similar rows (a class cluster) is pushed
    out hardest and an isolated one barely; each row's own Z gives every sample the softmax's weight."""
    g = torch.Generator().manual_seed(0)
    n, d, m, tau = 4000, 32, 1000, 0.1
    centre = F.normalize(torch.randn(d, generator=g), dim=0)
    feats = F.normalize(torch.randn(n, d, generator=g), dim=1)
    feats[:1000] = F.normalize(centre + 0.15 * torch.randn(1000, d, generator=g), dim=1)  # a dense cluster
    bank = MemoryBank(n, d)
    bank.features = feats
    idx = torch.tensor([0, 1, 2000, 3000])  # two in the cluster, two isolated
    f = feats[idx].clone()
    constant, own = NCE(n, tau, m), NCE(n, tau, m, per_sample_z=True)
    noise = constant.sample_noise(idx, torch.Generator().manual_seed(1))
    w_const = _noise_weights(constant, f, idx, bank, noise)
    w_own = _noise_weights(own, f, idx, bank, noise)
    # exact normalisers over the other rows: the ratio the constant Z's weight should follow
    s = f @ feats.t() / tau
    s[torch.arange(4), idx] = -math.inf
    ratio = torch.exp(torch.logsumexp(s, 1) - constant.log_z)
    assert torch.allclose(w_const, ratio, rtol=0.15)
    assert w_const[:2].min() > 5 * w_const[2:].max()  # the cluster's members pushed out far harder
    assert torch.allclose(w_own, torch.ones(4), atol=0.05)  # the softmax's weight, whatever the density


def test_nce_shared_noise_is_the_papers_nce_over_one_draw_without_the_own_instance():
    """``nce_noise shared``: one draw of m rows for the batch; each row's loss and gradient are the paper's
    NCE over that draw with its own instance left out (m stays the draw's size in h = P/(P + m Pn)), and Z
    is the same Monte-Carlo mean over every score as the per-sample path's."""
    n, d, b, m, tau = 300, 16, 6, 25, 0.07
    bank, idx, f = _float64_batch(9, n, d, b)
    nce = NCE(n, tau, m, shared_noise=True)
    noise = nce.sample_noise(idx, torch.Generator().manual_seed(3))
    assert noise.shape == (b, m) and bool((noise == noise[0]).all())  # one draw, every row
    noise = noise[0].clone()
    noise[3], noise[7] = idx[0], idx[2]  # two samples drew their own instance
    noise = noise.expand(b, -1)
    fg = f.clone().requires_grad_(True)
    loss = nce(fg, idx, bank, noise).loss
    (grad,) = torch.autograd.grad(loss, fg)
    z = _first_batch_z(nce, bank, f, idx, noise)
    ref_loss, ref_grad = _paper_nce(bank, f, idx, noise, tau, lambda r, e: z, drop_own=True)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-10)
    assert torch.allclose(grad, ref_grad, rtol=1e-9, atol=1e-12)
    # the per-sample normaliser over a shared draw: N x the mean over all m draws (own ones included)
    per = NCE(n, tau, m, per_sample_z=True, shared_noise=True)
    per(f, idx, bank, noise)
    zs = [n * sum(math.exp(s) for s in row[1:]) / m for row in _scores(bank, f, idx, noise, tau)]
    assert float(per.log_z) == pytest.approx(math.log(sum(zs) / b), rel=1e-6)
    with pytest.raises(ValueError, match="unknown nce_noise"):
        build_objective(TrainConfig(objective="nce", nce_noise="batch"), n)


def test_nce_shared_draw_is_uniform_over_all_instances():
    nce = NCE(10, 0.07, 4000, shared_noise=True)
    counts = torch.bincount(nce.sample_noise(torch.tensor([3, 5]), torch.Generator().manual_seed(0))[0],
                            minlength=10).double()
    chi2 = float(((counts - 400) ** 2 / 400).sum())
    assert chi2 < 27.9  # the 99.9 % point of chi-square with 9 degrees of freedom
