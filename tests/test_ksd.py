"""Kernel Stein discrepancies (kerjepa.ksd) against independent float64 references.

References never use the library's closed forms: kernel gradients and the trace of the mixed
Hessian come from autograd (a double loop over pairs, or ``torch.func`` vectorised over pairs),
and the priors' scores from autograd of their log densities.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special as sps
import torch
from torch.func import grad, jacrev, vmap

from kerjepa import kernels, priors
from kerjepa.functional import ksd2, sliced_ksd2, stein_kernel
from tolerances import RTOL, assert_reordered

F64 = torch.float64
R64, R32 = RTOL[torch.float64], RTOL[torch.float32]


# ----------------------------------------------------------------------------------------------
# independent references
# ----------------------------------------------------------------------------------------------
def kernel_case(name: str, dim: int):
    """(kerjepa kernel, scalar base kernel k(x, y) written from its definition)."""
    if name == "gaussian":
        gamma = 0.7 / dim
        return kernels.Gaussian(gamma=gamma), lambda x, y: torch.exp(-gamma * ((x - y) ** 2).sum())
    alpha, beta = {"imq": (0.9 / dim, 0.5), "imq_b17": (0.6 / dim, 1.7)}[name]
    return (kernels.IMQ(alpha=alpha, beta=beta),
            lambda x, y: (1.0 + alpha * ((x - y) ** 2).sum()) ** (-beta))


KERNELS = ["gaussian", "imq", "imq_b17"]


def prior_case(name: str):
    """(kerjepa prior, unnormalised log density log q(x) of one row x, written from Table 2)."""
    if name == "gaussian":
        sigma = 1.3
        return priors.Gaussian(sigma), lambda x: -(x * x).sum() / (2 * sigma ** 2)
    if name == "laplace":
        sigma, eps = 0.7, 1e-3
        # the score the prior documents: that of -sqrt(|x|^2 + (eps sigma)^2) / sigma
        return (priors.Laplace(sigma, eps=eps),
                lambda x: -torch.sqrt((x * x).sum() + (eps * sigma) ** 2) / sigma)
    nu, sigma = 3.0, 1.1
    return (priors.StudentT(nu, sigma),
            lambda x: -0.5 * (nu + x.shape[-1]) * torch.log1p((x * x).sum() / (nu * sigma ** 2)))


PRIORS = ["gaussian", "laplace", "student_t"]


def stein_matrix_loop(z, k_fn, log_q):
    """Double loop over pairs with autograd gradients and an autograd mixed-Hessian trace."""
    n, d = z.shape
    scores = []
    for i in range(n):
        x = z[i].clone().requires_grad_(True)
        scores.append(torch.autograd.grad(log_q(x), x)[0])
    eye = torch.eye(d, dtype=z.dtype)
    out = torch.empty(n, n, dtype=z.dtype)
    for i in range(n):
        for j in range(n):
            x = z[i].clone().requires_grad_(True)
            y = z[j].clone().requires_grad_(True)
            k = k_fn(x, y)
            gx, gy = torch.autograd.grad(k, (x, y), create_graph=True)
            # row a: d(grad_y k)_a / dx, so the diagonal is d^2 k / dx_a dy_a
            hess = torch.autograd.grad(gy, x, grad_outputs=eye, is_grads_batched=True)[0]
            trace = hess.diagonal().sum()
            si, sj = scores[i], scores[j]
            out[i, j] = (si @ sj * k + si @ gy + gx @ sj + trace).detach()
    return out


def stein_matrix_func(z, k_fn, log_q):
    """The same Stein kernel vectorised over pairs with torch.func (memory N^2 D^2)."""
    scores = vmap(grad(log_q))(z)
    gx_fn, gy_fn = grad(k_fn, argnums=0), grad(k_fn, argnums=1)
    mixed = jacrev(gy_fn, argnums=0)

    def pair(x, y, sx, sy):
        return (sx @ sy * k_fn(x, y) + sx @ gy_fn(x, y) + gx_fn(x, y) @ sy
                + torch.diagonal(mixed(x, y)).sum())

    rows = []
    for block in torch.split(torch.arange(z.shape[0]), 64):
        inner = vmap(pair, in_dims=(None, 0, None, 0))
        rows.append(vmap(inner, in_dims=(0, None, 0, None))(z[block], z, scores[block], scores))
    return torch.cat(rows)


def u_and_v(mat):
    n = mat.shape[0]
    off = mat.sum() - mat.diagonal().sum()
    return off / (n * (n - 1)), mat.sum() / (n * n)


def sample_z(n, d, seed, scale=1.0, shift=0.2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=F64) * scale + shift


def check(actual, expected, mat, rtol):
    """Relative check whose absolute floor is the mean |k_Q| (U-statistics cancel to ~0)."""
    scale = float(mat.abs().mean())
    torch.testing.assert_close(actual.to(F64), expected, rtol=rtol, atol=rtol * scale)


# ----------------------------------------------------------------------------------------------
# tier (i): every kernel x prior against the references
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prior_name", PRIORS)
@pytest.mark.parametrize("kernel_name", KERNELS)
@pytest.mark.parametrize("n,d", [(2, 1), (6, 3), (3, 1024)])
def test_against_double_loop(kernel_name, prior_name, n, d):
    kernel, k_fn = kernel_case(kernel_name, d)
    prior, log_q = prior_case(prior_name)
    z = sample_z(n, d, seed=n * 1000 + d)
    ref = stein_matrix_loop(z, k_fn, log_q)
    torch.testing.assert_close(stein_kernel(z, None, kernel, prior), ref, rtol=R64,
                               atol=R64 * float(ref.abs().mean()))
    torch.testing.assert_close(stein_kernel(z, z.clone(), kernel, prior), ref, rtol=R64,
                               atol=R64 * float(ref.abs().mean()))
    u_ref, v_ref = u_and_v(ref)
    check(ksd2(z, kernel, prior, estimator="u"), u_ref, ref, R64)
    check(ksd2(z, kernel, prior, estimator="v"), v_ref, ref, R64)
    check(ksd2(z.float(), kernel, prior, estimator="u"), u_ref, ref, R32)
    check(ksd2(z.float(), kernel, prior, estimator="v"), v_ref, ref, R32)


@pytest.mark.parametrize("prior_name", PRIORS)
@pytest.mark.parametrize("kernel_name", KERNELS)
@pytest.mark.parametrize("n,d", [(512, 4), (8, 256)])
def test_against_vectorised_reference(kernel_name, prior_name, n, d):
    kernel, k_fn = kernel_case(kernel_name, d)
    prior, log_q = prior_case(prior_name)
    z = sample_z(n, d, seed=7 + n + d)
    ref = stein_matrix_func(z, k_fn, log_q)
    u_ref, v_ref = u_and_v(ref)
    for est, target in (("u", u_ref), ("v", v_ref)):
        check(ksd2(z, kernel, prior, estimator=est), target, ref, R64)
        check(ksd2(z, kernel, prior, estimator=est, backend="chunked", block_size=100),
              target, ref, R64)
        check(ksd2(z.float(), kernel, prior, estimator=est), target, ref, R32)


def test_vectorised_reference_agrees_with_loop():
    kernel, k_fn = kernel_case("imq_b17", 5)
    _, log_q = prior_case("student_t")
    z = sample_z(4, 5, seed=3)
    torch.testing.assert_close(stein_matrix_func(z, k_fn, log_q), stein_matrix_loop(z, k_fn, log_q),
                               rtol=1e-12, atol=1e-12)


def test_gaussian_gaussian_closed_form():
    """Paper eqs. 9-10 with Table 3: k_Q = e^{-g r^2}[x.y/s^4 - 2 g r^2/s^2 + 2 g D - 4 g^2 r^2]."""
    g, s, d = 0.3, 1.4, 6
    x, y = sample_z(5, d, 1), sample_z(7, d, 2)
    r2 = ((x[:, None] - y[None]) ** 2).sum(-1)
    ref = torch.exp(-g * r2) * (x @ y.T / s ** 4 - 2 * g * r2 / s ** 2 + 2 * g * d - 4 * g * g * r2)
    got = stein_kernel(x, y, kernels.Gaussian(g), priors.Gaussian(s))
    assert_reordered(got, ref)


def test_default_and_median_bandwidths():
    z = sample_z(20, 8, 5)
    assert torch.equal(ksd2(z, kernels.IMQ(), priors.Gaussian()),
                       ksd2(z, kernels.IMQ(alpha=1 / 16), priors.Gaussian()))
    med = kernels.median_heuristic(z)
    torch.testing.assert_close(ksd2(z, kernels.Gaussian("median"), priors.Laplace()),
                               ksd2(z, kernels.Gaussian(med), priors.Laplace()))


# ----------------------------------------------------------------------------------------------
# erratum: the IMQ trace term of Table 3
# ----------------------------------------------------------------------------------------------
class _ZeroScore(priors.Prior):
    """A 'prior' with zero score, so the Stein kernel reduces to tr(grad_x grad_y^T k)."""

    def score(self, z):
        return torch.zeros_like(z)


@pytest.mark.parametrize("beta", [0.5, 1.7])
def test_imq_trace_erratum(beta):
    """Table 3 prints tr = 4 a^2 b (b+1) r^2 (1+a r^2)^{-(b+2)}; autograd says otherwise."""
    alpha, d = 0.8, 5
    x, y = sample_z(4, d, 11), sample_z(3, d, 12, shift=-0.4)
    k_fn = lambda a, b: (1.0 + alpha * ((a - b) ** 2).sum()) ** (-beta)  # noqa: E731
    mixed = jacrev(grad(k_fn, argnums=1), argnums=0)
    auto = vmap(vmap(lambda a, b: torch.diagonal(mixed(a, b)).sum(), (None, 0)), (0, None))(x, y)
    r2 = ((x[:, None] - y[None]) ** 2).sum(-1)
    printed = 4 * alpha ** 2 * beta * (beta + 1) * r2 * (1 + alpha * r2) ** (-beta - 2)
    corrected = (2 * alpha * beta * d * (1 + alpha * r2) ** (-beta - 1)
                 - 4 * alpha ** 2 * beta * (beta + 1) * r2 * (1 + alpha * r2) ** (-beta - 2))
    got = stein_kernel(x, y, kernels.IMQ(alpha, beta), _ZeroScore())
    assert_reordered(got, auto)
    assert_reordered(corrected, auto)
    assert not torch.allclose(printed, auto, rtol=1e-2), "the printed Table-3 trace matches autograd?"


# ----------------------------------------------------------------------------------------------
# invariants and gradients
# ----------------------------------------------------------------------------------------------
def test_rotation_permutation_and_views():
    z = sample_z(30, 6, 21)
    q, _ = torch.linalg.qr(sample_z(6, 6, 22, shift=0.0))
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(0))
    kernel, prior = kernels.IMQ(alpha=0.3, beta=0.8), priors.StudentT(4.0)
    base = ksd2(z, kernel, prior)
    torch.testing.assert_close(ksd2(z @ q, kernel, prior), base, rtol=1e-10, atol=1e-12)
    assert_reordered(ksd2(z[perm], kernel, prior), base)
    z2 = sample_z(30, 6, 23)
    views = torch.stack([z, z2])
    torch.testing.assert_close(ksd2(views, kernel, prior), (base + ksd2(z2, kernel, prior)) / 2)


def test_v_statistic_nonnegative_and_diagonal():
    z = sample_z(10, 3, 31, scale=2.0)
    for kernel in (kernels.Gaussian(0.5), kernels.IMQ(0.5, 1.2)):
        for prior in (priors.Gaussian(), priors.Laplace(), priors.StudentT(2.5)):
            mat = stein_kernel(z, None, kernel, prior)
            n = z.shape[0]
            v = ksd2(z, kernel, prior, estimator="v")
            u = ksd2(z, kernel, prior, estimator="u")
            assert float(v) >= 0.0
            torch.testing.assert_close(v, (n - 1) / n * u + mat.diagonal().mean() / n, rtol=1e-12,
                                       atol=1e-12)


@pytest.mark.parametrize("prior_name", PRIORS)
@pytest.mark.parametrize("kernel_name", ["gaussian", "imq_b17"])
def test_gradcheck(kernel_name, prior_name):
    kernel, _ = kernel_case(kernel_name, 3)
    prior, _ = prior_case(prior_name)
    z = sample_z(5, 3, 41).requires_grad_(True)
    for est in ("u", "v"):
        for backend in ("dense", "chunked"):
            fn = lambda x: ksd2(x, kernel, prior, estimator=est, backend=backend, block_size=2)  # noqa: E731
            assert torch.autograd.gradcheck(fn, (z,))
    assert torch.autograd.gradgradcheck(lambda x: ksd2(x, kernel, prior, backend="dense"), (z,))
    theta = sample_z(4, 3, 42, shift=0.0)
    for est in ("u", "v"):
        fn = lambda x: sliced_ksd2(x, kernels.Gaussian(0.4), prior, directions=theta,  # noqa: E731
                                   num_knots=9, estimator=est)
        assert torch.autograd.gradcheck(fn, (z,))


def test_laplace_zero_row_gradients_finite():
    z = sample_z(6, 4, 51)
    z[2] = 0.0
    z.requires_grad_(True)
    prior = priors.Laplace(0.8)
    values = [ksd2(z, kernels.Gaussian(0.3), prior), ksd2(z, kernels.IMQ(0.3), prior, estimator="v"),
              ksd2(z, kernels.IMQ(0.3), prior, backend="chunked", block_size=4),
              sliced_ksd2(z, kernels.Gaussian(), prior, num_slices=8,
                          generator=torch.Generator().manual_seed(0))]
    for value in values:
        (g,) = torch.autograd.grad(value, z)
        assert torch.isfinite(value) and torch.isfinite(g).all()


# ----------------------------------------------------------------------------------------------
# Stein identity: E_{X,X' ~ Q} k_Q(X, X') = 0
# ----------------------------------------------------------------------------------------------
def _replicates(prior, kernel, transform, reps=10, n=400, d=3, seed=0):
    """Mean and standard error of the U-statistic over independent batches (fixed seed)."""
    g = torch.Generator().manual_seed(seed)
    vals = [float(ksd2(transform(prior.sample(n, d, generator=g, dtype=F64)), kernel, prior))
            for _ in range(reps)]
    return np.mean(vals), np.std(vals, ddof=1) / math.sqrt(reps)


@pytest.mark.parametrize("kernel_name", ["gaussian", "imq"])
@pytest.mark.parametrize("prior", [priors.Gaussian(1.5), priors.Laplace(0.7), priors.StudentT(5.0, 1.2)],
                         ids=PRIORS)
def test_stein_identity(kernel_name, prior):
    d, bandwidth = 3, 1.0 / (2 * 3 * prior.sigma ** 2)   # kernel width matched to the prior's scale
    kernel = kernels.Gaussian(bandwidth) if kernel_name == "gaussian" else kernels.IMQ(bandwidth)
    mean, se = _replicates(prior, kernel, lambda x: x, d=d)
    assert abs(mean) < 4 * se + 1e-3
    null_band = abs(mean) + 4 * se
    for transform in (lambda x: 2.0 * x, lambda x: x + prior.sigma):
        m_off, se_off = _replicates(prior, kernel, transform, d=d)
        assert m_off > 8 * se_off and m_off > 3 * null_band


# ----------------------------------------------------------------------------------------------
# finite slicing
# ----------------------------------------------------------------------------------------------
def stein_1d(p, s, gamma):
    """1-D Stein kernel of the Gaussian kernel e^{-g u^2} for projections p and scores s (N,)."""
    u = p[:, None] - p[None, :]
    return torch.exp(-gamma * u * u) * (s[:, None] * s[None, :] + 2 * gamma * u * (s[:, None] - s[None, :])
                                        + 2 * gamma - 4 * gamma ** 2 * u * u)


@pytest.mark.parametrize("prior_name", PRIORS)
def test_sliced_one_dimension_equals_stein_v_statistic(prior_name):
    prior, _ = prior_case(prior_name)
    z = sample_z(40, 1, 61, scale=1.3)
    for gamma in (0.5, 0.2):
        for est in ("v", "u"):
            exact = ksd2(z, kernels.Gaussian(gamma), prior, estimator=est)
            sliced = sliced_ksd2(z, kernels.Gaussian(gamma), prior, directions=torch.ones(1, 1, dtype=F64),
                                 num_knots=80, estimator=est)
            torch.testing.assert_close(sliced, exact, rtol=1e-9, atol=1e-11)
    # the paper's 21 knots: quadrature accuracy only
    exact = ksd2(z, kernels.Gaussian(0.5), prior, estimator="v")
    paper = sliced_ksd2(z, kernels.Gaussian(), prior, directions=-torch.ones(1, 1, dtype=F64))
    assert abs(float(paper / exact) - 1) < 1e-5


@pytest.mark.parametrize("prior_name", PRIORS)
def test_sliced_fixed_directions_match_projected_stein_kernel(prior_name):
    prior, _ = prior_case(prior_name)
    z = sample_z(25, 7, 71)
    theta = sample_z(5, 7, 72, shift=0.0)
    theta = theta / theta.norm(dim=1, keepdim=True)
    gamma = 0.35
    s = prior.score(z)
    mats = [stein_1d(z @ th, s @ th, gamma) for th in theta]
    u = torch.stack([u_and_v(m)[0] for m in mats]).mean()
    v = torch.stack([u_and_v(m)[1] for m in mats]).mean()
    for est, ref in (("u", u), ("v", v)):
        got = sliced_ksd2(z, kernels.Gaussian(gamma), prior, directions=3.0 * theta, num_knots=80,
                          estimator=est)
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-11)
        got32 = sliced_ksd2(z.float(), kernels.Gaussian(gamma), prior, directions=theta.float(),
                            num_knots=80, estimator=est)
        torch.testing.assert_close(got32.double(), ref, rtol=1e-5, atol=1e-5 * float(v))


def analytic_sliced_u_gaussian(z, gamma, sigma):
    """Theorem 9 (last sign corrected), U-statistic, with scipy's 1F1."""
    n, d = z.shape
    x = z.numpy()
    total = 0.0
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            delta = x[i] - x[j]
            r2 = delta @ delta
            eta = delta / math.sqrt(r2)
            p, pp = eta @ x[i], eta @ x[j]
            a = sps.hyp1f1(0.5, d / 2, -gamma * r2)
            b = sps.hyp1f1(1.5, d / 2 + 1, -gamma * r2)
            perp = (x[i] @ x[j] - p * pp) / (sigma ** 4 * (d - 1))
            total += ((2 * gamma + perp) * a + (p * pp / sigma ** 4 - perp) * b / d
                      - (2 * gamma / sigma ** 2 + 4 * gamma ** 2) * r2 * b / d)
    return total / (n * (n - 1))


def test_finite_slicing_converges_to_analytic():
    n, d, gamma, sigma = 24, 5, 0.5, 1.2
    z = sample_z(n, d, 81, scale=1.4)
    kernel, prior = kernels.Gaussian(gamma), priors.Gaussian(sigma)
    target_u = analytic_sliced_u_gaussian(z, gamma, sigma)
    # V adds the diagonal, averaged over directions: E_theta (theta.s)^2 + 2 gamma = |s|^2 / D + 2 gamma
    diag = float(((z / sigma ** 2) ** 2).sum(1).mean()) / d + 2 * gamma
    target_v = ((n - 1) * target_u + diag) / n
    for est, target in (("u", target_u), ("v", target_v)):
        g = torch.Generator().manual_seed(1)
        batches = [float(sliced_ksd2(z, kernel, prior, num_slices=2000, generator=g, estimator=est))
                   for _ in range(8)]
        mean, se = np.mean(batches), np.std(batches, ddof=1) / math.sqrt(len(batches))
        assert abs(mean - target) < 4 * se + 2e-3 * abs(target)
        assert se < 0.05 * abs(target)
        try:
            from kerjepa.analytic import analytic_sliced_ksd2
        except ImportError:
            continue
        got = analytic_sliced_ksd2(z, kernel, prior, estimator=est)
        torch.testing.assert_close(float(got), target, rtol=1e-6, atol=1e-8)
        got = sliced_ksd2(z, kernel, prior, num_slices=None, estimator=est)
        torch.testing.assert_close(float(got), target, rtol=1e-6, atol=1e-8)


def test_sliced_views_share_directions_and_median():
    z = sample_z(2 * 20 * 4, 1, 91).reshape(2, 20, 4)
    kernel, prior = kernels.Gaussian(), priors.StudentT(3.0)
    both = sliced_ksd2(z, kernel, prior, num_slices=16, generator=torch.Generator().manual_seed(3))
    each = [sliced_ksd2(zv, kernel, prior, num_slices=16, generator=torch.Generator().manual_seed(3))
            for zv in z]
    torch.testing.assert_close(both, (each[0] + each[1]) / 2)
    theta = torch.eye(4, dtype=F64)
    med = 4 * kernels.median_heuristic(z[0])
    torch.testing.assert_close(sliced_ksd2(z[0], kernels.Gaussian("median"), prior, directions=theta),
                               sliced_ksd2(z[0], kernels.Gaussian(med), prior, directions=theta))


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------
def test_bad_input():
    z = sample_z(8, 3, 0)
    k, q = kernels.IMQ(), priors.Gaussian()
    with pytest.raises(ValueError, match="nu"):
        priors.StudentT(nu=0.0)
    with pytest.raises(ValueError, match="nu"):
        priors.StudentT(nu=-1.0)
    with pytest.raises(ValueError, match="beta"):
        kernels.IMQ(alpha=1.0, beta=0.0)
    with pytest.raises(ValueError, match="beta"):
        kernels.IMQ(alpha=1.0, beta=-0.5)
    with pytest.raises(ValueError, match="Gaussian kernel"):
        sliced_ksd2(z, kernels.IMQ(), q, num_slices=4)
    with pytest.raises(ValueError, match="approx"):
        sliced_ksd2(z, kernels.Gaussian(), q, num_slices=4, approx="imq")
    with pytest.raises(ValueError, match="shape"):
        ksd2(z[0], k, q)
    with pytest.raises(ValueError, match="shape"):
        ksd2(z[None, None], k, q)
    with pytest.raises(ValueError, match="at least 2"):
        ksd2(z[:1], k, q)
    with pytest.raises(ValueError, match="at least 2"):
        sliced_ksd2(z[:1], kernels.Gaussian(), q, num_slices=4, estimator="u")
    assert torch.isfinite(ksd2(z[:1], k, q, estimator="v"))
    with pytest.raises(ValueError, match="estimator"):
        ksd2(z, k, q, estimator="w")
    with pytest.raises(ValueError, match="backend"):
        ksd2(z, k, q, backend="sparse")
    with pytest.raises(ValueError, match="num_slices"):
        sliced_ksd2(z, kernels.Gaussian(), q, num_slices=0)
    with pytest.raises(ValueError, match="num_knots"):
        sliced_ksd2(z, kernels.Gaussian(), q, num_knots=0)
    with pytest.raises(ValueError, match="directions"):
        sliced_ksd2(z, kernels.Gaussian(), q, directions=torch.ones(2, 5, dtype=F64))
    with pytest.raises(TypeError, match="kernel"):
        ksd2(z, "imq", q)
    with pytest.raises(TypeError, match="prior"):
        ksd2(z, k, "gaussian")
    with pytest.raises(TypeError, match="dtype"):
        ksd2(z.long(), k, q)
    with pytest.raises(ValueError, match="features"):
        stein_kernel(z, sample_z(4, 2, 1), k, q)


def test_low_precision_inputs_and_autocast():
    z = sample_z(12, 5, 101).float()
    kernel, prior = kernels.IMQ(0.2), priors.StudentT(4.0)
    ref = ksd2(z, kernel, prior)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = ksd2(z, kernel, prior)
        sliced = sliced_ksd2(z, kernels.Gaussian(), prior, num_slices=8,
                             generator=torch.Generator().manual_seed(0))
    assert inside.dtype == torch.float32 and sliced.dtype == torch.float32
    torch.testing.assert_close(inside, ref)
    low = ksd2(z.bfloat16(), kernel, prior)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, ksd2(z.bfloat16().float(), kernel, prior))


@pytest.mark.parametrize("prior", [priors.Gaussian(), priors.Laplace(), priors.StudentT(4.0)], ids=repr)
@pytest.mark.parametrize("kernel", [kernels.Gaussian(), kernels.IMQ()], ids=repr)
@pytest.mark.parametrize("backend", ["dense", "chunked"])
def test_float32_rows_near_the_end_of_its_range(kernel, prior, backend):
    """|z| ~ 1e18 in float32 (squared norms ~ 1e37): the value equals the float64 one and the
    gradient is finite (its size is round-off of cancelling terms at this scale); the hand-written
    backward no longer forms |s_i|^2 x_i, which overflowed from |z| ~ 1e14. Beyond (|z|^2 past
    3.4e38) the Stein kernel's products of scores overflow and the result is non-finite, as the
    docstring of ksd2 says."""
    z = (1e18 * torch.randn(24, 6, generator=torch.Generator().manual_seed(0))).requires_grad_(True)
    value = ksd2(z, kernel, prior, backend=backend, block_size=8)
    (grad,) = torch.autograd.grad(value, z)
    expected = ksd2(z.detach().double(), kernel, prior, backend=backend, block_size=8)
    assert torch.isfinite(grad).all()
    scale = float(ksd2(z.detach().double(), kernel, prior, estimator="v").abs()) + 1e-30
    assert abs(float(value.detach()) - float(expected)) <= R32 * scale
    far = ksd2(z.detach() * 10.0, kernel, prior, backend=backend, block_size=8)
    assert not torch.isfinite(far)
