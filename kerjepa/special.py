r"""Kummer's confluent hypergeometric function :math:`{}_1F_1(a; b; z)` for :math:`z \le 0`, in torch.

Analytic slicing (paper Theorems 7-9) replaces the average of a 1-D Gaussian
kernel over all slice directions by

.. math::

    \mathbb E_{\xi\sim U(S^{D-1})} e^{-\gamma(\xi^\top\delta)^2}
    = {}_1F_1\!\left(\tfrac12; \tfrac D2; -\gamma\|\delta\|^2\right),

and the sliced KSD also needs :math:`{}_1F_1(\tfrac32; \tfrac D2 + 1; \cdot)`. Gradients need one more
member of the family, :math:`\frac{d}{dz}{}_1F_1(a; b; z) = \frac ab\,{}_1F_1(a+1; b+1; z)`, so this
module serves every pair :math:`(a, b)` with :math:`0 < a \le b`, evaluated on real
:math:`z \le 0` (the estimators use :math:`(k + \tfrac12, \tfrac D2 + k)`, :math:`k = 0, 1, 2`, and
:math:`D = 1, \dots, 4096`, :math:`z \in [-10^6, 0]`).

**Method.** Write :math:`c = -z \ge 0`. For :math:`b > a` the function is a Beta mixture of exponentials,

.. math::

    {}_1F_1(a; b; -c) = \mathbb E\big[e^{-cB}\big], \qquad B\sim\mathrm{Beta}(a, b-a),

so it decreases from 1 at :math:`c = 0` to the algebraic tail
:math:`\frac{\Gamma(b)}{\Gamma(b-a)}c^{-a}\,(1 + O(1/c))` (Abramowitz & Stegun 13.5.1). Both ends are
captured by one change of variables. With a scale :math:`s > 0` put

.. math::

    t = \frac{c}{c + s} \in [0, 1), \qquad {}_1F_1(a; b; -c) = (1 - t)^a\, g(t),

where :math:`(1-t)^a = (1 + c/s)^{-a}` carries the :math:`c^{-a}` tail, so :math:`g` is smooth and
bounded on the *closed* interval :math:`[0, 1]`, with :math:`g(0) = 1` and
:math:`g(1) = \frac{\Gamma(b)}{\Gamma(b-a)}s^{-a}`. For large :math:`b`, :math:`g` is nearly constant
(this is the IMQ limit of paper eq. 13: :math:`(1 + c/(b - \tfrac34))^{-a}` is already a good
approximation), so few terms are needed. We take :math:`s = b + 4`, which minimises the degree needed
for small :math:`D` without hurting large :math:`D`.

:class:`Hyp1F1` builds, once per :math:`(a, b)`, the Chebyshev interpolant in :math:`x = 2t - 1` of
:math:`h = g / L`, where :math:`L(t) = 1 + t\,(g(1) - 1)` is linear and makes :math:`h(0) = h(1) = 1`
(or :math:`L = 1`; of the two factorisations the one that needs fewer terms and converts stably
to the monomial basis in float32 is kept). The values at Chebyshev points of the first kind come
from ``mpmath`` at 30 significant digits (0.05-0.15 s per pair, cached), and the series is made
exactly 1 at :math:`z = 0`. It is truncated separately for each working precision:

* float64: Clenshaw's recurrence on the Chebyshev series (7-30 terms for :math:`D \ge 8`, up to 256
  for :math:`D \le 3`, where :math:`e^{-c}`-like terms make :math:`h` less smooth near
  :math:`t = 1`); relative error below :math:`10^{-11}`.
* float32 (and bf16/fp16 inputs, computed in float32): the truncated series (4-20 terms) in the
  monomial basis, evaluated by Horner's rule with one fused ``addcmul`` per term, in place. The
  round-off of that form is measured at construction; where it exceeds 5e-7 (D = 2 and some
  :math:`(a+1, b+1)` members at small :math:`D`, whose monomial coefficients alternate and grow),
  the same truncated series is evaluated by Horner's rule in float64 and rounded; relative error
  below :math:`6\times10^{-7}`.

:math:`1 - t = s/(s + c)` is recomputed from :math:`z` for the prefactor rather than from
:math:`x`, so there is no cancellation as :math:`t \to 1`. On the CPU the tensor is processed in
blocks of :data:`CPU_CHUNK` elements with reused scratch buffers, so every in-place pass runs in
cache. An evaluation costs a reciprocal, a square root and one multiply-add per term per element;
there is no branch, so no NaN/Inf can appear: :math:`z = 0` gives :math:`x = -1`,
:math:`z \to -\infty` gives :math:`x \to 1` and :math:`(1-t)^a \to 0`.

The alternatives were slower or less accurate over the whole range: the power series cancels
catastrophically for large :math:`c`; the asymptotic series diverges for :math:`c \lesssim b`, so
it needs a second method and a branch; a Gauss-Jacobi quadrature of the Beta mixture needs a number
of exponentials per element that grows with :math:`c` to resolve :math:`c` up to :math:`10^6`.

When :math:`a = b` (``D = 1``: :math:`{}_1F_1(\tfrac12; \tfrac12; z) = e^z`) the function is
``torch.exp``. Derivatives in :math:`z` use the identity above, through a custom
:class:`torch.autograd.Function` whose backward calls the :math:`(a+1, b+1)` member, so it is
differentiable to any order.

The chapter :ref:`ch-slicing` explains the choice; ``benchmarks/bench_special.py`` prints the
errors against ``mpmath`` on a dense grid (D = 1..4096) and the time relative to ``torch.exp``
(on a shared 2-core CPU, float32 on a 4096 x 4096 matrix: 1-3.5 times ``torch.exp``).
"""
from __future__ import annotations

import functools
import math
from numbers import Real

import numpy as np
import torch

__all__ = ["Hyp1F1", "hyp1f1", "SCALE_SHIFT", "CPU_CHUNK"]

#: the scale of the map t = c / (c + s) is s = b + SCALE_SHIFT
SCALE_SHIFT = 4.0
#: largest neglected Chebyshev coefficient relative to min h, per working precision
_TAIL = {torch.float64: 1e-14, torch.float32: 5e-9}
#: float32 Horner is used when its measured round-off on [-1, 1] stays below this
_HORNER32_MAX_ERR = 5e-7
#: block length in elements of CPU evaluation, so that the in-place passes run in cache
CPU_CHUNK = 1 << 20
#: mpmath working precision (decimal digits) of the interpolation values
_DPS = 30


def _chebyshev_nodes(n: int) -> np.ndarray:
    """Chebyshev points of the first kind on [-1, 1], descending."""
    return np.cos(np.pi * (np.arange(n) + 0.5) / n)


def _tail_ratio(a: float, b: float, s: float) -> float:
    """g(1) = Gamma(b) / (Gamma(b - a) s^a), the limit of 1F1(a; b; -c) (1 + c/s)^a as c -> oo."""
    return math.exp(math.lgamma(b) - math.lgamma(b - a) - a * math.log(s))


def _fit(a: float, b: float, s: float, g1: float, n: int) -> tuple[np.ndarray, float]:
    """Chebyshev coefficients (length n) of h(x) = 1F1(a; b; -c) / ((1 - t)^a L(t)), and min h,
    where L(t) = 1 + t (g1 - 1)."""
    import mpmath as mp

    with mp.workdps(_DPS):
        ma, mb, ms = mp.mpf(a), mp.mpf(b), mp.mpf(s)
        vals = []
        for xj in _chebyshev_nodes(n):
            xj = mp.mpf(float(xj))
            one_minus_t = (1 - xj) / 2
            c = ms * (1 - one_minus_t) / one_minus_t
            lin = 1 + (1 - one_minus_t) * (g1 - 1)
            vals.append(float(mp.hyp1f1(ma, mb, -c) / (one_minus_t ** ma * lin)))
    vals = np.array(vals)
    k = np.arange(n)
    cos = np.cos(np.pi * np.outer(k, k + 0.5) / n)
    coef = (2.0 / n) * (cos @ vals)
    coef[0] /= 2.0
    return coef, float(vals.min())


def _horner_error(mono: np.ndarray, cheb: np.ndarray, dtype=torch.float32) -> float:
    """Max relative round-off of Horner on ``mono`` in ``dtype`` against the float64 Chebyshev sum."""
    if not np.all(np.abs(mono) < 1e30):  # long series: monomial coefficients beyond float32
        return math.inf
    x = torch.linspace(-1.0, 1.0, 4001, dtype=dtype)
    p = torch.full_like(x, float(mono[-1]))
    for m in mono[-2::-1]:
        p = p * x + float(m)
    ref = np.polynomial.chebyshev.chebval(x.double().numpy(), cheb)
    return float(np.max(np.abs(p.double().numpy() - ref) / np.abs(ref)))


def _truncate(coef: np.ndarray, tol: float) -> np.ndarray:
    """Shortest prefix after which every coefficient is below ``tol`` in magnitude."""
    tail = np.maximum.accumulate(np.abs(coef)[::-1])[::-1]  # tail[k] = max_{j >= k} |c_j|
    below = np.nonzero(tail < tol)[0]
    keep = int(below[0]) if len(below) else len(coef)
    return coef[:max(keep, 1)].copy()


class Hyp1F1:
    r"""The function :math:`z \mapsto {}_1F_1(a; b; z)` on :math:`z \le 0`, as a differentiable torch op.

    Construction fits the approximant (module docstring) once; calls are then elementwise torch
    operations on any device and dtype. Instances are cached: prefer :meth:`get` or :func:`hyp1f1`.

    Args:
        a: first parameter, > 0.
        b: second parameter, >= ``a``. ``b == a`` gives ``exp``.

    Example:
        >>> import torch
        >>> f = Hyp1F1.get(0.5, 1.5)          # D = 3: sqrt(pi) erf(sqrt(c)) / (2 sqrt(c))
        >>> f(torch.tensor([0.0, -1.0], dtype=torch.float64))
        tensor([1.0000, 0.7468], dtype=torch.float64)
    """

    def __init__(self, a: float, b: float):
        for name, value in (("a", a), ("b", b)):
            if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
                raise TypeError(f"{name} must be a finite real number, got {value!r}")
        a, b = float(a), float(b)
        if not a > 0:
            raise ValueError(f"a must be > 0, got {a}")
        if not b >= a:
            raise ValueError(f"b must be >= a (the Beta-mixture range), got a={a}, b={b}")
        self.a, self.b = a, b
        self.is_exp = b == a
        self._next = None
        if self.is_exp:
            return
        self.s = b + SCALE_SHIFT
        n = 256 if b - a < 4 else 128 if b - a < 16 else 64
        # two candidate factorisations: L = 1 (g itself) or L linear with L(1) = g(1), so that
        # h = g / L is 1 at both ends; keep the one that is cheaper and well conditioned in float32
        best = None
        for g1 in (1.0, _tail_ratio(a, b, self.s)):
            coef, hmin = _fit(a, b, self.s, g1, n)
            cheb = {dt: _truncate(coef, tol * hmin) for dt, tol in _TAIL.items()}
            for series in cheb.values():  # exact value 1 at z = 0 (x = -1): T_k(-1) = (-1)^k
                series[0] += 1.0 - float(np.sum(series * (-1.0) ** np.arange(len(series))))
            mono = np.polynomial.chebyshev.cheb2poly(cheb[torch.float32])
            conditioned = _horner_error(mono, cheb[torch.float32]) < _HORNER32_MAX_ERR
            rank = (not conditioned, len(cheb[torch.float32]))
            if best is None or rank < best[0]:
                best = (rank, g1, cheb, mono if conditioned else None)
        _, self.g1, self.cheb, self.mono32 = best
        # float64 Horner form with float32-accuracy coefficients, used for float32 inputs when
        # the float32 monomial form is ill-conditioned
        self.mono64 = np.polynomial.chebyshev.cheb2poly(self.cheb[torch.float32])
        if _horner_error(self.mono64, self.cheb[torch.float32], torch.float64) > 1e-9:
            self.mono64 = None  # then float32 inputs use Clenshaw in float64
        self._consts = {}  # (dtype, device) -> Horner coefficients as 0-d tensors, built once
        # prefactor (1 - t)^a: integer part by repeated products, then one sqrt for a half
        twice = 2.0 * a
        self._half_integer = twice == round(twice)

    @staticmethod
    @functools.lru_cache(maxsize=None)
    def get(a: float, b: float) -> "Hyp1F1":
        """Cached instance for ``(a, b)`` (floats; ``D / 2`` is exact in binary)."""
        return Hyp1F1(float(a), float(b))

    @property
    def derivative(self) -> "Hyp1F1":
        r"""The member :math:`(a + 1, b + 1)`: :math:`f'(z) = \frac ab\,{}_1F_1(a+1; b+1; z)`."""
        if self._next is None:
            self._next = Hyp1F1.get(self.a + 1.0, self.b + 1.0)
        return self._next

    def __repr__(self):
        return f"Hyp1F1(a={self.a!r}, b={self.b!r})"

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """Evaluate at ``z`` (any shape; entries > 0 are treated as 0). Differentiable in ``z``."""
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"z must be a torch.Tensor, got {type(z).__name__}")
        if not z.is_floating_point():
            raise TypeError(f"z must be a floating-point tensor, got dtype {z.dtype}")
        return _Hyp1F1Function.apply(z, self)

    # -- evaluation without autograd ------------------------------------------------------------
    def evaluate(self, z: torch.Tensor) -> torch.Tensor:
        """Value at ``z`` without autograd tracking (the forward of :meth:`__call__`)."""
        out_dtype = z.dtype
        work = z if z.dtype in (torch.float32, torch.float64) else z.float()
        with torch.no_grad():
            if self.is_exp:
                out = torch.clamp(work, max=0.0).exp_()
            else:
                out = self._evaluate_flat(work.reshape(-1)).view(work.shape)
        return out if out.dtype == out_dtype else out.to(out_dtype)

    def _evaluate_flat(self, z: torch.Tensor) -> torch.Tensor:
        if z.dtype == torch.float64:
            kernel, dtype = self._clenshaw, torch.float64
        elif self.mono32 is not None:
            kernel, dtype = self._horner, torch.float32
        elif self.mono64 is not None:  # ill-conditioned in float32 (small D): Horner in float64
            kernel, dtype = self._horner, torch.float64
        else:
            kernel, dtype = functools.partial(self._clenshaw, series=torch.float32), torch.float64
        n = z.numel()
        out = torch.empty(n, dtype=dtype, device=z.device)
        # On the CPU, blocks that stay in cache make each in-place pass several times faster
        chunk = min(n, CPU_CHUNK) if z.device.type == "cpu" else n
        scratch = [torch.empty(chunk, dtype=dtype, device=z.device) for _ in range(3)]
        for i in range(0, n, max(chunk, 1)):
            j = min(i + chunk, n)
            zi = z[i:j] if z.dtype == dtype else z[i:j].to(dtype)
            kernel(zi, out[i:j], [b[: j - i] for b in scratch])
        return out if out.dtype == z.dtype else out.to(z.dtype)

    def _one_minus_t_(self, z, out):
        """out = 1 - t = s / (s - z) in (0, 1], from z directly (no cancellation as t -> 1)."""
        s = self.s
        torch.mul(z, -1.0, out=out).add_(s)   # s + c
        out.clamp_(min=s)                     # z > 0 -> 0
        return out.reciprocal_().mul_(s)

    def _x_of_z_(self, z, out):
        """out = x = 2t - 1 = 1 - 2 (1 - t) in [-1, 1)."""
        return self._one_minus_t_(z, out).mul_(-2.0).add_(1.0)

    def _prefactor_(self, out, z, buf):
        """out *= (1 - t)^a L(t), recomputing 1 - t from z into ``buf``."""
        u = self._one_minus_t_(z, buf)
        g1 = self.g1
        if g1 != 1.0:
            out.addcmul_(out, u, value=(1.0 - g1) / g1).mul_(g1)  # L = g1 + (1 - g1) u
        if self._half_integer:
            for _ in range(int(self.a)):
                out.mul_(u)
            if self.a != int(self.a):
                out.mul_(u.sqrt_())
        else:
            out.mul_(u.pow_(self.a))
        return out

    def _horner(self, z, out, scratch):
        """Horner's rule on the monomial form, one fused multiply-add pass per degree."""
        x = self._x_of_z_(z, scratch[0])
        mono = self.mono32 if self.mono32 is not None else self.mono64
        key = (x.dtype, x.device)
        if key not in self._consts:
            self._consts[key] = [torch.tensor(float(m), dtype=x.dtype, device=x.device) for m in mono[-3::-1]]
        consts = self._consts[key]
        torch.mul(x, float(mono[-1]), out=out)
        if len(mono) > 1:
            out.add_(float(mono[-2]))
            for m in consts:
                torch.addcmul(m, out, x, out=out)
        else:
            out.fill_(float(mono[0]))
        return self._prefactor_(out, z, x)

    def _clenshaw(self, z, out, scratch, series=torch.float64):
        """Clenshaw's recurrence on the Chebyshev series truncated for ``series`` (in float64)."""
        x = self._x_of_z_(z, scratch[0])
        cheb = self.cheb[series]
        b1 = scratch[1].zero_()
        b2 = scratch[2].zero_()
        for ck in cheb[:0:-1]:  # c_{n-1} ... c_1:  b_k = c_k + 2x b_{k+1} - b_{k+2}
            b2.neg_().addcmul_(x, b1, value=2.0).add_(float(ck))
            b1, b2 = b2, b1
        torch.addcmul(b2.neg_(), x, b1, out=out).add_(float(cheb[0]))  # c_0 + x b_1 - b_2
        return self._prefactor_(out, z, x)


class _Hyp1F1Function(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, fn):
        ctx.fn = fn
        ctx.save_for_backward(z)
        return fn.evaluate(z)

    @staticmethod
    def backward(ctx, grad):
        (z,) = ctx.saved_tensors
        fn = ctx.fn
        dz = fn.derivative(z) * (fn.a / fn.b)  # differentiable: double backward works
        return grad * dz, None


def hyp1f1(a: float, b: float, z: torch.Tensor) -> torch.Tensor:
    r"""Kummer's function :math:`{}_1F_1(a; b; z)` for real :math:`z \le 0`, differentiable in ``z``.

    Relative error below 1e-11 in float64 and 6e-7 in float32 over the whole half-line for the
    families :math:`(k + \tfrac12, \tfrac D2 + k)`, D = 1..4096 (module docstring: the method).
    The first call for a new ``(a, b)`` builds a cached approximant (about 0.1 s).

    Args:
        a: > 0.
        b: >= ``a``.
        z: tensor of any shape, float32/float64 (bf16/fp16 are computed in float32 and returned in
            their own dtype). Entries > 0 are outside the supported domain and are treated as 0.

    Returns:
        Tensor like ``z``.

    Example:
        >>> import torch
        >>> z = torch.tensor([0.0, -2.0, -1e6], dtype=torch.float64)
        >>> hyp1f1(0.5, 0.5, z)                   # D = 1: exp(z)
        tensor([1.0000, 0.1353, 0.0000], dtype=torch.float64)
        >>> hyp1f1(0.5, 1.5, torch.tensor([-1e6], dtype=torch.float64))  # ~ sqrt(pi / (4 c))
        tensor([0.0009], dtype=torch.float64)
    """
    return Hyp1F1.get(float(a), float(b))(z)
