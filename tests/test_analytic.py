"""Analytic slicing (kerjepa.analytic): Theorems 8 and 9 against independent references.

* float64 double loops over pairs with mpmath's 1F1 and Theorem 9 written as in the paper
  (eta, p, p' formed explicitly), with the corrected sign;
* Monte Carlo over 2e5 slice directions of the closed-form 1-D V-statistics (the 1-D MMD against
  N(0, sigma^2), and the 1-D Stein kernel of the paper's eq. 29);
* the paper's printed "+" in Theorem 9 and eq. 15, which the Monte Carlo rejects.
"""
from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest
import torch

from kerjepa import kernels, priors
from kerjepa.analytic import analytic_sliced_ksd2, analytic_sliced_mmd2
from kerjepa.kernels import median_heuristic

from tolerances import close

F64, F32 = torch.float64, torch.float32
GAMMA, SIGMA = 0.7, 1.2


def batch(n, dim, seed=0, dtype=F64, duplicate=True):
    g = torch.Generator().manual_seed(seed)
    z = 1.3 * torch.randn(n, dim, generator=g, dtype=F64) + 0.2
    if duplicate and n > 3:
        z[3] = z[1]  # a repeated row: the X = X' pair off the diagonal
    return z.to(dtype)


def m1f1(a, b, c):
    with mp.workdps(25):
        return float(mp.hyp1f1(a, b, -mp.mpf(c)))


# ----------------------------------------------------------------------------------------------
# independent float64 references: double loops with mpmath
# ----------------------------------------------------------------------------------------------
def ref_mmd2(z, gamma, sigma, estimator):
    z = z.double().numpy()
    n, dim = z.shape
    sh = 1 + 2 * gamma * sigma ** 2
    pairs = [m1f1(0.5, dim / 2, gamma * np.sum((z[i] - z[j]) ** 2))
             for i in range(n) for j in range(n) if estimator == "v" or i != j]
    cross = [m1f1(0.5, dim / 2, gamma * np.sum(z[i] ** 2) / sh) / math.sqrt(sh) for i in range(n)]
    return np.mean(pairs) - 2 * np.mean(cross) + (1 + 4 * gamma * sigma ** 2) ** -0.5


def ref_ksd_pair(x, y, gamma, sigma, sign=-1.0):
    """Theorem 9's integrand as printed (eta, p, p'), with the last term's sign ``sign``."""
    dim = len(x)
    s4 = sigma ** 4
    delta = x - y
    r2 = float(delta @ delta)
    if r2 == 0.0:  # the limit E_xi K(xi.x, xi.x) = ||x||^2 / (D sigma^4) + 2 gamma
        return float(x @ x) / (dim * s4) + 2 * gamma
    if dim == 1:
        return (x[0] * y[0] / s4 - (2 * gamma / sigma ** 2 + 4 * gamma ** 2) * r2 + 2 * gamma) * math.exp(-gamma * r2)
    eta = delta / math.sqrt(r2)
    p, pp = float(eta @ x), float(eta @ y)
    q = float(x @ y) - p * pp
    a, b = m1f1(0.5, dim / 2, gamma * r2), m1f1(1.5, dim / 2 + 1, gamma * r2)
    return ((2 * gamma + q / (s4 * (dim - 1))) * a
            + (p * pp / s4 - q / (s4 * (dim - 1))) * b / dim
            + sign * (2 * gamma / sigma ** 2 + 4 * gamma ** 2) * r2 * b / dim)


def ref_ksd2(z, gamma, sigma, estimator, sign=-1.0):
    z = z.double().numpy()
    n = len(z)
    return np.mean([ref_ksd_pair(z[i], z[j], gamma, sigma, sign)
                    for i in range(n) for j in range(n) if estimator == "v" or i != j])


# ----------------------------------------------------------------------------------------------
# Monte Carlo over slices: closed-form 1-D V-statistics per direction
# ----------------------------------------------------------------------------------------------
def slice_statistics(z, gamma, sigma, num_slices=200_000, seed=7):
    """Per-direction 1-D MMD^2 and KSD^2 V-statistics, shape (K,) each."""
    g = torch.Generator().manual_seed(seed)
    xi = torch.randn(num_slices, z.shape[1], generator=g, dtype=F64)
    xi = xi / xi.norm(dim=1, keepdim=True)
    u = z.double() @ xi.T                                   # (N, K)
    d2 = (u[:, None, :] - u[None, :, :]) ** 2               # (N, N, K)
    sh = 1 + 2 * gamma * sigma ** 2
    mmd = (torch.exp(-gamma * d2).mean((0, 1))
           - 2 * (torch.exp(-gamma * u ** 2 / sh) / math.sqrt(sh)).mean(0)
           + (1 + 4 * gamma * sigma ** 2) ** -0.5)
    stein = ((u[:, None] * u[None, :]) / sigma ** 4 - (2 * gamma / sigma ** 2 + 4 * gamma ** 2) * d2
             + 2 * gamma) * torch.exp(-gamma * d2)       # paper eq. 29
    return mmd, stein.mean((0, 1))


@pytest.fixture(scope="module")
def mc_case():
    z = batch(7, 6, seed=3)
    mmd, ksd = slice_statistics(z, GAMMA, SIGMA)
    return z, mmd, ksd


def z_score(value, samples):
    return (float(value) - float(samples.mean())) / float(samples.std() / math.sqrt(len(samples)))


# ----------------------------------------------------------------------------------------------
# tier (i): exact agreement with the float64 double loops
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("estimator", ["u", "v"])
@pytest.mark.parametrize("dim", [1, 2, 5, 64])
def test_mmd_matches_double_loop(dim, estimator):
    z = batch(6, dim, seed=dim)
    got = analytic_sliced_mmd2(z, kernels.Gaussian(GAMMA), priors.Gaussian(SIGMA), estimator=estimator)
    close(got, ref_mmd2(z, GAMMA, SIGMA, estimator), scale=2.0)  # pair, cross and constant are O(1)


@pytest.mark.parametrize("estimator", ["u", "v"])
@pytest.mark.parametrize("dim", [1, 2, 5, 64])
def test_ksd_matches_double_loop(dim, estimator):
    z = batch(6, dim, seed=dim)
    got = analytic_sliced_ksd2(z, kernels.Gaussian(GAMMA), priors.Gaussian(SIGMA), estimator=estimator)
    scale = 2 * GAMMA + float((z * z).sum(1).max()) / SIGMA ** 4  # size of the cancelling terms
    close(got, ref_ksd2(z, GAMMA, SIGMA, estimator), scale=scale)


# ----------------------------------------------------------------------------------------------
# tier (ii): Theorems 7-9 against Monte Carlo over slices, and the printed sign
# ----------------------------------------------------------------------------------------------
def test_mmd_matches_monte_carlo(mc_case):
    z, mmd, _ = mc_case
    got = analytic_sliced_mmd2(z, kernels.Gaussian(GAMMA), priors.Gaussian(SIGMA))
    assert abs(z_score(got, mmd)) < 4.0


def test_ksd_matches_monte_carlo(mc_case):
    z, _, ksd = mc_case
    got = analytic_sliced_ksd2(z, kernels.Gaussian(GAMMA), priors.Gaussian(SIGMA))
    assert abs(z_score(got, ksd)) < 4.0


def test_ksd_printed_plus_sign_is_wrong(mc_case):
    """Erratum: Theorem 9 / eq. 15 print '+' before the last term; Monte Carlo rejects it."""
    z, _, ksd = mc_case
    printed = ref_ksd2(z, GAMMA, SIGMA, "v", sign=+1.0)
    corrected = ref_ksd2(z, GAMMA, SIGMA, "v", sign=-1.0)
    assert abs(z_score(corrected, ksd)) < 4.0
    assert abs(z_score(printed, ksd)) > 100.0


def test_one_dimension_is_the_1d_statistic():
    """D = 1: the only slices are +-1, so the analytic value is the 1-D V-statistic itself."""
    z = batch(9, 1, seed=5)
    mmd, ksd = slice_statistics(z, GAMMA, SIGMA, num_slices=2)
    k, q = kernels.Gaussian(GAMMA), priors.Gaussian(SIGMA)
    close(analytic_sliced_mmd2(z, k, q), mmd[0], scale=2.0)
    close(analytic_sliced_ksd2(z, k, q), ksd[0], scale=float(ksd.abs().max()) + 1)


def test_diagonal_limit():
    """A single row: the V-statistic is the diagonal limit 2 gamma + ||x||^2 / (D sigma^4)."""
    x = torch.tensor([[0.3, -1.1, 2.0]], dtype=F64)
    got = analytic_sliced_ksd2(x, kernels.Gaussian(GAMMA), priors.Gaussian(SIGMA))
    close(got, 2 * GAMMA + float((x * x).sum()) / (3 * SIGMA ** 4))
    # ... and the pair term is continuous there: a nearby row gives nearly the same value
    y = torch.cat([x, x + 1e-7 * torch.tensor([[1.0, 2.0, -1.0]], dtype=F64)])
    got2 = analytic_sliced_ksd2(y, kernels.Gaussian(GAMMA), priors.Gaussian(SIGMA))
    assert abs(float(got2) - float(got)) < 1e-6


# ----------------------------------------------------------------------------------------------
# approximations (paper eq. 13)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dim,max_err", [(20, 0.008), (128, 0.001), (1024, 1e-4)])
def test_mmd_imq_approximation_error(dim, max_err):
    """Eq. 13: |1F1 - IMQ| <= max_err per kernel value, so the statistic moves by <= 3 max_err."""
    z = batch(32, dim, seed=1, duplicate=False) / math.sqrt(dim)
    k, q = kernels.Gaussian(1.0), priors.Gaussian(1.0)
    exact = analytic_sliced_mmd2(z, k, q)
    approx = analytic_sliced_mmd2(z, k, q, approx="imq")
    assert abs(float(approx) - float(exact)) <= 3 * max_err
    # the eq. 13 form written out (paper eq. 13), as a V-statistic
    alpha, sh = 4.0 / (2 * dim - 3), 3.0
    r2 = torch.cdist(z, z) ** 2
    written = ((1 + alpha * r2) ** -0.5).mean() - 2 / math.sqrt(sh) * (
        (1 + alpha * (z * z).sum(1) / sh) ** -0.5).mean() + 5 ** -0.5
    close(approx, written, scale=2.0)


@pytest.mark.parametrize("approx", ["imq", "imq-rule"])
@pytest.mark.parametrize("dim,rel", [(20, 0.05), (128, 0.01)])
def test_ksd_approximations_close_to_exact(approx, dim, rel):
    z = batch(32, dim, seed=2, duplicate=False) / math.sqrt(dim) * 1.5
    k, q = kernels.Gaussian(1.0), priors.Gaussian(1.0)
    exact = float(analytic_sliced_ksd2(z, k, q))
    got = float(analytic_sliced_ksd2(z, k, q, approx=approx))
    assert abs(got - exact) <= rel * abs(exact)


# ----------------------------------------------------------------------------------------------
# tier (iii): invariants, backends, dtypes, gradients
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [analytic_sliced_mmd2, analytic_sliced_ksd2])
def test_rotation_and_permutation_invariance(fn):
    z = batch(10, 5, seed=4)
    rot, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(0), dtype=F64))
    k, q = kernels.Gaussian(GAMMA), priors.Gaussian(SIGMA)
    base = fn(z, k, q, estimator="u")
    close(fn(z @ rot, k, q, estimator="u"), base, scale=5.0)
    close(fn(z.flip(0), k, q, estimator="u"), base, scale=5.0)


@pytest.mark.parametrize("fn", [analytic_sliced_mmd2, analytic_sliced_ksd2])
def test_u_statistic_unbiased_at_prior(fn):
    """At the prior the population value is 0; the U-statistic averages to 0 over batches."""
    q = priors.Gaussian(SIGMA)
    g = torch.Generator().manual_seed(11)
    vals = torch.stack([fn(q.sample(16, 8, generator=g, dtype=F64), kernels.Gaussian(GAMMA), q, estimator="u")
                        for _ in range(100)])
    assert abs(float(vals.mean())) < 4 * float(vals.std()) / 10.0


@pytest.mark.parametrize("fn", [analytic_sliced_mmd2, analytic_sliced_ksd2])
def test_backends_views_and_float32(fn):
    z = batch(12, 7, seed=6)
    k, q = kernels.Gaussian(GAMMA), priors.Gaussian(SIGMA)
    dense = fn(z, k, q, backend="dense")
    close(fn(z, k, q, backend="chunked", block_size=5), dense, scale=5.0)
    views = torch.stack([z, 0.5 * z])
    close(fn(views, k, q), (dense + fn(0.5 * z, k, q)) / 2, scale=5.0)
    got32 = fn(z.float(), k, q)
    assert got32.dtype == F32
    close(got32, dense, dtype=F32, scale=5.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = fn(z.float(), k, q)
    assert auto.dtype == F32 and torch.isfinite(auto)
    close(fn(z.bfloat16(), k, q), fn(z.bfloat16().float(), k, q), dtype=F32, scale=5.0)


@pytest.mark.parametrize("approx", [None, "imq"])
@pytest.mark.parametrize("fn", [analytic_sliced_mmd2, analytic_sliced_ksd2])
def test_gradcheck(fn, approx):
    z = batch(5, 4, seed=8, duplicate=False).requires_grad_(True)
    k, q = kernels.Gaussian(GAMMA), priors.Gaussian(SIGMA)
    assert torch.autograd.gradcheck(lambda x: fn(x, k, q, approx=approx), (z,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("fn", [analytic_sliced_mmd2, analytic_sliced_ksd2])
def test_gradients_finite_with_duplicates_and_chunks(fn):
    z = batch(9, 16, seed=9).requires_grad_(True)  # rows 1 and 3 coincide
    k, q = kernels.Gaussian(GAMMA), priors.Gaussian(SIGMA)
    (g_dense,) = torch.autograd.grad(fn(z, k, q, estimator="u"), z)
    (g_chunk,) = torch.autograd.grad(fn(z, k, q, estimator="u", backend="chunked", block_size=4), z)
    assert torch.isfinite(g_dense).all()
    torch.testing.assert_close(g_chunk, g_dense, rtol=1e-10, atol=1e-12)


def test_bandwidth_rules():
    """None -> gamma = 1/2 on projections; "median" -> D times the median heuristic (all views)."""
    z = batch(10, 6, seed=10)
    q = priors.Gaussian(1.0)
    for fn in (analytic_sliced_mmd2, analytic_sliced_ksd2):
        close(fn(z, kernels.Gaussian(None), q), fn(z, kernels.Gaussian(0.5), q))
        views = torch.stack([z, 2 * z])
        gamma = 6 * median_heuristic(views.reshape(-1, 6))
        close(fn(views, kernels.Gaussian("median"), q), fn(views, kernels.Gaussian(gamma), q))


def test_validation():
    z = batch(6, 4)
    with pytest.raises(ValueError, match="Gaussian kernel with a Gaussian prior"):
        analytic_sliced_mmd2(z, kernels.IMQ(1.0), priors.Gaussian(1.0))
    with pytest.raises(ValueError, match="Gaussian kernel with a Gaussian prior"):
        analytic_sliced_ksd2(z, kernels.Gaussian(1.0), priors.Laplace(1.0))
    with pytest.raises(TypeError, match="kernel"):
        analytic_sliced_ksd2(z, "gaussian", priors.Gaussian(1.0))
    with pytest.raises(ValueError, match="D >= 2"):
        analytic_sliced_mmd2(z[:, :1], kernels.Gaussian(1.0), priors.Gaussian(1.0), approx="imq")
    with pytest.raises(ValueError, match="D >= 2"):
        analytic_sliced_ksd2(z[:, :1], kernels.Gaussian(1.0), priors.Gaussian(1.0), approx="imq-rule")
    with pytest.raises(ValueError, match="approx"):
        analytic_sliced_mmd2(z, kernels.Gaussian(1.0), priors.Gaussian(1.0), approx="imq-rule")
    with pytest.raises(ValueError, match="estimator"):
        analytic_sliced_ksd2(z, kernels.Gaussian(1.0), priors.Gaussian(1.0), estimator="b")
    with pytest.raises(ValueError, match="at least 2"):
        analytic_sliced_mmd2(z[:1], kernels.Gaussian(1.0), priors.Gaussian(1.0), estimator="u")
