"""PCA whitening fitted on a gallery (instdisc/whitening.py): the fairness check on the pixel baseline."""

from __future__ import annotations

import pytest
import torch

from instdisc.whitening import fit_whitening, whitened


def _anisotropic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes apart along a quiet axis, hidden under four loud nuisance axes and some noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    x = 0.05 * torch.randn(n, 8, generator=g)
    x[:, :4] += 10.0 * torch.randn(n, 4, generator=g)  # nuisance: large variance, no class information
    x[:, 4] += 0.5 * (2 * labels.float() - 1)  # the class, along an axis of small variance
    return x, labels


def test_whitened_gallery_has_unit_variance_along_every_kept_axis() -> None:
    x, _ = _anisotropic(2000, 0)
    w = fit_whitening(x, dims=8, eps=0.0)
    z = (x - w.mean) @ w.proj
    cov = z.T @ z / len(z)
    assert torch.allclose(cov, torch.eye(8), atol=1e-3)
    assert w.eigenvalues[0] > 80 and bool((w.eigenvalues[:-1] >= w.eigenvalues[1:]).all())  # largest first
    out = w.apply(x)
    assert out.shape == (2000, 8) and torch.allclose(out.norm(dim=1), torch.ones(2000), atol=1e-5)


def test_whitening_lets_the_quiet_class_axis_decide_the_nearest_neighbour() -> None:
    gallery, g_labels = _anisotropic(1000, 1)
    queries, q_labels = _anisotropic(200, 2)

    def nn1(g: torch.Tensor, q: torch.Tensor) -> float:
        g, q = torch.nn.functional.normalize(g, dim=1), torch.nn.functional.normalize(q, dim=1)
        return float((g_labels[(q @ g.T).argmax(1)] == q_labels).float().mean())

    raw = nn1(gallery - gallery.mean(0), queries - gallery.mean(0))
    g_w, q_w = whitened(gallery, queries)
    assert raw < 0.65 and nn1(g_w, q_w) > 0.95  # measured: 0.545 and 1.0


def test_dims_keep_the_largest_axes_and_bad_input_is_refused() -> None:
    x, _ = _anisotropic(500, 3)
    w = fit_whitening(x, dims=3)
    assert w.proj.shape == (8, 3) and w.apply(x[:5]).shape == (5, 3)
    assert fit_whitening(x, dims=100).proj.shape == (8, 8)  # never more axes than dimensions
    with pytest.raises(ValueError, match="gallery"):
        fit_whitening(x[:1])
    with pytest.raises(ValueError, match="dims"):
        fit_whitening(x, dims=0)


def test_two_fits_of_the_same_gallery_give_the_same_axes_whatever_the_row_order():
    """An eigenvector's sign is arbitrary: the fit fixes it (largest component positive), so a gallery
    fitted twice -- in another row order, with other rounding -- whitens every vector the same way."""
    from instdisc.whitening import fit_whitening

    g = torch.randn(400, 16, generator=torch.Generator().manual_seed(0)) * torch.linspace(3, 0.5, 16)
    a, b = fit_whitening(g, dims=16), fit_whitening(g[torch.randperm(400, generator=torch.Generator().manual_seed(1))],
                                                     dims=16)
    assert torch.allclose(a.apply(g), b.apply(g), atol=1e-4)
    big = a.proj.abs().argmax(0)
    assert (a.proj[big, torch.arange(16)] > 0).all()
