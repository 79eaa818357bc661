"""kerjepa.special.hyp1f1 against mpmath, closed forms and autograd checks.

The dense-grid sweep over D = 1..4096 lives in benchmarks/bench_special.py; here a few hundred
mpmath points over the whole range z in [-1e6, 0] keep the file fast.
"""
from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest
import torch

from kerjepa.special import Hyp1F1, hyp1f1

F64, F32 = torch.float64, torch.float32
#: targets of the issue: relative error against mpmath, per dtype
TOL = {F64: 1e-10, F32: 2e-6}
#: |z| from 0 to 1e6, log-spaced, plus 0
C_GRID = np.concatenate([[0.0], np.logspace(-6, 6, 41)])


def reference(a, b, c):
    with mp.workdps(30):
        return np.array([float(mp.hyp1f1(a, b, -mp.mpf(float(ci)))) for ci in c])


def max_rel_err(a, b, dtype, c=C_GRID):
    z = -torch.tensor(c, dtype=dtype)
    c_exact = (-z).double().numpy()  # the float32-rounded arguments
    ref = reference(a, b, c_exact)
    got = hyp1f1(a, b, z).double().numpy()
    return np.max(np.abs(got - ref) / ref)


FAMILIES = [(k + 0.5, dim / 2 + k) for dim in (2, 3, 16, 128, 4096) for k in (0, 1, 2)]


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("a,b", FAMILIES)
def test_matches_mpmath(a, b, dtype):
    assert max_rel_err(a, b, dtype) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [F64, F32])
def test_derivative_matches_mpmath(dtype):
    """d/dz 1F1(a; b; z) through autograd equals mpmath's derivative (value and derivative target)."""
    for dim in (3, 64):
        for a, b in ((0.5, dim / 2), (1.5, dim / 2 + 1)):
            z = -torch.tensor(C_GRID[::3], dtype=dtype).requires_grad_(True)
            (g,) = torch.autograd.grad(hyp1f1(a, b, z).sum(), z)
            with mp.workdps(30):
                ref = np.array([float(mp.diff(lambda x: mp.hyp1f1(a, b, x), mp.mpf(float(zi))))
                                for zi in z.detach().double()])
            assert np.max(np.abs(g.double().numpy() - ref) / np.abs(ref)) <= TOL[dtype]


def test_closed_forms():
    """D = 1: exp; D = 2: exp(-c/2) I0(c/2); D = 3: sqrt(pi) erf(sqrt c) / (2 sqrt c) (A&S 13.6)."""
    c = torch.tensor(C_GRID[1:], dtype=F64)
    torch.testing.assert_close(hyp1f1(0.5, 0.5, -c), torch.exp(-c), rtol=0, atol=0)
    torch.testing.assert_close(hyp1f1(1.5, 1.5, -c), torch.exp(-c), rtol=0, atol=0)
    torch.testing.assert_close(hyp1f1(0.5, 1.0, -c), torch.special.i0e(c / 2), rtol=1e-12, atol=0)
    erf_form = math.sqrt(math.pi) * torch.erf(c.sqrt()) / (2 * c.sqrt())
    torch.testing.assert_close(hyp1f1(0.5, 1.5, -c), erf_form, rtol=1e-12, atol=0)


def test_tail_asymptote():
    """1F1(1/2; D/2; -c) ~ Gamma(D/2) / Gamma((D-1)/2) c^(-1/2) (paper, after Theorem 7; the paper drops Gamma(D/2))."""
    c = torch.tensor([1e12, 1e15], dtype=F64)
    for dim in (2, 16, 1024):
        const = math.exp(math.lgamma(dim / 2) - math.lgamma((dim - 1) / 2))
        torch.testing.assert_close(hyp1f1(0.5, dim / 2, -c) * c.sqrt(), torch.full_like(c, const),
                                   rtol=1e-8, atol=0)


@pytest.mark.parametrize("a,b", [(0.5, 0.5), (0.5, 1.0), (0.5, 8.0), (1.5, 9.0), (2.5, 2.0 + 1.5)])
def test_gradcheck(a, b):
    # z = 0 itself is left out: finite differences there step into z > 0, which is clamped
    z = -torch.tensor([1e-6, 1e-3, 0.3, 2.0, 17.0, 400.0, 3e4], dtype=F64).requires_grad_(True)
    f = Hyp1F1.get(a, b)
    assert torch.autograd.gradcheck(f, (z,), eps=1e-7, atol=1e-9, rtol=1e-6)
    assert torch.autograd.gradgradcheck(f, (z,), eps=1e-7, atol=1e-8, rtol=1e-5)


@pytest.mark.parametrize("dtype", [F64, F32, torch.bfloat16])
def test_finite_everywhere(dtype):
    """No NaN/Inf at z = 0, tiny and huge |z| (beyond the fitted range), for values and gradients."""
    z = torch.tensor([0.0, -0.0, -1e-30, -1e-8, -1.0, -1e6, -1e12, -3e38], dtype=torch.float32).to(dtype)
    z.requires_grad_(True)
    for dim in (1, 2, 5, 128, 4096):
        for a, b in ((0.5, dim / 2), (1.5, dim / 2 + 1)):
            v = hyp1f1(a, b, z)
            assert v.dtype == dtype
            (g,) = torch.autograd.grad(v.sum(), z)
            assert torch.isfinite(v).all() and torch.isfinite(g).all()
            tol = {F64: 1e-15, F32: 1e-7, torch.bfloat16: 0.0}[dtype]
            assert (v >= 0).all() and (v <= 1 + tol).all()
            assert abs(float(v[0].detach()) - 1.0) <= tol


def test_bf16_autocast_float32():
    """Under bf16 autocast a float32 argument is computed (and returned) in float32."""
    z = -torch.logspace(-3, 5, 50)
    ref = hyp1f1(0.5, 8.0, z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = hyp1f1(0.5, 8.0, z)
    assert got.dtype == F32
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_shapes_chunks_and_positive_z(monkeypatch):
    """Any shape; the CPU blocking does not change values; z > 0 is treated as 0."""
    import kerjepa.special as special
    z = -torch.rand(3, 5, 7, dtype=F64) * 50
    full = hyp1f1(0.5, 6.0, z)
    monkeypatch.setattr(special, "CPU_CHUNK", 8)
    torch.testing.assert_close(hyp1f1(0.5, 6.0, z), full, rtol=0, atol=0)
    assert full.shape == (3, 5, 7)
    assert float(hyp1f1(0.5, 6.0, torch.tensor([2.0], dtype=F64))) == 1.0


@pytest.mark.parametrize("path", ["horner64", "clenshaw"])
def test_float32_fallback_paths(path):
    """float32 inputs whose monomial form is ill-conditioned go through float64 (Horner or Clenshaw)."""
    f = Hyp1F1(0.5, 8.0)  # a fresh instance, not the cached one
    f.mono32 = None
    if path == "clenshaw":
        f.mono64 = None
    z = -torch.tensor(C_GRID, dtype=F32)
    ref = reference(0.5, 8.0, (-z).double().numpy())
    got = f(z)
    assert got.dtype == F32
    assert np.max(np.abs(got.double().numpy() - ref) / ref) <= TOL[F32]


def test_validation():
    with pytest.raises(ValueError, match="a must be > 0"):
        Hyp1F1(0.0, 1.0)
    with pytest.raises(ValueError, match="b must be >= a"):
        Hyp1F1(1.5, 1.0)
    with pytest.raises(TypeError, match="z must be a torch.Tensor"):
        hyp1f1(0.5, 1.0, [0.0])
    with pytest.raises(TypeError, match="floating-point"):
        hyp1f1(0.5, 1.0, torch.tensor([0]))
