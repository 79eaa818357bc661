"""The one slicing path (kerjepa.slicing.ecf) behind sliced_mmd2, epps_pulley and sliced_ksd2.

Each estimator is checked, value and gradient, against a float64 reference written with explicit
loops over slices and knots on the full (unfolded) Gauss-Hermite rule of NumPy, without the
helper; the helper's memory is checked by counting the bytes autograd saves; the faults of large
Student-t degrees of freedom, many knots and too many slices each have a test. The CPU-vs-CUDA
parity tests at the end run where a GPU is present.
"""
import math
import os
import warnings

import mpmath as mp
import numpy as np
import pytest
import torch

from kerjepa import analytic, functional as F, kernels, priors, slicing
from kerjepa.special import hyp1f1

F64 = torch.float64


# --------------------------------------------------------------------------------------------
# Float64 references: loops over slices and knots, full Gauss-Hermite rule
# --------------------------------------------------------------------------------------------
def _unit(theta):
    return theta / theta.norm(dim=1, keepdim=True)


def _full_rule(num_knots, gamma):
    x, w = np.polynomial.hermite.hermgauss(num_knots)
    return (2.0 * math.sqrt(gamma) * torch.from_numpy(x)), torch.from_numpy(w / math.sqrt(math.pi))


def _ecf_loop(p, tq):
    """mean_i cos(t p_i), mean_i sin(t p_i) for one slice and one knot."""
    return torch.cos(tq * p).mean(), torch.sin(tq * p).mean()


def ref_sliced_mmd2(z, theta, gamma, prior, num_knots, estimator="v", target_cf="marginal"):
    n, dim = z.shape
    t, w = _full_rule(num_knots, gamma)
    if target_cf == "paper":
        target = 1.0 / (1.0 + (prior.sigma * t) ** 2)
    else:
        target = prior.marginal_cf(t, dim)
    total = 0.0
    for th in _unit(theta):
        p = z @ th
        for q in range(num_knots):
            c, s = _ecf_loop(p, t[q])
            sq = c * c + s * s
            if estimator == "u":
                sq = (n * sq - 1.0) / (n - 1)
            total = total + w[q] * (sq - 2.0 * c * target[q] + target[q] ** 2)
    return total / theta.shape[0]


def ref_epps_pulley(z, theta, t_max=3.0, n_points=17):
    n = z.shape[0]
    dt = t_max / (n_points - 1)
    total = 0.0
    for th in _unit(theta):
        p = z @ th
        for j in range(n_points):
            tj = j * dt
            c, s = _ecf_loop(p, torch.tensor(tj, dtype=F64))
            weight = (dt if j in (0, n_points - 1) else 2.0 * dt) * math.exp(-0.5 * tj * tj)
            total = total + weight * ((c - math.exp(-0.5 * tj * tj)) ** 2 + s ** 2)
    return n * total / theta.shape[0]


def ref_sliced_ksd2(z, theta, gamma, prior, num_knots, estimator="v"):
    """1-D Stein discrepancy per slice: |sum_i a_i|^2 (minus sum_i |a_i|^2 for "u"), a_i = (s_i + i t) e^{i t p_i}."""
    n = z.shape[0]
    t, w = _full_rule(num_knots, gamma)
    score = prior.score(z)
    total = 0.0
    for th in _unit(theta):
        p, s = z @ th, score @ th
        for q in range(num_knots):
            cos, sin = torch.cos(t[q] * p), torch.sin(t[q] * p)
            re, im = s * cos - t[q] * sin, s * sin + t[q] * cos
            pair = re.sum() ** 2 + im.sum() ** 2
            if estimator == "u":
                pair = (pair - (re * re + im * im).sum()) / (n * (n - 1))
            else:
                pair = pair / n ** 2
            total = total + w[q] * pair
    return total / theta.shape[0]


def _data(gen, n=40, dim=5, k=6, shift=0.3, scale=1.2):
    z = torch.randn(n, dim, generator=gen, dtype=F64) * scale + shift
    theta = torch.randn(k, dim, generator=gen, dtype=F64)
    return z, theta


def _value_and_grad(fn, z):
    x = z.clone().requires_grad_(True)
    v = fn(x)
    (g,) = torch.autograd.grad(v, x)
    return v.detach(), g


CASES = {
    "mmd-gaussian-v": (lambda z, th: F.sliced_mmd2(z, kernels.Gaussian(0.4), priors.Gaussian(1.3), directions=th),
                       lambda z, th: ref_sliced_mmd2(z, th, 0.4, priors.Gaussian(1.3), 21)),
    "mmd-laplace-u": (lambda z, th: F.sliced_mmd2(z, kernels.Gaussian(0.7), priors.Laplace(0.6), directions=th,
                                                  estimator="u", num_knots=20),
                      lambda z, th: ref_sliced_mmd2(z, th, 0.7, priors.Laplace(0.6), 20, "u")),
    "mmd-laplace-paper": (lambda z, th: F.sliced_mmd2(z, kernels.Gaussian(0.5), priors.Laplace(0.6), directions=th,
                                                      target_cf="paper"),
                          lambda z, th: ref_sliced_mmd2(z, th, 0.5, priors.Laplace(0.6), 21, target_cf="paper")),
    "mmd-student-t": (lambda z, th: F.sliced_mmd2(z, kernels.Gaussian(0.5), priors.StudentT(5.0), directions=th,
                                                  num_knots=15),
                      lambda z, th: ref_sliced_mmd2(z, th, 0.5, priors.StudentT(5.0), 15)),
    "epps-pulley": (lambda z, th: F.epps_pulley(z, directions=th),
                    lambda z, th: ref_epps_pulley(z, th)),
    "epps-pulley-grid": (lambda z, th: F.epps_pulley(z, directions=th, t_max=5.0, n_points=31),
                         lambda z, th: ref_epps_pulley(z, th, 5.0, 31)),
    "ksd-gaussian-v": (lambda z, th: F.sliced_ksd2(z, kernels.Gaussian(0.3), priors.Gaussian(1.1), directions=th),
                       lambda z, th: ref_sliced_ksd2(z, th, 0.3, priors.Gaussian(1.1), 21)),
    "ksd-student-t-u": (lambda z, th: F.sliced_ksd2(z, kernels.Gaussian(0.6), priors.StudentT(4.0), directions=th,
                                                    estimator="u", num_knots=16),
                        lambda z, th: ref_sliced_ksd2(z, th, 0.6, priors.StudentT(4.0), 16, "u")),
    "ksd-laplace-v": (lambda z, th: F.sliced_ksd2(z, kernels.Gaussian(0.5), priors.Laplace(0.8), directions=th),
                      lambda z, th: ref_sliced_ksd2(z, th, 0.5, priors.Laplace(0.8), 21)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_estimator_matches_loop_reference(case, gen):
    fn, ref = CASES[case]
    z, theta = _data(gen)
    got, got_grad = _value_and_grad(lambda x: fn(x, theta), z)
    want, want_grad = _value_and_grad(lambda x: ref(x, theta), z)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-9, atol=1e-12 * float(want_grad.abs().max()))


class _Anisotropic(priors.Prior):
    """N(0, diag(scales^2)): a score that is not a radial function times x."""

    def __init__(self, scales):
        super().__init__(1.0)
        self.scales = scales

    def score(self, z):
        return -z / self.scales ** 2


@pytest.mark.parametrize("estimator", ["v", "u"])
def test_sliced_ksd_with_a_non_radial_score(estimator, gen):
    z, theta = _data(gen)
    prior = _Anisotropic(torch.linspace(0.5, 2.0, z.shape[1], dtype=F64))
    fn = lambda x: F.sliced_ksd2(x, kernels.Gaussian(0.4), prior, directions=theta, estimator=estimator)  # noqa: E731
    got, got_grad = _value_and_grad(fn, z)
    want, want_grad = _value_and_grad(lambda x: ref_sliced_ksd2(x, theta, 0.4, prior, 21, estimator), z)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-9, atol=1e-12 * float(want_grad.abs().max()))


@pytest.mark.parametrize("case", ["mmd-gaussian-v", "epps-pulley", "ksd-gaussian-v"])
def test_float32_within_float32_round_off_of_reference(case, gen):
    fn, ref = CASES[case]
    z, theta = _data(gen, n=300, k=32)
    got = fn(z.float(), theta.float())
    want = ref(z, theta)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=0.0)


@pytest.mark.parametrize("case", ["mmd-laplace-u", "epps-pulley", "ksd-student-t-u"])
def test_views_with_many_blocks_and_second_derivatives(case, gen, monkeypatch):
    """Blocks of one or two slices, views, and gradgradcheck through the autograd fallback."""
    monkeypatch.setattr(slicing, "ECF_BLOCK", 64)
    fn, ref = CASES[case]
    z, theta = _data(gen, n=9, dim=3, k=5)
    zv = torch.stack([z, 0.7 * z.flip(0) - 0.2])
    torch.testing.assert_close(fn(zv, theta), 0.5 * (ref(zv[0], theta) + ref(zv[1], theta)), rtol=1e-10, atol=1e-14)
    assert torch.autograd.gradcheck(lambda x: fn(x, theta), (z.clone().requires_grad_(True),))
    assert torch.autograd.gradgradcheck(lambda x: fn(x, theta), (z.clone().requires_grad_(True),))


@pytest.mark.parametrize("step", [None, 0.35])
def test_ecf_against_direct_sums(step, gen, monkeypatch):
    monkeypatch.setattr(slicing, "ECF_BLOCK", 50)
    p = torch.randn(7, 11, generator=gen, dtype=F64).requires_grad_(True)
    w = torch.randn(2, 7, 11, generator=gen, dtype=F64).requires_grad_(True)
    t = torch.arange(6, dtype=F64) * 0.35 if step else torch.rand(6, generator=gen, dtype=F64) * 4 - 2
    re, im = slicing.ecf(p, t, w, step=step)
    for j, wj in enumerate([torch.ones(7, 11, dtype=F64), *w]):
        for k in range(7):
            for u in range(6):
                torch.testing.assert_close(re[j, k, u], (wj[k] * torch.cos(t[u] * p[k])).mean())
                torch.testing.assert_close(im[j, k, u], (wj[k] * torch.sin(t[u] * p[k])).mean())
    plain = slicing.ecf(p, t, step=step)
    torch.testing.assert_close(plain[0], re[0])
    torch.testing.assert_close(plain[1], im[0])
    f = lambda pp, ww: sum((a * a.sin()).sum() for a in slicing.ecf(pp, t, ww, step=step))  # noqa: E731
    assert torch.autograd.gradcheck(f, (p, w))
    assert torch.autograd.gradgradcheck(f, (p, w))


@pytest.mark.parametrize("step", [None, 0.35])
def test_ecf_with_a_row_scale_against_direct_sums(step, gen, monkeypatch):
    """``scale=c``: the weight c_i p_ki of a radial score, never stored; values and derivatives in p and c."""
    monkeypatch.setattr(slicing, "ECF_BLOCK", 50)
    p = torch.randn(7, 11, generator=gen, dtype=F64).requires_grad_(True)
    c = torch.randn(11, generator=gen, dtype=F64).requires_grad_(True)
    t = torch.arange(6, dtype=F64) * 0.35 if step else torch.rand(6, generator=gen, dtype=F64) * 4 - 2
    re, im = slicing.ecf(p, t, step=step, scale=c)
    for k in range(7):
        for u in range(6):
            torch.testing.assert_close(re[1, k, u], (c * p[k] * torch.cos(t[u] * p[k])).mean())
            torch.testing.assert_close(im[1, k, u], (c * p[k] * torch.sin(t[u] * p[k])).mean())
            torch.testing.assert_close(re[0, k, u], torch.cos(t[u] * p[k]).mean())
    f = lambda pp, cc: sum((a * a.sin()).sum() for a in slicing.ecf(pp, t, step=step, scale=cc))  # noqa: E731
    assert torch.autograd.gradcheck(f, (p, c))
    assert torch.autograd.gradgradcheck(f, (p, c))
    only_p = lambda pp: sum((a * a.sin()).sum() for a in slicing.ecf(pp, t, step=step, scale=c.detach()))  # noqa: E731
    assert torch.autograd.gradcheck(only_p, (p,))


def test_folded_rule_is_the_full_rule():
    for u in (1, 2, 7, 20, 21):
        t, w = slicing.gauss_hermite(u, 0.3)
        tf, wf = slicing.gauss_hermite(u, 0.3, fold=True)
        x, wn = _full_rule(u, 0.3)
        torch.testing.assert_close(t, x, rtol=0, atol=1e-13)
        torch.testing.assert_close(w, wn, rtol=1e-12, atol=0)
        assert bool((tf >= 0).all()) and len(tf) == (u + 1) // 2
        for f in (lambda s: torch.cos(1.3 * s) + s ** 4, lambda s: torch.exp(-s * s)):   # even integrands
            torch.testing.assert_close((wf * f(tf)).sum(), (w * f(t)).sum(), rtol=1e-13, atol=1e-15)


# --------------------------------------------------------------------------------------------
# Memory: autograd saves O(N K), not O(N K U)
# --------------------------------------------------------------------------------------------
def _saved_bytes(fn, z):
    """Bytes of the distinct tensors autograd saves during ``fn(z)`` (forward), by storage."""
    seen = {}

    def pack(t):
        seen[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
        return t

    x = z.clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(x)
    out.backward()
    return sum(seen.values())


@pytest.mark.parametrize("name", ["mmd", "ksd", "epps"])
def test_saved_tensors_scale_as_n_times_k_not_with_knots(name, gen):
    g = kernels.Gaussian()
    fns = {"mmd": lambda x, u: F.sliced_mmd2(x, g, priors.Laplace(), num_slices=64, num_knots=u,
                                             generator=torch.Generator().manual_seed(0)),
           "ksd": lambda x, u: F.sliced_ksd2(x, g, priors.StudentT(5.0), num_slices=64, num_knots=u,
                                             generator=torch.Generator().manual_seed(0)),
           "epps": lambda x, u: F.epps_pulley(x, num_slices=64, n_points=u,
                                              generator=torch.Generator().manual_seed(0))}
    fn = fns[name]
    n, dim, k = 512, 16, 64
    z = torch.randn(n, dim, generator=gen)
    few, many = _saved_bytes(lambda x: fn(x, 21), z), _saved_bytes(lambda x: fn(x, 81), z)
    # what an estimator needs at least: x (N, D), the directions (K, D), projections (K, N)
    floor = (n * dim + k * dim + k * n) * 4
    assert few <= 4 * floor + 64 * 81 * 8 * 4, (few, floor)
    assert many <= few + 64 * 81 * 8 * 4, (few, many)        # more knots: only (K, U) tensors grow
    # and doubling N doubles it (O(N K)), it does not multiply by the knots
    twice = _saved_bytes(lambda x: fn(x, 21), torch.cat([z, z]))
    assert twice <= 2.2 * few


# --------------------------------------------------------------------------------------------
# Faults: no NaN for valid parameters, our message for sizes that cannot work
# --------------------------------------------------------------------------------------------
def _student_t_cf_mpmath(nu, sigma, t):
    with mp.workdps(40):
        v = mp.mpf(nu) / 2
        x = mp.sqrt(mp.mpf(nu)) * sigma * abs(mp.mpf(t))
        if x == 0:
            return 1.0
        return float(mp.besselk(v, x) * x ** v / (mp.gamma(v) * 2 ** (v - 1)))


@pytest.mark.parametrize("nu", [3.0, 99.0, 101.0, 600.0, 1000.0, 5e3])
def test_student_t_marginal_cf_against_mpmath(nu):
    t = torch.tensor([0.0, 0.05, 0.4, 1.0, 2.2, 4.5], dtype=F64)
    got = priors.StudentT(nu, 0.9).marginal_cf(t, 4)
    want = torch.tensor([_student_t_cf_mpmath(nu, 0.9, float(ti)) for ti in t], dtype=F64)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-300)


def test_student_t_large_nu_tends_to_gaussian_without_nan(gen):
    t = torch.linspace(0.0, 30.0, 301, dtype=F64)
    gauss = torch.exp(-0.5 * (0.7 * t) ** 2)
    prev = math.inf
    for nu in (600.0, 1e4, 1e6, 1e9, 1e15, 1e300):
        cf = priors.StudentT(nu, 0.7).marginal_cf(t, 3)
        assert bool(torch.isfinite(cf).all()), nu
        gap = float((cf - gauss).abs().max())
        assert gap <= prev + 1e-15
        prev = gap
    assert prev < 1e-14
    # the estimators: finite, and at large nu equal to the Gaussian prior's value
    z, theta = _data(gen)
    for fn in (F.sliced_mmd2, F.sliced_ksd2):
        big = fn(z, kernels.Gaussian(0.5), priors.StudentT(1e12, 0.8), directions=theta)
        gauss_value = fn(z, kernels.Gaussian(0.5), priors.Gaussian(0.8), directions=theta)
        assert bool(torch.isfinite(big))
        torch.testing.assert_close(big, gauss_value, rtol=1e-8, atol=1e-12)
    assert bool(torch.isfinite(F.sliced_mmd2(z, kernels.Gaussian(0.5), priors.StudentT(600.0), directions=theta)))


@pytest.mark.parametrize("num_knots", [400, 1000])
def test_many_knots_are_finite_and_converged(num_knots, gen):
    t, w = slicing.gauss_hermite(num_knots, 0.5)
    assert bool(torch.isfinite(t).all() and torch.isfinite(w).all())
    torch.testing.assert_close(w.sum(), torch.tensor(1.0, dtype=F64))
    torch.testing.assert_close((w * t * t).sum(), torch.tensor(1.0, dtype=F64))        # N(0, 2 gamma)
    z, theta = _data(gen)
    for fn in (F.sliced_mmd2, F.sliced_ksd2):
        many = fn(z, kernels.Gaussian(0.5), priors.Gaussian(), directions=theta, num_knots=num_knots)
        fewer = fn(z, kernels.Gaussian(0.5), priors.Gaussian(), directions=theta, num_knots=120)
        torch.testing.assert_close(many, fewer, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("fn", [
    lambda z, k: F.sliced_mmd2(z, kernels.Gaussian(), priors.Gaussian(), num_slices=k),
    lambda z, k: F.sliced_ksd2(z, kernels.Gaussian(), priors.Gaussian(), num_slices=k),
    lambda z, k: F.epps_pulley(z, num_slices=k),
])
def test_too_many_slices_gives_our_message(fn, monkeypatch):
    z = torch.randn(64, 8)
    with pytest.raises(ValueError, match=r"num_slices=1000000000000 needs about .* GiB"):
        fn(z, 10 ** 12)
    # more than the device's memory is an error; more than what is still available, a warning
    need = 4096 * (8 + slicing._LIVE_KN * 64) * 4
    monkeypatch.setattr(slicing, "total_memory", lambda device: need - 1)
    with pytest.raises(ValueError, match=r"more than the .* GiB of memory of device cpu"):
        fn(z, 4096)
    monkeypatch.setattr(slicing, "total_memory", lambda device: need)
    monkeypatch.setattr(slicing, "available_memory", lambda device: need - 1)
    with pytest.warns(RuntimeWarning, match=r"still available on device cpu: the call may run out of memory"):
        assert torch.isfinite(fn(z, 4096))
    monkeypatch.setattr(slicing, "available_memory", lambda device: need)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.isfinite(fn(z, 4096))


def test_available_memory_is_at_most_the_physical_memory():
    free, total = slicing.available_memory("cpu"), slicing.total_memory("cpu")
    assert free is not None and 0 < free <= total <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert slicing.available_memory("meta") is None and slicing.total_memory("meta") is None


def test_ecf_takes_weights_or_scale_not_both(gen):
    p, t = torch.randn(3, 5, generator=gen), torch.ones(2)
    with pytest.raises(ValueError, match="not both"):
        slicing.ecf(p, t, torch.ones(1, 3, 5), scale=torch.ones(5))
    with pytest.raises(ValueError, match=r"scale must have shape \(N,\) = \(5,\)"):
        slicing.ecf(p, t, scale=torch.ones(3))


# --------------------------------------------------------------------------------------------
# CPU vs CUDA (values and gradients); skipped without a GPU
# --------------------------------------------------------------------------------------------
GPU_CASES = {
    "sliced-mmd": lambda z, th: F.sliced_mmd2(z, kernels.Gaussian(0.5), priors.Laplace(0.7), directions=th),
    "sliced-mmd-u-t": lambda z, th: F.sliced_mmd2(z, kernels.Gaussian(0.5), priors.StudentT(5.0), directions=th,
                                                  estimator="u"),
    "epps-pulley": lambda z, th: F.epps_pulley(z, directions=th),
    "sliced-ksd": lambda z, th: F.sliced_ksd2(z, kernels.Gaussian(0.5), priors.Gaussian(), directions=th),
    "sliced-ksd-u-laplace": lambda z, th: F.sliced_ksd2(z, kernels.Gaussian(0.5), priors.Laplace(0.7),
                                                        directions=th, estimator="u"),
    "analytic-mmd": lambda z, th: analytic.analytic_sliced_mmd2(z, kernels.Gaussian(0.5), priors.Gaussian()),
    "analytic-mmd-u": lambda z, th: analytic.analytic_sliced_mmd2(z, kernels.Gaussian(0.5), priors.Gaussian(),
                                                                  estimator="u"),
    "analytic-ksd": lambda z, th: analytic.analytic_sliced_ksd2(z, kernels.Gaussian(0.5), priors.Gaussian()),
    "analytic-ksd-u-chunked": lambda z, th: analytic.analytic_sliced_ksd2(z, kernels.Gaussian(0.5), priors.Gaussian(),
                                                                          estimator="u", backend="chunked",
                                                                          block_size=64),
}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", sorted(GPU_CASES))
def test_cuda_matches_cpu(case, dtype):
    gen = torch.Generator().manual_seed(7)
    z = torch.randn(300, 24, generator=gen, dtype=F64).to(dtype)
    theta = torch.randn(200, 24, generator=gen, dtype=F64).to(dtype)
    fn = GPU_CASES[case]
    v_cpu, g_cpu = _value_and_grad(lambda x: fn(x, theta), z)
    v_gpu, g_gpu = _value_and_grad(lambda x: fn(x, theta.cuda()), z.cuda())
    rtol = 1e-10 if dtype == torch.float64 else 2e-4
    torch.testing.assert_close(v_gpu.cpu(), v_cpu, rtol=rtol, atol=rtol * 1e-3)
    torch.testing.assert_close(g_gpu.cpu(), g_cpu, rtol=rtol, atol=rtol * float(g_cpu.abs().max()))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("a, b", [(0.5, 0.5), (0.5, 1.0), (0.5, 64.0), (1.5, 3.0), (1.5, 513.0), (2.5, 9.0)])
def test_hyp1f1_cuda_matches_cpu(a, b, dtype):
    z = -torch.logspace(-6, 6, 2001, dtype=dtype)
    z = torch.cat([torch.zeros(1, dtype=dtype), z])
    v_cpu, g_cpu = _value_and_grad(lambda x: hyp1f1(a, b, x).sum(), z)
    v_gpu, g_gpu = _value_and_grad(lambda x: hyp1f1(a, b, x).sum(), z.cuda())
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(v_gpu.cpu(), v_cpu, rtol=rtol, atol=0.0)
    torch.testing.assert_close(g_gpu.cpu(), g_cpu, rtol=rtol, atol=rtol * float(g_cpu.abs().max()))
    elementwise_cpu = hyp1f1(a, b, z)
    elementwise_gpu = hyp1f1(a, b, z.cuda()).cpu()
    torch.testing.assert_close(elementwise_gpu, elementwise_cpu, rtol=10 * rtol, atol=1e-30)
