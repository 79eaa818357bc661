r"""Analytic (infinite) slicing: the sliced MMD and KSD averaged over *all* directions.

For the Gaussian kernel :math:`e^{-\gamma(u-v)^2}` on 1-D projections and the prior
:math:`\mathcal N(0, \sigma^2 I_D)`, the average over :math:`\xi\sim U(S^{D-1})` of the sliced
discrepancies is an unsliced pairwise statistic (paper Theorems 7-9). With
:math:`A(c) = {}_1F_1(\tfrac12; \tfrac D2; -c)` and :math:`B(c) = {}_1F_1(\tfrac32; \tfrac D2 + 1; -c)`,
computed exactly by :mod:`kerjepa.special`:

* **MMD (Theorems 7-8, eq. 12).** Pair term :math:`\kappa_D(x, y) = A(\gamma\|x-y\|^2)`, cross term
  :math:`(1+2\gamma\sigma^2)^{-1/2} A\big(\gamma\|x\|^2/(1+2\gamma\sigma^2)\big)`, constant
  :math:`C = (1+4\gamma\sigma^2)^{-1/2}`.
* **KSD (Theorem 9, with the sign of its last term corrected to minus).** For
  :math:`\delta = x - x'`, :math:`r^2 = \|\delta\|^2`, :math:`\eta = \delta/r`, :math:`p = \eta^\top x`,
  :math:`p' = \eta^\top x'`, :math:`q = x^\top x' - pp'` and :math:`c = \gamma r^2`,

  .. math::

      h(x, x') = \Big(2\gamma + \tfrac{q}{\sigma^4(D-1)}\Big)A
      + \tfrac1D\Big(\tfrac{pp'}{\sigma^4} - \tfrac{q}{\sigma^4(D-1)}\Big)B
      - \tfrac1D\Big(\tfrac{2\gamma}{\sigma^2} + 4\gamma^2\Big)r^2 B .

  Collecting the :math:`pp'` terms gives the form that is evaluated,

  .. math::

      h = 2\gamma A + \frac{x^\top x'\,(A - B/D)}{\sigma^4(D-1)}
      - \frac{\gamma\,(\delta^\top x)(\delta^\top x')}{\sigma^4(D-1)}\,\frac{A - B}{c}
      - \frac{2\gamma/\sigma^2 + 4\gamma^2}{D}\,r^2 B,

  in which :math:`pp' = (\delta^\top x)(\delta^\top x')/r^2` no longer divides by :math:`r^2`:
  :math:`(A - B)/c \to 2(D-1)/(D(D+2))` as :math:`c\to0` (a short Taylor series is used for
  :math:`c < 0.05`). At :math:`x = x'` it gives :math:`2\gamma + \|x\|^2/(D\sigma^4)`, which is
  :math:`\mathbb E_\xi` of the 1-D Stein kernel (paper eq. 29) at :math:`u = v = \xi^\top x`: the
  V-statistic's diagonal and duplicated rows take this limit. For D = 1 the terms in
  :math:`1/(D-1)` vanish (there is no orthogonal complement) and :math:`h` is the 1-D Stein kernel.

Approximations (``approx=``), for reproducing the paper's Table 1 (paper eq. 13):

* ``"imq"``: :math:`A \approx (1 + 4c/(2D-3))^{-1/2}` (paper eq. 13; :math:`D \ge 2`) in every
  :math:`A`. In the KSD, :math:`B = -D\,dA/dc` is approximated by differentiating the same IMQ,
  :math:`B \approx \frac{2D}{2D-3}(1 + 4c/(2D-3))^{-3/2}` (consistent with eq. 13, about 8 % high at
  :math:`c = 0` for D = 20).
* ``"imq-rule"`` (KSD only): the same rule :math:`{}_1F_1(a; b; -c) \approx (1 + c/(b - \tfrac34))^{-a}`
  applied to :math:`B` as well, :math:`B \approx (1 + 4c/(2D+1))^{-3/2}`.

With an approximation, :math:`A - B` no longer vanishes at :math:`c = 0`, so the pair term is
direction-dependent as :math:`x' \to x`; pairs with :math:`r^2 = 0` then take the exact limit
:math:`2\gamma + x^\top x'/(D\sigma^4)`.

The 1-D bandwidth is resolved like the finite-slice estimators: a number as given, ``None`` means
:math:`\gamma = 1/2` (the 1-D default :math:`1/(2\cdot1)`), and ``"median"`` means
:math:`D` times the median heuristic of ``z`` (all views together), since a projection onto a
random direction carries :math:`\|\delta\|^2/D` of a squared distance on average.

Derived and checked in the chapter :ref:`ch-slicing`.
"""
from __future__ import annotations

import math

import torch

from . import _checks
from . import kernels as _kernels
from . import priors as _priors
from .pairwise import DEFAULT_BLOCK, pair_mean
from .slicing import projection_gamma
from .special import Hyp1F1

__all__ = ["analytic_sliced_mmd2", "analytic_sliced_ksd2", "check_analytic_options", "MMD_APPROX", "KSD_APPROX"]

MMD_APPROX = (None, "imq")
KSD_APPROX = (None, "imq", "imq-rule")
#: below this c = gamma r^2, (A - B)/c is summed from its Taylor series instead of differenced
_SERIES_BELOW = 0.05
_SERIES_TERMS = 8


def check_analytic_options(kernel, prior, estimator, approx, approx_options, fn_name: str) -> None:
    """Raise unless analytic slicing accepts this kernel, prior, ``estimator`` and ``approx``.

    The hyperparameter checks of both estimators, shared with the sliced functions and modules
    (which run them when they are built).
    """
    _kernels.check_kernel(kernel)
    _priors.check_prior(prior)
    if not isinstance(kernel, _kernels.Gaussian) or not isinstance(prior, _priors.Gaussian):
        raise ValueError(f"{fn_name}: analytic slicing is implemented for a Gaussian kernel with a "
                         f"Gaussian prior only (kernels.Gaussian x priors.Gaussian); got "
                         f"{type(kernel).__name__} x {type(prior).__name__}")
    _checks.choice(estimator, "estimator", ("u", "v"))
    _checks.choice(approx, "approx", approx_options)


def _validated(z, kernel, prior, estimator, approx, approx_options, fn_name):
    """Check the arguments shared by both estimators; return ``(z, D, gamma)``."""
    check_analytic_options(kernel, prior, estimator, approx, approx_options, fn_name)
    z = _checks.embeddings(z, min_rows=2 if estimator == "u" else 1)
    dim = z.shape[-1]
    if approx is not None and dim < 2:
        raise ValueError(f"approx={approx!r} needs D >= 2 (alpha = 4 gamma / (2D - 3)), got D = {dim}")
    return z, dim, projection_gamma(kernel, z)


def _imq(c, scale, power):
    """(1 + c / scale)^(-power)."""
    return (1.0 + c / scale).pow(-power)


def analytic_sliced_mmd2(z: torch.Tensor, kernel, prior, estimator: str = "v", approx: str | None = None,
                         backend: str = "auto", block_size: int = DEFAULT_BLOCK) -> torch.Tensor:
    r"""Sliced MMD² against :math:`\mathcal N(0,\sigma^2I_D)` averaged over all directions (Theorems 7-8).

    .. math::

        \widehat{\mathrm{MMD}}^2 = \operatorname{mean}_{i,j}\kappa_D(z_i, z_j)
        - \frac{2}{N\sqrt{1+2\gamma\sigma^2}}\sum_i
          {}_1F_1\!\Big(\tfrac12;\tfrac D2;-\tfrac{\gamma\|z_i\|^2}{1+2\gamma\sigma^2}\Big)
        + (1+4\gamma\sigma^2)^{-1/2},

    with :math:`\kappa_D(x,y) = {}_1F_1(\tfrac12;\tfrac D2;-\gamma\|x-y\|^2)` and the mean over
    :math:`i \ne j` (``"u"``, paper eq. 12, unbiased) or all pairs (``"v"``, the limit of the
    finite-slice V-statistic of :func:`kerjepa.functional.sliced_mmd2` as K grows).

    Args:
        z: embeddings (N, D), or (V, N, D) (each view separately, then averaged).
        kernel: :class:`~kerjepa.kernels.Gaussian` acting on 1-D projections (``None`` -> 1/2,
            ``"median"`` -> D × the median heuristic).
        prior: :class:`~kerjepa.priors.Gaussian`.
        estimator: ``"v"`` (default) or ``"u"``.
        approx: ``None`` (exact :math:`{}_1F_1`) or ``"imq"`` (paper eq. 13, α = 4γ/(2D−3), β = ½;
            needs D >= 2). The constant C is kept exact.
        backend, block_size: pair-sum backend, see :mod:`kerjepa.pairwise`.

    Returns:
        Scalar tensor (float32 for float32/bf16/fp16 input, float64 for float64).

    Raises:
        ValueError: other kernel/prior, unknown ``estimator``/``approx``, ``approx="imq"`` with D = 1.

    Example:
        >>> import torch
        >>> from kerjepa import kernels, priors
        >>> z = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
        >>> analytic_sliced_mmd2(z, kernels.Gaussian(0.5), priors.Gaussian(1.0))
        tensor(0.0989, dtype=torch.float64)
    """
    z, dim, gamma = _validated(z, kernel, prior, estimator, approx, MMD_APPROX, "analytic_sliced_mmd2")
    sigma2 = prior.sigma ** 2
    shrink = 1.0 + 2.0 * gamma * sigma2
    const = (1.0 + 4.0 * gamma * sigma2) ** -0.5
    if approx is None:
        kappa = Hyp1F1.get(0.5, dim / 2.0)
    else:
        scale = (2.0 * dim - 3.0) / 4.0

        def kappa(neg_c):
            return _imq(-neg_c, scale, 0.5)

    if approx is None:
        pair_fn = _KappaPair(kappa, gamma)
    else:
        def pair_fn(xa, xb, fa, fb, dot, r2):
            return kappa(-gamma * r2)

    def statistic(x):
        pairs = pair_mean(pair_fn, x, (), estimator=estimator, backend=backend, block_size=block_size)
        cross = kappa(-(gamma / shrink) * (x * x).sum(-1)).mean() / math.sqrt(shrink)
        return pairs - 2.0 * cross + const

    return _checks.per_view(z, statistic)


def _ratio_series(dim: int) -> list[float]:
    """Taylor coefficients of (A(c) - B(c)) / c = sum_k coefs[k] c^k, k = 0 .. _SERIES_TERMS - 1."""
    # A = sum_n alpha_n (-c)^n / n!, B = sum_n beta_n (-c)^n / n!, alpha_0 = beta_0 = 1
    coefs = []
    alpha = beta = 1.0
    for n in range(1, _SERIES_TERMS + 1):
        alpha *= (0.5 + n - 1) / (dim / 2.0 + n - 1)
        beta *= (1.5 + n - 1) / (dim / 2.0 + 1 + n - 1)
        coefs.append((alpha - beta) * (-1.0) ** n / math.factorial(n))
    return coefs


def _horner(coefs, c):
    out = torch.full_like(c, coefs[-1])
    for k in coefs[-2::-1]:
        out = out * c + k
    return out


def _a_minus_b_over_c(dim: int, c: torch.Tensor, a_val: torch.Tensor, b_val: torch.Tensor) -> torch.Tensor:
    """(A(c) - B(c)) / c, by its Taylor series for small c and by the difference elsewhere."""
    small = c < _SERIES_BELOW
    series = _horner(_ratio_series(dim), torch.where(small, c, torch.zeros_like(c)))
    safe = torch.where(small, torch.ones_like(c), c)
    return torch.where(small, series, (a_val - b_val) / safe)


#: elements of one (rows x N) block of the hand-written pair sums (512 KiB in float32: in cache)
PAIR_BLOCK = 1 << 17


def _row_blocks(n: int):
    """Row ranges [i0, i1) of the hand-written pair sums: blocks of about PAIR_BLOCK elements."""
    step = max(1, min(n, PAIR_BLOCK // max(n, 1)))
    for i0 in range(0, n, step):
        yield i0, min(i0 + step, n)


def _diagonal(m: torch.Tensor, i0: int) -> torch.Tensor:
    """View of the entries (i, i0 + i) of a block of rows [i0, i0 + B) against all columns."""
    return m.diagonal(offset=i0)


class _KappaPair:
    r"""Pair function :math:`\kappa_D(\gamma r^2) = A(\gamma r^2)` of the analytic sliced MMD, with
    the hand-written gradient of its full sum (the ``sum_and_grads`` protocol of
    :mod:`kerjepa.pairwise`): :math:`\nabla_{x_i} = 4\gamma\sum_j A'(c_{ij})(x_i - x_j)`, one
    (N, N) @ (N, D) product, with :math:`A' = -\frac1D{}_1F_1(\tfrac32; \tfrac D2 + 1; -c)`.
    Computed over blocks of rows, so that every element-wise pass runs in cache.
    """

    def __init__(self, kappa, gamma: float):
        self.kappa, self.gamma = kappa, gamma

    def __call__(self, xa, xb, fa, fb, dot, r2):
        return self.kappa(-self.gamma * r2)

    def sum_and_grads(self, x, features, exclude_diagonal):
        gamma, fn = self.gamma, self.kappa
        n = x.shape[0]
        nx = (x * x).sum(-1)
        total = x.new_zeros(())
        grad = torch.empty_like(x)
        for i0, i1 in _row_blocks(n):
            xb = x[i0:i1]
            neg_c = torch.mm(xb, x.T).mul_(2.0 * gamma).sub_(nx[i0:i1, None], alpha=gamma)
            neg_c.sub_(nx[None, :], alpha=gamma).clamp_max_(0.0)
            _diagonal(neg_c, i0).zero_()
            total += fn.evaluate(neg_c).sum()
            slope = fn.derivative.evaluate(neg_c).mul_(-fn.a / fn.b)   # dA/dc
            _diagonal(slope, i0).zero_()
            torch.mm(slope, x, out=grad[i0:i1])
            grad[i0:i1].mul_(-1.0).addcmul_(slope.sum(-1, keepdim=True), xb).mul_(4.0 * gamma)
        if exclude_diagonal:  # A(0) = 1 on the diagonal
            total -= n
        return total, (grad,)


class _SteinPair:
    r"""Pair function :math:`h` of the analytic sliced KSD (module docstring, exact :math:`A, B`,
    D >= 2), with the hand-written gradient of its full sum (the ``sum_and_grads`` protocol).

    As a function of :math:`r^2`, :math:`d = x^\top x'` and the squared norms :math:`n, n'`
    (``features``), with :math:`A' = -B/D`, :math:`B' = -\frac{3}{D+2}E`,
    :math:`E = {}_1F_1(\tfrac52; \tfrac D2 + 2; -c)` and :math:`R = (A - B)/c`:
    :math:`P = \partial h/\partial r^2`, :math:`Q = \partial h/\partial d` and
    :math:`\partial h/\partial n = -\gamma\alpha R\,\delta^\top x'`, so that the gradient of the
    symmetric sum is :math:`\nabla_x = 4(P\mathbf 1)\odot x + (2Q - 4P)x` and
    :math:`\nabla_n = -2\gamma\alpha(R\odot\Delta')\mathbf 1` with
    :math:`\alpha = 1/(\sigma^4(D-1))`. :math:`R'` comes from the same Taylor series as
    :math:`R` for small :math:`c`. Three :math:`{}_1F_1` evaluations per pair where autograd
    takes four, over blocks of rows so that every element-wise pass runs in cache.
    """

    def __init__(self, dim: int, gamma: float, sigma: float, pair_fn):
        self.dim, self.gamma = dim, gamma
        self.inv_s4 = 1.0 / sigma ** 4
        self.quad = 2.0 * gamma / sigma ** 2 + 4.0 * gamma * gamma
        self.fa, self.fb = Hyp1F1.get(0.5, dim / 2.0), Hyp1F1.get(1.5, dim / 2.0 + 1.0)
        self.fe = Hyp1F1.get(2.5, dim / 2.0 + 2.0)
        self.series = _ratio_series(dim)
        self.dseries = [k * a for k, a in enumerate(self.series)][1:]
        self._plain = pair_fn

    def __call__(self, xa, xb, fa, fb, dot, r2):
        return self._plain(xa, xb, fa, fb, dot, r2)

    def sum_and_grads(self, x, features, exclude_diagonal):
        (nrm,) = features
        n = x.shape[0]
        total = x.new_zeros(())
        grad_x, grad_n = torch.empty_like(x), torch.empty_like(nrm)
        for i0, i1 in _row_blocks(n):
            t, gx, gn = self._block(x, nrm, i0, i1, exclude_diagonal)
            total += t
            grad_x[i0:i1], grad_n[i0:i1] = gx, gn
        return total, (grad_x, grad_n)

    def _block(self, x, nrm, i0, i1, exclude_diagonal):
        """Sum of h over rows [i0, i1) and all columns, and the gradients of the full sum for these rows."""
        dim, gamma = self.dim, self.gamma
        alpha = self.inv_s4 / (dim - 1)
        xb, nb = x[i0:i1], nrm[i0:i1, None]
        dot = torch.mm(xb, x.T)
        r2 = torch.mul(dot, -2.0).add_(nb).add_(nrm[None, :]).clamp_min_(0.0)
        _diagonal(r2, i0).zero_()
        neg_c = r2 * -gamma
        a_val, b_val, e_val = (f.evaluate(neg_c) for f in (self.fa, self.fb, self.fe))
        c = neg_c.neg_()
        small = c < _SERIES_BELOW
        cs = torch.where(small, c, 0.0)
        safe = c.masked_fill_(small, 1.0)
        ratio = torch.where(small, _horner(self.series, cs), (a_val - b_val).div_(safe))
        # R' = (A' - B' - R) / c, with A' = -B / D and B' = -3 E / (D + 2)
        dratio = torch.mul(e_val, 3.0 / (dim + 2.0)).sub_(b_val, alpha=1.0 / dim).sub_(ratio).div_(safe)
        dratio = torch.where(small, _horner(self.dseries, cs), dratio)
        del cs, safe, small
        dx = torch.sub(nb, dot)                     # delta . x
        dxp = torch.sub(dot, nrm[None, :])          # delta . x'
        prod = dx * dxp
        a_b = torch.add(a_val, b_val, alpha=-1.0 / dim)               # A - B / D
        h = a_val.mul_(2.0 * gamma).addcmul_(dot, a_b, value=alpha).addcmul_(prod, ratio, value=-gamma * alpha)
        h.addcmul_(r2, b_val, value=-self.quad / dim)
        if exclude_diagonal:
            _diagonal(h, i0).zero_()
        total = h.sum()
        del h
        # P = dh/dr2 = gamma dh/dc (through A, B, R) - quad / D * B, with dA/dc = -B / D
        db = e_val.mul_(-3.0 / (dim + 2.0))                           # dB/dc
        p = torch.mul(b_val, -2.0 * gamma / dim)
        p.addcmul_(dot, torch.add(db, b_val), value=-alpha / dim)          # alpha d (A' - B'/D)
        p.addcmul_(prod, dratio, value=-gamma * alpha).addcmul_(r2, db, value=-self.quad / dim)
        p.mul_(gamma).add_(b_val, alpha=-self.quad / dim)
        del prod, dratio, db, b_val, r2
        # Q = dh/d(x.x') = alpha (A - B / D) - gamma alpha R (dx - dxp)
        q = a_b.mul_(alpha).addcmul_(ratio, dx.sub_(dxp), value=-gamma * alpha)
        rn = ratio.mul_(dxp)
        if exclude_diagonal:
            for m in (p, q, rn):
                _diagonal(m, i0).zero_()
        gx = torch.mm(q.mul_(2.0).add_(p, alpha=-4.0), x).addcmul_(p.sum(-1, keepdim=True), xb, value=4.0)
        gn = rn.sum(-1).mul_(-2.0 * gamma * alpha)
        return total, gx, gn


def analytic_sliced_ksd2(z: torch.Tensor, kernel, prior, estimator: str = "v", approx: str | None = None,
                         backend: str = "auto", block_size: int = DEFAULT_BLOCK) -> torch.Tensor:
    r"""Sliced KSD² for :math:`\mathcal N(0,\sigma^2I_D)` averaged over all directions (Theorem 9, corrected).

    :math:`\operatorname{mean}_{i,j} h(z_i, z_j)` over :math:`i \ne j` (``"u"``, paper eq. 15) or all
    pairs (``"v"``, the limit of the finite-slice V-statistic of
    :func:`kerjepa.functional.sliced_ksd2`), with the pair term :math:`h` of the module docstring:
    Theorem 9 with its last term *subtracted* (the paper prints "+" in Theorem 9 and eq. 15).

    Args:
        z: embeddings (N, D), or (V, N, D) (each view separately, then averaged).
        kernel: :class:`~kerjepa.kernels.Gaussian` acting on 1-D projections (``None`` -> 1/2,
            ``"median"`` -> D × the median heuristic).
        prior: :class:`~kerjepa.priors.Gaussian`.
        estimator: ``"v"`` (default) or ``"u"``.
        approx: ``None`` (exact :math:`{}_1F_1` for A and B), ``"imq"`` (eq. 13 for A, its derivative
            for B) or ``"imq-rule"`` (eq. 13 for A, the same rule for B); both need D >= 2.
        backend, block_size: pair-sum backend, see :mod:`kerjepa.pairwise`.

    Returns:
        Scalar tensor (float32 for float32/bf16/fp16 input, float64 for float64).

    Raises:
        ValueError: other kernel/prior, unknown ``estimator``/``approx``, an approximation with D = 1.

    Example:
        >>> import torch
        >>> from kerjepa import kernels, priors
        >>> z = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
        >>> analytic_sliced_ksd2(z, kernels.Gaussian(0.5), priors.Gaussian(1.0))
        tensor(0.4316, dtype=torch.float64)
    """
    z, dim, gamma = _validated(z, kernel, prior, estimator, approx, KSD_APPROX, "analytic_sliced_ksd2")
    inv_s4 = 1.0 / prior.sigma ** 4
    quad = 2.0 * gamma / prior.sigma ** 2 + 4.0 * gamma * gamma

    if dim == 1:  # the 1-D Stein kernel (paper eq. 29): xi = +-1
        def stein_1d(xa, xb, fa, fb, dot, r2):
            return (2.0 * gamma + dot * inv_s4 - quad * r2) * torch.exp(-gamma * r2)

        return _checks.per_view(z, lambda x: pair_mean(stein_1d, x, (), estimator=estimator,
                                                       backend=backend, block_size=block_size))

    if approx is None:
        fa_, fb_ = Hyp1F1.get(0.5, dim / 2.0), Hyp1F1.get(1.5, dim / 2.0 + 1.0)

        def a_and_b(c):
            return fa_(-c), fb_(-c)
    else:
        scale_a = (2.0 * dim - 3.0) / 4.0
        if approx == "imq":
            def a_and_b(c):
                base = 1.0 + c / scale_a
                a_val = base.rsqrt()
                return a_val, (2.0 * dim / (2.0 * dim - 3.0)) * a_val / base
        else:
            scale_b = (2.0 * dim + 1.0) / 4.0

            def a_and_b(c):
                return _imq(c, scale_a, 0.5), _imq(c, scale_b, 1.5)

    def pair_fn(xa, xb, fa, fb, dot, r2):
        (na,), (nb,) = fa, fb                       # squared norms (Na,), (Nb,)
        c = gamma * r2
        a_val, b_val = a_and_b(c)
        dx = na[:, None] - dot                      # delta . x
        dxp = dot - nb[None, :]                     # delta . x'
        if approx is None:
            ratio = _a_minus_b_over_c(dim, c, a_val, b_val)
        else:
            ratio = (a_val - b_val) / torch.where(c > 0, c, torch.ones_like(c))
        h = (2.0 * gamma * a_val
             + (inv_s4 / (dim - 1)) * dot * (a_val - b_val / dim)
             - (gamma * inv_s4 / (dim - 1)) * dx * dxp * ratio
             - (quad / dim) * r2 * b_val)
        if approx is not None:  # r = 0: the exact, direction-free limit
            h = torch.where(r2 > 0, h, 2.0 * gamma + (inv_s4 / dim) * dot)
        return h

    pair = _SteinPair(dim, gamma, prior.sigma, pair_fn) if approx is None else pair_fn

    def statistic(x):
        return pair_mean(pair, x, ((x * x).sum(-1),), estimator=estimator, backend=backend,
                         block_size=block_size)

    return _checks.per_view(z, statistic)
