"""MMD family: mmd2, sliced_mmd2 (finite), epps_pulley — against independent float64 references."""
import math

import mpmath as mp
import numpy as np
import pytest
import torch

from kerjepa import functional as F, kernels, priors
from tolerances import RTOL, close

# ---------------------------------------------------------------- independent references


def ref_kernel(kind, params, r2):
    if kind == "gaussian":
        return math.exp(-params["gamma"] * r2)
    return (1.0 + params["alpha"] * r2) ** (-params["beta"])


def ref_prior_mean_gaussian(x, gamma, sigma):
    """E_Y exp(-gamma ||x - Y||^2) as a product of 1-D Gaussian integrals (one per coordinate)."""
    out = 1.0
    for xd in x:
        out *= math.exp(-gamma * xd * xd / (1 + 2 * gamma * sigma ** 2)) / math.sqrt(1 + 2 * gamma * sigma ** 2)
    return out


def ref_prior_mean_imq(x, alpha, beta, sigma):
    """E_Y (1 + alpha ||x - Y||^2)^-beta: mpmath quadrature of the Gamma scale mixture."""
    d, r2 = len(x), float(np.dot(x, x))
    f = lambda s: ((1 + 2 * alpha * s * sigma ** 2) ** (-mp.mpf(d) / 2)
                   * mp.exp(-alpha * s * r2 / (1 + 2 * alpha * s * sigma ** 2))
                   * s ** (beta - 1) * mp.exp(-s) / mp.gamma(beta))
    return float(mp.quad(f, [0, 1e-6, 1e-2, 1, 10, mp.inf]))


def ref_mmd2(z, kind, params, sigma, estimator):
    """Double loop over pairs; prior terms by the routes above; returns (value, scale of the terms)."""
    z = z.double().numpy()
    n, d = z.shape
    pair = 0.0
    for i in range(n):
        for j in range(n):
            if i != j or estimator == "v":
                pair += ref_kernel(kind, params, float(((z[i] - z[j]) ** 2).sum()))
    pair /= n * (n - 1) if estimator == "u" else n * n
    if kind == "gaussian":
        cross = sum(ref_prior_mean_gaussian(z[i], params["gamma"], sigma) for i in range(n)) / n
        const = (1 + 4 * params["gamma"] * sigma ** 2) ** (-d / 2)
    else:
        a, b = params["alpha"], params["beta"]
        cross = sum(ref_prior_mean_imq(z[i], a, b, sigma) for i in range(n)) / n
        # E k(Y, Y') = E_S (1 + 4 alpha S sigma^2)^(-D/2), S ~ Gamma(beta, 1): Y - Y' ~ N(0, 2 sigma^2 I)
        const = float(mp.quad(
            lambda s: (1 + 4 * a * s * sigma ** 2) ** (-mp.mpf(d) / 2) * s ** (b - 1) * mp.exp(-s) / mp.gamma(b),
            [0, 1e-6, 1e-2, 1, 10, mp.inf]))
    return pair - 2 * cross + const, pair + 2 * cross + const


def make_kernel(kind, params):
    return kernels.Gaussian(params["gamma"]) if kind == "gaussian" else kernels.IMQ(params["alpha"], params["beta"])


CASES = [  # (N, D, kind, params, sigma)
    (2, 1, "gaussian", {"gamma": 0.7}, 1.0),
    (9, 3, "gaussian", {"gamma": 0.2}, 1.5),
    (6, 1024, "gaussian", {"gamma": 1 / 2048}, 1.0),
    (5, 1, "imq", {"alpha": 0.9, "beta": 0.5}, 1.0),
    (7, 4, "imq", {"alpha": 0.3, "beta": 1.5}, 0.7),
    (4, 1024, "imq", {"alpha": 1 / 2048, "beta": 0.5}, 1.0),
]


@pytest.mark.parametrize("n,d,kind,params,sigma", CASES)
@pytest.mark.parametrize("estimator", ["u", "v"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_mmd2_matches_double_loop(n, d, kind, params, sigma, estimator, dtype):
    g = torch.Generator().manual_seed(n * 1000 + d)
    z = torch.randn(n, d, generator=g, dtype=torch.float64) * 1.3 + 0.4
    expected, scale = ref_mmd2(z, kind, params, sigma, estimator)
    value = F.mmd2(z.to(dtype), make_kernel(kind, params), priors.Gaussian(sigma), estimator)
    assert value.dtype == dtype
    close(value, expected, dtype, scale=scale)


def test_mmd2_prior_terms_match_monte_carlo(gen):
    """Closed-form (Gaussian) and Gamma-mixture (IMQ) prior terms equal Monte Carlo over the prior."""
    from kerjepa.mmd import kernel_prior_mean
    z = torch.randn(16, 3, generator=gen, dtype=torch.float64) * 0.8 + 0.5
    prior = priors.Gaussian(1.2)
    y = prior.sample(200000, 3, generator=gen, dtype=torch.float64)
    for kernel in (kernels.Gaussian(0.3), kernels.IMQ(0.5, 1.0)):
        cross, const = kernel_prior_mean(z, kernel, prior)
        k_zy = kernel(z, y)                                          # (16, M)
        se = k_zy.std(1) / math.sqrt(y.shape[0])
        assert bool(((cross - k_zy.mean(1)).abs() < 4 * se).all())
        k_yy = kernel.phi(((y[::2] - y[1::2]) ** 2).sum(1))
        assert abs(float(const - k_yy.mean())) < 4 * float(k_yy.std()) / math.sqrt(k_yy.numel())


def test_two_sample_matches_double_loop(gen):
    """prior_samples=M is eq. 21 with the cross term's 1/(NM) restored (book errata table, row 3)."""
    z = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    kernel = kernels.Gaussian(0.4)
    y = priors.Laplace(1.0).sample(5, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    k = lambda a, b: math.exp(-0.4 * float(((a - b) ** 2).sum()))
    zz = sum(k(z[i], z[j]) for i in range(6) for j in range(6) if i != j) / 30
    yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / 20
    zy = sum(k(z[i], y[j]) for i in range(6) for j in range(5)) / 30
    value = F.mmd2(z, kernel, priors.Laplace(1.0), prior_samples=5, generator=torch.Generator().manual_seed(7))
    close(value, zz + yy - 2 * zy, scale=zz + yy + 2 * zy)
    printed = zz + yy - 2 * zy * 30  # eq. 21 as printed: no 1/(NM) on the cross term
    assert abs(printed - float(value)) > 1.0


def test_bhep_erratum_missing_one_over_n(gen):
    """Eq. 24 as printed (no 1/N on the cross term) is not the MMD; ours is (book errata table, row 4)."""
    z = torch.randn(50, 2, generator=gen, dtype=torch.float64)
    gamma, d = 0.5, 2
    cross = torch.exp(-gamma * (z * z).sum(1) / 2) / 2 ** (d / 2)
    value = F.mmd2(z, kernels.Gaussian(gamma), priors.Gaussian())
    printed = value + 2 * cross.mean() - 2 * cross.sum()
    mc = F.mmd2(z, kernels.Gaussian(gamma), priors.Gaussian(), prior_samples=3000, generator=gen)
    assert abs(float(value - mc)) < 5e-3
    assert abs(float(printed - mc)) > 10


@pytest.mark.parametrize("kernel", [kernels.Gaussian(0.3), kernels.IMQ(0.4, 0.5)], ids=["gaussian", "imq"])
def test_u_statistic_unbiased_at_prior_and_grows_off_it(kernel):
    g = torch.Generator().manual_seed(3)
    prior = priors.Gaussian(1.0)
    at_prior = torch.stack([F.mmd2(prior.sample(32, 3, g, torch.float64), kernel, prior) for _ in range(300)])
    assert abs(float(at_prior.mean())) < 3.5 * float(at_prior.std()) / math.sqrt(300)
    v_stats = torch.stack([F.mmd2(prior.sample(32, 3, g, torch.float64), kernel, prior, "v") for _ in range(20)])
    assert bool((v_stats >= 0).all())
    base = prior.sample(256, 3, g, torch.float64)
    for est in ("u", "v"):
        value = F.mmd2(base, kernel, prior, est)
        assert F.mmd2(base + 1.0, kernel, prior, est) > value + 0.01
        assert F.mmd2(base * 2.0, kernel, prior, est) > value + 0.01


def test_gradcheck(gen):
    z = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    dirs = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    fns = [
        lambda x: F.mmd2(x, kernels.Gaussian(0.4), priors.Gaussian(1.1)),
        lambda x: F.mmd2(x, kernels.IMQ(0.6, 0.8), priors.Gaussian(0.9), "v"),
        lambda x: F.sliced_mmd2(x, kernels.Gaussian(0.5), priors.Laplace(1.0), directions=dirs),
        lambda x: F.sliced_mmd2(x, kernels.Gaussian(0.5), priors.StudentT(3.0), directions=dirs, estimator="u"),
        lambda x: F.epps_pulley(x, directions=dirs),
    ]
    for fn in fns:
        assert torch.autograd.gradcheck(fn, (z,))


# ---------------------------------------------------------------- sliced MMD


def ref_sliced(z, dirs, gamma, cf, estimator, num_knots):
    """Loop over slices, knots and samples of the Gauss–Hermite characteristic-function form."""
    x, w = np.polynomial.hermite.hermgauss(num_knots)
    t, w = 2 * math.sqrt(gamma) * x, w / math.sqrt(math.pi)
    z, dirs = z.double().numpy(), dirs.double().numpy()
    dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    n, total = z.shape[0], 0.0
    for theta in dirs:
        p = z @ theta
        for tq, wq in zip(t, w):
            c = sum(math.cos(tq * pi) for pi in p) / n
            s = sum(math.sin(tq * pi) for pi in p) / n
            sq = c * c + s * s
            if estimator == "u":
                sq = (n * sq - 1) / (n - 1)
            total += wq * (sq - 2 * c * cf(tq) + cf(tq) ** 2)
    return total / len(dirs)


@pytest.mark.parametrize("prior,cf", [
    (priors.Gaussian(1.3), lambda t, d: math.exp(-0.5 * (1.3 * t) ** 2)),
    (priors.Laplace(0.8), lambda t, d: (1 + (0.8 * t) ** 2) ** (-(d + 1) / 2)),
], ids=["gaussian", "laplace"])
@pytest.mark.parametrize("n,d", [(2, 1), (30, 5), (8, 1024)])
@pytest.mark.parametrize("estimator", ["v", "u"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sliced_mmd2_matches_loop(prior, cf, n, d, estimator, dtype, gen):
    z = torch.randn(n, d, generator=gen, dtype=torch.float64) + 0.2
    dirs = torch.randn(3, d, generator=gen, dtype=torch.float64)
    expected = ref_sliced(z, dirs, 0.5, lambda t: cf(t, d), estimator, 21)
    value = F.sliced_mmd2(z.to(dtype), kernels.Gaussian(0.5), prior, directions=dirs.to(dtype), estimator=estimator)
    close(value, expected, dtype, scale=3.0)


def test_student_t_marginal_cf_matches_monte_carlo(gen):
    prior = priors.StudentT(nu=3.0, sigma=0.7)
    y = prior.sample(200000, 1, generator=gen, dtype=torch.float64)[:, 0]
    t = torch.tensor([0.0, 0.5, 1.3, 3.0], dtype=torch.float64)
    mc = torch.cos(t[:, None] * y).mean(1)
    torch.testing.assert_close(prior.marginal_cf(t, 1), mc, atol=6e-3, rtol=0)


def exact_1d_mmd2_v(p, gamma, sigma):
    """Closed-form V-statistic MMD^2 of a 1-D sample against N(0, sigma^2), Gaussian kernel."""
    r2 = (p[:, None] - p[None, :]) ** 2
    cross = torch.exp(-gamma * p ** 2 / (1 + 2 * gamma * sigma ** 2)) / math.sqrt(1 + 2 * gamma * sigma ** 2)
    return torch.exp(-gamma * r2).mean() - 2 * cross.mean() + 1 / math.sqrt(1 + 4 * gamma * sigma ** 2)


def test_sliced_quadrature_equals_exact_per_slice_mmd(gen):
    """With enough knots the CF form is the exact average of 1-D MMDs over the slices."""
    z = torch.randn(40, 6, generator=gen, dtype=torch.float64) * 1.4 - 0.3
    dirs = torch.randn(5, 6, generator=gen, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    for gamma in (0.25, 0.5):
        exact = torch.stack([exact_1d_mmd2_v(z @ d, gamma, 1.0) for d in dirs]).mean()
        value = F.sliced_mmd2(z, kernels.Gaussian(gamma), priors.Gaussian(), num_knots=64, directions=dirs)
        close(value, exact, scale=1.0)


def test_sine_term_erratum(gen):
    """Figure 1 keeps only cosines; on an asymmetric sample that is far from the exact MMD."""
    z = torch.randn(200, 1, generator=gen, dtype=torch.float64) * 0.5 + 1.0
    dirs = torch.ones(1, 1, dtype=torch.float64)
    exact = exact_1d_mmd2_v(z[:, 0], 0.5, 1.0)
    ours = F.sliced_mmd2(z, kernels.Gaussian(0.5), priors.Gaussian(), num_knots=64, directions=dirs)
    x, w = np.polynomial.hermite.hermgauss(64)
    t = torch.from_numpy(2 * math.sqrt(0.5) * x)
    cos_only = ((torch.cos(z * t).mean(0) - torch.exp(-t ** 2 / 2)) ** 2 * torch.from_numpy(w / math.sqrt(math.pi))).sum()
    close(ours, exact, scale=1.0)
    assert float(cos_only) < 0.8 * float(exact)


def test_many_slices_converge_to_monte_carlo_over_directions():
    """K = 2048 random slices agree with an independent average over 2048 other directions."""
    g = torch.Generator().manual_seed(11)
    z = torch.randn(64, 16, generator=g, dtype=torch.float64) * 1.2
    est = F.sliced_mmd2(z, kernels.Gaussian(0.5), priors.Gaussian(), num_slices=2048, num_knots=41, generator=g)
    dirs = torch.randn(2048, 16, generator=g, dtype=torch.float64)
    per_slice = torch.stack([exact_1d_mmd2_v(z @ (d / d.norm()), 0.5, 1.0) for d in dirs])
    se = float(per_slice.std()) / math.sqrt(2048)
    assert abs(float(est - per_slice.mean())) < 5 * se * math.sqrt(2)


def test_paper_laplace_target_differs_from_table2_marginal(gen):
    z = priors.Laplace(1.0).sample(4000, 8, generator=gen, dtype=torch.float64)
    dirs = torch.randn(16, 8, generator=gen, dtype=torch.float64)
    kw = dict(directions=dirs, estimator="u")
    exact = F.sliced_mmd2(z, kernels.Gaussian(0.5), priors.Laplace(1.0), **kw)
    paper = F.sliced_mmd2(z, kernels.Gaussian(0.5), priors.Laplace(1.0), target_cf="paper", **kw)
    assert abs(float(exact)) < 2e-3 < float(paper)


# ---------------------------------------------------------------- Epps–Pulley


def ref_epps_pulley(z, dirs, t_max, n_points):
    z, dirs = z.double().numpy(), dirs.double().numpy()
    dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    t = np.linspace(0, t_max, n_points)
    total = 0.0
    for theta in dirs:
        p = z @ theta
        err = [(np.cos(tk * p).mean() - math.exp(-tk * tk / 2)) ** 2 + np.sin(tk * p).mean() ** 2 for tk in t]
        integrand = np.array(err) * np.exp(-t * t / 2)
        total += 2 * np.trapezoid(integrand, t) * len(p)
    return total / len(dirs)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_epps_pulley_matches_reference(gen, dtype):
    z = torch.randn(33, 7, generator=gen, dtype=torch.float64) * 1.1
    dirs = torch.randn(6, 7, generator=gen, dtype=torch.float64)
    value = F.epps_pulley(z.to(dtype), directions=dirs.to(dtype))
    close(value, ref_epps_pulley(z, dirs, 3.0, 17), dtype)


def test_epps_pulley_is_scaled_sliced_mmd(gen):
    """EP = N sqrt(2 pi) MMD^2_V(gamma = 1/2) up to the trapezoid rule's error (paper Prop. 1)."""
    z = torch.randn(128, 10, generator=gen, dtype=torch.float64) * 1.3 + 0.2
    dirs = torch.randn(8, 10, generator=gen, dtype=torch.float64)
    mmd = F.sliced_mmd2(z, kernels.Gaussian(0.5), priors.Gaussian(), num_knots=64, directions=dirs)
    scaled = 128 * math.sqrt(2 * math.pi) * mmd
    assert abs(float(F.epps_pulley(z, directions=dirs) / scaled) - 1) < 3e-3
    assert abs(float(F.epps_pulley(z, directions=dirs, t_max=6.0, n_points=121) / scaled) - 1) < 1e-6


# ---------------------------------------------------------------- shapes, precision, robustness


def test_views_are_regularized_separately_and_averaged(gen):
    z = torch.randn(3, 20, 4, generator=gen, dtype=torch.float64)
    k, q = kernels.Gaussian(0.3), priors.Gaussian()
    expected = torch.stack([F.mmd2(v, k, q) for v in z]).mean()
    close(F.mmd2(z, k, q), expected)
    dirs = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    expected = torch.stack([F.sliced_mmd2(v, k, q, directions=dirs) for v in z]).mean()
    close(F.sliced_mmd2(z, k, q, directions=dirs), expected)


def test_bf16_autocast_computes_in_float32(gen):
    z = torch.randn(64, 8, generator=gen)
    ref = F.mmd2(z, kernels.Gaussian(), priors.Gaussian())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        zb = (z @ torch.eye(8)).to(torch.bfloat16)
        value = F.mmd2(zb, kernels.Gaussian(), priors.Gaussian())
        ep = F.epps_pulley(zb, num_slices=16, generator=gen)
    assert value.dtype == torch.float32 and ep.dtype == torch.float32
    assert abs(float(value - ref)) < 5e-3


@pytest.mark.parametrize("kernel", [kernels.Gaussian(), kernels.IMQ()], ids=["gaussian", "imq"])
def test_no_underflow_at_large_dimension(kernel, gen):
    """D = 1024 with the default bandwidth, embeddings far from the prior: nonzero value and gradient."""
    z = (torch.randn(64, 1024, generator=gen) * 3.0 + 2.0).requires_grad_()
    value = F.mmd2(z, kernel, priors.Gaussian())
    value.backward()
    assert torch.isfinite(value) and float(value.detach()) > 1e-3
    assert torch.isfinite(z.grad).all() and float(z.grad.abs().max()) > 0


def test_explicit_default_bandwidth_rule(gen):
    z = torch.randn(16, 10, generator=gen, dtype=torch.float64)
    close(F.mmd2(z, kernels.Gaussian(), priors.Gaussian()), F.mmd2(z, kernels.Gaussian(1 / 20), priors.Gaussian()))
    gamma = kernels.median_heuristic(z)
    close(F.mmd2(z, kernels.Gaussian("median"), priors.Gaussian()), F.mmd2(z, kernels.Gaussian(gamma), priors.Gaussian()))


def test_a_zero_gaussian_draw_gives_a_zero_direction_not_nan(monkeypatch):
    """random_directions normalises Gaussian draws; an all-zero draw must not become 0/0."""
    from kerjepa import slicing
    draws = torch.tensor([[0.0, 0.0, 0.0], [3.0, 0.0, 4.0]])
    monkeypatch.setattr(slicing.torch, "randn", lambda *args, **kwargs: draws.clone())
    d = slicing.random_directions(2, 3)
    assert torch.equal(d, torch.tensor([[0.0, 0.0, 0.0], [0.6, 0.0, 0.8]]))


@pytest.mark.parametrize("call,exc,match", [
    (lambda: F.mmd2(torch.randn(5), kernels.Gaussian(), priors.Gaussian()), ValueError, r"shape \(N, D\)"),
    (lambda: F.mmd2(torch.randn(1, 3), kernels.Gaussian(), priors.Gaussian()), ValueError, "at least 2 row"),
    (lambda: F.mmd2(torch.ones(3, 2, dtype=torch.int64), kernels.Gaussian(), priors.Gaussian()), TypeError, "float32"),
    (lambda: F.mmd2(torch.randn(4, 2), "gaussian", priors.Gaussian()), TypeError, "kernel must be"),
    (lambda: F.mmd2(torch.randn(4, 2), kernels.Gaussian(), priors.Laplace()), ValueError, "prior_samples"),
    (lambda: F.mmd2(torch.randn(4, 2), kernels.Gaussian(), priors.Gaussian(), estimator="w"), ValueError, "estimator"),
    (lambda: kernels.Gaussian(-1.0), ValueError, "gamma"),
    (lambda: kernels.IMQ(1.0, beta=0.0), ValueError, "beta"),
    (lambda: kernels.Gaussian("mean"), ValueError, "gamma"),
    (lambda: priors.StudentT(nu=0.0), ValueError, "nu"),
    (lambda: priors.Gaussian(sigma=float("inf")), ValueError, "sigma"),
    (lambda: F.sliced_mmd2(torch.randn(4, 2), kernels.IMQ(), priors.Gaussian()), ValueError, "Gaussian kernel"),
    (lambda: F.sliced_mmd2(torch.randn(4, 2), kernels.Gaussian(), priors.Gaussian(), directions=torch.randn(3, 5)),
     ValueError, r"\(K, 2\)"),
    (lambda: F.sliced_mmd2(torch.randn(4, 2), kernels.Gaussian(), priors.Gaussian(), num_slices=0), ValueError, "num_slices"),
    (lambda: F.sliced_mmd2(torch.randn(4, 2), kernels.Gaussian(), priors.StudentT(3.0), num_slices=4, target_cf="paper"),
     ValueError, "Student-t"),
    (lambda: F.epps_pulley(torch.randn(4, 2), n_points=16), ValueError, "odd"),
])
def test_bad_input_is_named(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ------------------------------------------------------------------ float32 beyond its range
@pytest.mark.parametrize("call", [
    lambda z: F.mmd2(z, kernels.Gaussian(), priors.Gaussian()),
    lambda z: F.mmd2(z, kernels.Gaussian(), priors.Gaussian(), estimator="v"),
    lambda z: F.mmd2(z, kernels.IMQ(), priors.Gaussian()),
    lambda z: F.mmd2(z, kernels.IMQ(beta=1.5), priors.Gaussian(), backend="chunked", block_size=8),
    lambda z: F.mmd2(z, kernels.Gaussian(), priors.Laplace(), prior_samples=16,
                     generator=torch.Generator().manual_seed(0)),
], ids=["gaussian-u", "gaussian-v", "imq", "imq-chunked", "prior-samples"])
@pytest.mark.parametrize("scale", [1e19, 1e30])
def test_float32_rows_whose_squared_distances_overflow(call, scale):
    """|z| ~ 1e19: squared norms exceed float32's range (3.4e38). Distances come out as inf, the
    kernel as 0, and the value equals the float64 value of the same rows, with a finite gradient."""
    z = (scale * torch.randn(24, 6, generator=torch.Generator().manual_seed(0))).requires_grad_(True)
    assert torch.isinf((z.detach() * z.detach()).sum(-1)).any()
    value = call(z)
    (grad,) = torch.autograd.grad(value, z)
    expected = call(z.detach().double())
    assert torch.isfinite(grad).all()
    close(value.detach(), expected, dtype=torch.float32, scale=1.0)


def test_overflow_safe_distances_are_the_same_numbers():
    """On ordinary float32 rows the scaled distances are the direct ones, to float32 round-off."""
    from kerjepa import pairwise
    z = 3.0 * torch.randn(40, 7, generator=torch.Generator().manual_seed(1))
    k = kernels.IMQ(0.3)

    def plain(xa, xb, fa, fb, dot, r2):
        return k.phi(r2)

    def safe(xa, xb, fa, fb, dot, r2):
        assert dot is None
        return plain(xa, xb, fa, fb, dot, r2)

    safe.overflow_safe = True
    for backend in ("dense", "chunked"):
        zs, zp = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
        vs = pairwise.pair_sum(safe, zs, backend=backend, block_size=16)
        vp = pairwise.pair_sum(plain, zp, backend=backend, block_size=16)
        vs.backward(), vp.backward()
        torch.testing.assert_close(vs, vp, rtol=RTOL[torch.float32], atol=0.0)
        torch.testing.assert_close(zs.grad, zp.grad, rtol=RTOL[torch.float32],
                                   atol=RTOL[torch.float32] * float(zp.grad.abs().max()))
    unscaled = ((z * z).sum(-1)[:, None] + (z * z).sum(-1)[None, :] - 2.0 * z @ z.T).clamp_min(0.0)
    torch.testing.assert_close(kernels.sqdist(z), unscaled.fill_diagonal_(0.0), rtol=RTOL[torch.float32],
                               atol=RTOL[torch.float32] * float(unscaled.max()))
