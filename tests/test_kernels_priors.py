"""Kernels and priors: derivatives, scores, normalisation, sampling and marginal CFs."""
import math

import pytest
import torch
from scipy import integrate, stats

from kerjepa import kernels, priors
from tolerances import assert_reordered

PRIORS = [priors.Gaussian(1.3), priors.Laplace(0.7), priors.StudentT(nu=4.0, sigma=0.9)]
IDS = ["gaussian", "laplace", "student_t"]


@pytest.mark.parametrize("kernel", [kernels.Gaussian(0.7), kernels.IMQ(0.4, 0.5), kernels.IMQ(1.3, 2.5)])
def test_phi_derivatives_match_autograd(kernel):
    r2 = torch.linspace(0.0, 6.0, 25, dtype=torch.float64, requires_grad=True)
    phi, dphi, d2phi = kernel.phi_and_derivatives(r2)
    (g,) = torch.autograd.grad(phi.sum(), r2, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), r2)
    assert_reordered(dphi, g)
    assert_reordered(d2phi, h)


def test_gram_matches_definition(gen):
    x, y = torch.randn(4, 3, generator=gen, dtype=torch.float64), torch.randn(5, 3, generator=gen, dtype=torch.float64)
    r2 = ((x[:, None] - y[None]) ** 2).sum(-1)
    torch.testing.assert_close(kernels.Gaussian(0.3)(x, y), torch.exp(-0.3 * r2))
    torch.testing.assert_close(kernels.IMQ(0.3, 0.7)(x, y), (1 + 0.3 * r2) ** -0.7)
    assert torch.all(kernels.sqdist(x).diagonal() == 0)


def test_bandwidth_rules(gen):
    z = torch.randn(30, 8, generator=gen, dtype=torch.float64)
    assert kernels.Gaussian().resolve(z).gamma == 1 / 16
    assert kernels.IMQ(beta=1.5).resolve(dim=4).alpha == 1 / 8
    r2 = kernels.sqdist(z)
    i, j = torch.triu_indices(30, 30, 1)
    assert kernels.Gaussian("median").resolve(z).gamma == pytest.approx(1 / float(r2[i, j].median()))
    with pytest.raises(ValueError, match="resolve"):
        kernels.Gaussian().phi(torch.ones(2))


@pytest.mark.parametrize("prior", PRIORS, ids=IDS)
def test_score_is_gradient_of_log_prob(prior, gen):
    z = torch.randn(6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(prior.log_prob(z).sum(), z)
    # the Laplace score is smoothed within eps * sigma of 0; these points are far from it
    torch.testing.assert_close(prior.score(z), g, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("prior", PRIORS, ids=IDS)
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_log_prob_is_normalised(prior, dim):
    """Integrate the density radially: surface area of S^{D-1} times int r^{D-1} p(r) dr."""
    area = 2 * math.pi ** (dim / 2) / math.gamma(dim / 2)

    def radial(r):
        x = torch.zeros(1, dim, dtype=torch.float64)
        x[0, 0] = r
        return float(prior.log_prob(x).exp()) * r ** (dim - 1) * area

    total = integrate.quad(radial, 0, math.inf, limit=200)[0]
    assert total == pytest.approx(1.0, rel=1e-7)


@pytest.mark.parametrize("prior", PRIORS, ids=IDS)
def test_samples_match_the_density(prior, gen):
    """Radii of the samples follow the radial law of log_prob (Kolmogorov–Smirnov)."""
    dim = 3
    y = prior.sample(4000, dim, generator=gen, dtype=torch.float64)
    area = 2 * math.pi ** (dim / 2) / math.gamma(dim / 2)

    def cdf(r):
        x = lambda s: float(prior.log_prob(torch.tensor([[s, 0.0, 0.0]], dtype=torch.float64)).exp()) * s * s * area
        return integrate.quad(x, 0, r)[0]

    radii = y.norm(dim=1).numpy()
    grid = torch.quantile(torch.from_numpy(radii), torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9], dtype=torch.float64))
    for q, r in zip((0.1, 0.3, 0.5, 0.7, 0.9), grid.tolist()):
        assert cdf(r) == pytest.approx(q, abs=0.03)
    # directions are uniform: the mean direction is near zero
    assert float((y / y.norm(dim=1, keepdim=True)).mean(0).norm()) < 0.06


def test_laplace_radius_is_gamma(gen):
    y = priors.Laplace(0.5).sample(5000, 4, generator=gen, dtype=torch.float64)
    assert stats.kstest(y.norm(dim=1).numpy(), stats.gamma(a=4, scale=0.5).cdf).pvalue > 1e-3


@pytest.mark.parametrize("prior", PRIORS, ids=IDS)
def test_marginal_cf_matches_projected_samples(prior, gen):
    dim = 5
    y = prior.sample(100000, dim, generator=gen, dtype=torch.float64)
    theta = torch.randn(dim, generator=gen, dtype=torch.float64)
    p = y @ (theta / theta.norm())
    t = torch.tensor([0.0, 0.4, 1.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(prior.marginal_cf(t, dim), torch.cos(t[:, None] * p).mean(1), atol=8e-3, rtol=0)


def test_laplace_score_finite_at_zero():
    z = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    s = priors.Laplace(1.0).score(z)
    (g,) = torch.autograd.grad(s.sum(), z)
    assert torch.isfinite(s).all() and torch.isfinite(g).all()


def test_factories_name_the_valid_choices():
    with pytest.raises(ValueError, match="'gaussian', 'imq'"):
        kernels.get("rbf")
    with pytest.raises(ValueError, match="'gaussian', 'laplace', 'student_t'"):
        priors.get("cauchy")
    with pytest.raises(TypeError, match="sigma"):
        priors.Gaussian(sigma="1")


@pytest.mark.parametrize("name,nu", [("gaussian", None), ("laplace", None), ("student_t", 5.0)])
def test_unit_variance_sigma_gives_identity_covariance(name, nu):
    dim, n = 6, 200_000
    params = {"nu": nu} if nu else {}
    sigma = priors.unit_variance_sigma(name, dim, **params)
    y = priors.get(name, sigma=sigma, **params).sample(n, dim, generator=torch.Generator().manual_seed(3),
                                                      dtype=torch.float64)
    var = y.square().mean(0)
    # the per-coordinate second moment is 1 up to Monte Carlo error (Student-t nu=5 has a heavy 4th moment)
    assert (var - 1).abs().max() < 0.05, var


def test_unit_variance_sigma_rejects_infinite_variance():
    with pytest.raises(ValueError, match="nu must be a number > 2"):
        priors.unit_variance_sigma("student_t", 4, nu=2.0)
