r"""Maximum mean discrepancy regularizers (paper §3.1–3.2, App. C, Prop. 1).

Three estimators of :math:`\mathrm{MMD}^2_k(\hat P_N, Q)` between the batch and a prior:

* :func:`mmd2` — unsliced, all pairs in :math:`\mathbb R^D`;
* :func:`sliced_mmd2` — averaged over 1-D projections: finitely many random slices with
  Gauss–Hermite quadrature of the characteristic-function form, or (``num_slices=None``) the
  analytic infinite-slice limit of Theorems 7–8;
* :func:`epps_pulley` — LeJEPA's SIGReg statistic exactly as its library computes it, the
  baseline the paper compares with.
"""
from __future__ import annotations

import math

import torch

from . import _checks, distributed, kernels as _kernels, priors as _priors
from .analytic import MMD_APPROX, analytic_sliced_mmd2, check_analytic_options
from .pairwise import BACKENDS, DEFAULT_BLOCK, pair_mean
from .slicing import ecf, gauss_hermite, project, projection_gamma, resolve_directions

__all__ = ["mmd2", "sliced_mmd2", "epps_pulley", "kernel_prior_mean", "check_mmd2_options",
           "check_sliced_mmd2_options", "check_epps_pulley_options", "NUM_MIXTURE_NODES"]

#: trapezoid nodes for the IMQ kernel's Gamma scale mixture (about 1e-12 relative error)
NUM_MIXTURE_NODES = 256


# --------------------------------------------------------------------------------------------
# Prior expectations of the kernel
# --------------------------------------------------------------------------------------------
def _gaussian_prior_log_terms(gamma: torch.Tensor | float, sq_norm: torch.Tensor, dim: int, sigma: float):
    r"""log of :math:`\mathbb E_{Y\sim\mathcal N(0,\sigma^2I_D)} e^{-\gamma\|x-Y\|^2}
    = (1+2\gamma\sigma^2)^{-D/2}\exp(-\gamma\|x\|^2/(1+2\gamma\sigma^2))` (paper eq. 23)."""
    s = 1.0 + 2.0 * gamma * sigma ** 2
    log_s = torch.log(s) if isinstance(s, torch.Tensor) else math.log(s)
    return -0.5 * dim * log_s - gamma * sq_norm / s


def _imq_mixture(kernel: _kernels.IMQ, rate: torch.Tensor, log_f) -> torch.Tensor:
    r""":math:`\mathbb E_{S\sim\Gamma(\beta,1)} f(\alpha S)` for :math:`f = e^{\log f}` with
    :math:`f(0) = 1`, by the trapezoid rule in :math:`\tau = \log S`.

    On the whole line the integrand :math:`e^{\beta\tau - e^\tau} f(\alpha e^\tau)/\Gamma(\beta)`
    is analytic and decays exponentially at both ends, so the trapezoid rule converges
    exponentially fast. The grid runs from :math:`\tau_{lo} = -28 - \log(1+\lambda)`, below the
    scale :math:`1/\lambda` on which :math:`f` varies, to :math:`\log 90` (where
    :math:`e^{-S}` is negligible); the nodes further down, where :math:`f = 1` to
    :math:`O(e^{-28})`, are summed as a geometric series.

    Args:
        rate: (...,) initial decay rates :math:`\lambda \ge 0` of :math:`f(\alpha s)` (no gradient).
        log_f: maps kernel-scale multipliers ``g`` of shape (..., Q) to ``log f(g)``.
    """
    beta = kernel.beta
    lam = rate.detach().clamp(max=torch.finfo(rate.dtype).max)[..., None]
    tau_lo = -28.0 - torch.log1p(lam)                                     # (..., 1)
    h = (math.log(90.0) - tau_lo) / (NUM_MIXTURE_NODES - 1)
    j = torch.arange(NUM_MIXTURE_NODES, dtype=rate.dtype, device=rate.device)
    tau = tau_lo + h * j                                                  # (..., Q)
    s = torch.exp(tau)
    log_g = beta * tau - s + log_f(kernel.alpha * s) + torch.log(h) - math.lgamma(beta)
    # nodes tau_lo - h, tau_lo - 2h, ... where f = 1 and e^{-s} = 1: geometric series
    log_tail = beta * (tau_lo - h) + torch.log(h) - torch.log1p(-torch.exp(-beta * h)) - math.lgamma(beta)
    return torch.logsumexp(torch.cat([log_g, log_tail], dim=-1), dim=-1).exp()


def kernel_prior_mean(z: torch.Tensor, kernel: _kernels.Kernel, prior: _priors.Prior):
    r"""Closed-form prior terms: :math:`\mathbb E_Y k(z_i, Y)` for each row and :math:`\mathbb E k(Y, Y')`.

    Supported exactly for a Gaussian prior: Gaussian kernel in closed form (paper Prop. 10),
    IMQ kernel through its Gamma scale mixture of Gaussian kernels, each with the closed form,
    integrated by the trapezoid rule in log-scale (exact to about 1e-12 relative).

    Args:
        z: (N, D).
        kernel: a resolved kernel.
        prior: :class:`kerjepa.priors.Gaussian`.

    Returns:
        ``(cross, const)``: shapes (N,) and () .
    """
    n, dim = z.shape
    sigma = prior.sigma
    # a squared norm beyond the dtype's range stays at its largest value (the terms are 0 there),
    # so that a mixture node whose scale underflows to 0 gives 0 * max = 0, not 0 * inf = nan
    sq_norm = (z * z).sum(-1).clamp(max=torch.finfo(z.dtype).max)
    if isinstance(kernel, _kernels.Gaussian):
        g = kernel.gamma
        cross = torch.exp(_gaussian_prior_log_terms(g, sq_norm, dim, sigma))
        const = torch.full((), math.exp(-0.5 * dim * math.log1p(4.0 * g * sigma ** 2)), dtype=z.dtype, device=z.device)
        return cross, const
    # IMQ: gamma = alpha * S with S ~ Gamma(beta, 1)
    a = kernel.alpha
    rate = a * (sq_norm + dim * sigma ** 2)
    cross = _imq_mixture(kernel, rate, lambda g: _gaussian_prior_log_terms(g, sq_norm[:, None], dim, sigma))
    rate0 = torch.full((), 2.0 * a * dim * sigma ** 2, dtype=z.dtype, device=z.device)  # a fill, no copy
    const = _imq_mixture(kernel, rate0, lambda g: -0.5 * dim * torch.log1p(4.0 * g * sigma ** 2))
    return cross, const


# --------------------------------------------------------------------------------------------
# Unsliced MMD
# --------------------------------------------------------------------------------------------
def _kernel_pair_fn(kernel):
    def pair_fn(xa, xb, fa, fb, dot, r2):
        return kernel.phi(r2)
    pair_fn.overflow_safe = True  # phi(inf) = 0: far pairs of float32 rows beyond its range count 0
    return pair_fn


def check_mmd2_options(kernel, prior, estimator: str = "u", prior_samples=None, backend: str = "auto",
                       block_size: int = DEFAULT_BLOCK) -> None:
    """Raise unless :func:`mmd2` accepts these options and has a route for this kernel × prior.

    The hyperparameter checks of :func:`mmd2`, shared with :class:`kerjepa.MMD` (which runs
    them when it is built).
    """
    _kernels.check_kernel(kernel)
    _priors.check_prior(prior)
    _checks.choice(estimator, "estimator", ("u", "v"))
    _checks.choice(backend, "backend", BACKENDS)
    _checks.positive_int(block_size, "block_size")
    if prior_samples is not None:
        _checks.positive_int(prior_samples, "prior_samples", minimum=2 if estimator == "u" else 1)
    elif not (isinstance(prior, _priors.Gaussian) and isinstance(kernel, (_kernels.Gaussian, _kernels.IMQ))):
        raise ValueError(
            f"mmd2 has exact prior terms only for a Gaussian prior with a Gaussian or IMQ kernel; "
            f"got kernel {type(kernel).__name__} with prior {type(prior).__name__}. Pass "
            f"prior_samples=M to use the two-sample estimator, or use ksd2 / sliced_mmd2 for this prior")


def mmd2(z: torch.Tensor, kernel: _kernels.Kernel, prior: _priors.Prior, estimator: str = "u",
         prior_samples: int | None = None, generator: torch.Generator | None = None,
         backend: str = "auto", block_size: int = DEFAULT_BLOCK) -> torch.Tensor:
    r"""Unsliced squared MMD between the batch and the prior (paper eqs. 5, 21–24).

    .. math::
        \widehat{\mathrm{MMD}}^2 = \frac{1}{N(N-1)}\sum_{i\ne j}k(z_i,z_j)
        - \frac{2}{N}\sum_i \mathbb E_Y k(z_i, Y) + \mathbb E_{Y,Y'}k(Y,Y')

    (``estimator="u"``; ``"v"`` keeps the ``i = j`` terms and divides by :math:`N^2`).

    Routes, by kernel × prior:

    * Gaussian × Gaussian: the closed form of Prop. 10 (BHEP, eq. 24 with its missing
      :math:`1/N` restored), computed in log space so large D does not underflow.
    * IMQ × Gaussian: exact prior terms through the IMQ's Gamma scale mixture of Gaussians
      (see :func:`.kernel_prior_mean`; derived in the MMD chapter).
    * anything × any prior with ``prior_samples=M``: the two-sample estimator against M fresh
      draws of the prior (U: eq. 21, with the cross term's :math:`1/(NM)`; V: all pairs).
      Other combinations without ``prior_samples`` raise ``ValueError``.

    Args:
        z: embeddings (N, D), or (V, N, D) for V views regularized separately and averaged.
        kernel: :class:`~kerjepa.kernels.Gaussian` or :class:`~kerjepa.kernels.IMQ`; a bandwidth
            of ``None`` resolves to :math:`1/(2D)`.
        prior: a :class:`~kerjepa.priors.Prior`.
        estimator: ``"u"`` (unbiased, may be negative) or ``"v"`` (biased, :math:`\ge 0`).
        prior_samples: M > 0 to use the two-sample estimator with M prior draws.
        generator: RNG for the prior draws.
        backend, block_size: pair-sum backend, see :mod:`kerjepa.pairwise`.

    Returns:
        Scalar tensor in the dtype of ``z`` (float32 for half-precision inputs).

    Values of ``z`` are not checked (that would wait for the device): NaN or Inf in ``z`` gives a
    non-finite result. Finite float32 rows whose squared distances exceed float32's range
    (:math:`\|z\| \gtrsim 10^{19}`) are computed without overflow: such pairs get the kernel
    value 0, as in float64.

    Raises:
        ValueError: bad shapes (V = 0 views included), N < 2 for ``"u"``, unknown names, or a
            kernel × prior combination without an exact route and no ``prior_samples``.
        TypeError: ``z``, ``kernel`` or ``prior`` of the wrong type.

    Derived in :ref:`ch-mmd`.

    Example:
        >>> import torch
        >>> from kerjepa import kernels, priors
        >>> z = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))
        >>> float(mmd2(z, kernels.Gaussian(), priors.Gaussian())) < 1e-2
        True
    """
    check_mmd2_options(kernel, prior, estimator, prior_samples, backend, block_size)
    z = _checks.embeddings(z, min_rows=2 if estimator == "u" else 1)
    return _mmd2(z, kernel, prior, estimator, prior_samples, generator, backend, block_size)


def _mmd2(z, kernel, prior, estimator, prior_samples, generator, backend, block_size):
    """:func:`mmd2` on checked arguments."""
    def statistic(x):
        k = kernel.resolve(x)
        pair = pair_mean(_kernel_pair_fn(k), x, estimator=estimator, backend=backend, block_size=block_size)
        if prior_samples is None:
            cross, const = kernel_prior_mean(x, k, prior)
            return pair - 2.0 * cross.mean() + const
        y = prior.sample(prior_samples, x.shape[-1], generator=generator, dtype=x.dtype).to(x.device)
        prior_pair = pair_mean(_kernel_pair_fn(k), y, estimator=estimator, backend=backend, block_size=block_size)
        return pair + prior_pair - 2.0 * k(x, y).mean()

    return _checks.per_view(z, statistic)


# --------------------------------------------------------------------------------------------
# Sliced MMD
# --------------------------------------------------------------------------------------------
TARGET_CFS = ("marginal", "paper")


def check_sliced_mmd2_options(kernel, prior, num_slices=1024, num_knots: int = 21, estimator: str = "v",
                              target_cf: str = "marginal", approx=None, backend: str = "auto",
                              block_size: int = DEFAULT_BLOCK, fixed_directions: bool = False) -> None:
    """Raise unless :func:`sliced_mmd2` accepts these options (shared with :class:`kerjepa.SlicedMMD`).

    ``fixed_directions``: whether ``directions=`` is given (then ``num_slices`` is not used).
    """
    _kernels.check_kernel(kernel)
    _priors.check_prior(prior)
    _checks.choice(estimator, "estimator", ("u", "v"))
    _checks.choice(target_cf, "target_cf", TARGET_CFS)
    if not isinstance(kernel, _kernels.Gaussian):
        raise ValueError(f"sliced_mmd2 needs a Gaussian kernel (its spectral density is the quadrature "
                         f"weight); got {type(kernel).__name__}. Use mmd2 for the IMQ kernel")
    if num_slices is None and not fixed_directions:
        if target_cf != "marginal":
            raise ValueError(f"target_cf={target_cf!r} applies to finite slicing only (num_slices=K); "
                             f"analytic slicing (num_slices=None) uses the exact marginal")
        check_analytic_options(kernel, prior, estimator, approx, MMD_APPROX, "sliced_mmd2")
        _checks.choice(backend, "backend", BACKENDS)
        _checks.positive_int(block_size, "block_size")
        return
    if approx is not None:
        raise ValueError(f"approx={approx!r} applies to analytic slicing (num_slices=None) only")
    if not fixed_directions:
        _checks.positive_int(num_slices, "num_slices")
    _checks.positive_int(num_knots, "num_knots")
    if target_cf == "paper" and isinstance(prior, _priors.StudentT):
        raise ValueError("target_cf='paper' (Figure 1's 1-D targets) exists for the Gaussian and "
                         "Laplace priors only; the Student-t prior uses target_cf='marginal'")


def _target_cf(prior, t, dim, target_cf):
    if target_cf == "paper":
        if isinstance(prior, _priors.StudentT):
            raise ValueError("target_cf='paper' (Figure 1's 1-D targets) exists for the Gaussian and "
                             "Laplace priors only; the Student-t prior uses target_cf='marginal'")
        if isinstance(prior, _priors.Laplace):
            return 1.0 / (1.0 + (prior.sigma * t) ** 2)
    return prior.marginal_cf(t, dim)


def sliced_mmd2(z: torch.Tensor, kernel: _kernels.Kernel, prior: _priors.Prior, num_slices: int | None = 1024,
                num_knots: int = 21, directions: torch.Tensor | None = None,
                generator: torch.Generator | None = None, estimator: str = "v",
                target_cf: str = "marginal", approx: str | None = None,
                backend: str = "auto", block_size: int = DEFAULT_BLOCK) -> torch.Tensor:
    r"""Sliced squared MMD with a Gaussian kernel on 1-D projections (paper §3.2, Fig. 1).

    Finite slicing (``num_slices=K``): project on K unit directions :math:`\theta_k` and
    integrate the squared distance of characteristic functions against the kernel's spectral
    density :math:`\mathcal N(0, 2\gamma)` with U Gauss–Hermite knots
    :math:`t_q = 2\sqrt\gamma\,x_q` (paper Fig. 1):

    .. math::
        \frac1K\sum_k\sum_q w_q\Big|\frac1N\sum_i e^{\mathrm i t_q\theta_k^\top z_i}
        - \varphi_{Q_1}(t_q)\Big|^2 .

    Both the cosine and the sine parts are kept; the paper's Figure 1 drops the sine part,
    which penalises only the symmetric part of the distribution. This is the V-statistic; with
    ``estimator="u"`` the :math:`i=j` terms are removed from :math:`|\hat\varphi|^2`.
    :math:`\varphi_{Q_1}` is the exact 1-D marginal CF of the prior (``target_cf="marginal"``);
    ``target_cf="paper"`` uses Figure 1's 1-D Laplace CF :math:`1/(1+\sigma^2t^2)`, which is
    the marginal of a different multivariate prior than the Table-2 Laplace (kept to
    reproduce Table 1's row).

    Analytic slicing (``num_slices=None``): the infinite-slice limit, Theorem 8 — an unsliced
    MMD with the kernel :math:`{}_1F_1(\tfrac12; \tfrac D2; -\gamma\|x-y\|^2)`; see
    :func:`kerjepa.analytic.analytic_sliced_mmd2` (``approx="imq"`` gives eq. 13's variant).

    Args:
        z: embeddings (N, D) or (V, N, D) (views use the same directions).
        kernel: :class:`~kerjepa.kernels.Gaussian`; its ``gamma`` acts on projections
            (``None`` -> 1/2, ``"median"`` -> D × the median heuristic of ``z``).
        prior: any :class:`~kerjepa.priors.Prior` (Gaussian only for analytic slicing).
        num_slices: K >= 1, or ``None`` for analytic slicing.
        num_knots: U Gauss–Hermite knots (21 in the paper).
        directions: (K, D) fixed directions (normalised here); overrides ``num_slices``.
        generator: RNG for random directions.
        estimator: ``"v"`` (default, the paper's) or ``"u"``.
        target_cf: ``"marginal"`` or ``"paper"`` (see above).
        approx: analytic slicing only (``None`` or ``"imq"``).
        backend, block_size: analytic slicing only, see :mod:`kerjepa.pairwise`.

    Returns:
        Scalar tensor.

    Raises:
        ValueError: non-Gaussian kernel, bad sizes or names, options that do not apply.

    Derived in :ref:`ch-mmd`; analytic slicing in :ref:`ch-slicing`.

    Example:
        >>> import torch
        >>> from kerjepa import kernels, priors
        >>> g = torch.Generator().manual_seed(0)
        >>> z = torch.randn(512, 16, generator=g)
        >>> float(sliced_mmd2(z, kernels.Gaussian(), priors.Gaussian(), num_slices=64, generator=g)) < 1e-2
        True
    """
    check_sliced_mmd2_options(kernel, prior, num_slices, num_knots, estimator, target_cf, approx,
                              backend, block_size, fixed_directions=directions is not None)
    if num_slices is None and directions is None:
        return analytic_sliced_mmd2(z, kernel, prior, estimator=estimator, approx=approx,
                                    backend=backend, block_size=block_size)
    z = _checks.embeddings(z, min_rows=2 if estimator == "u" else 1)
    dirs = resolve_directions(z, num_slices, directions, generator)
    # the integrand is even in t: the knots t >= 0 carry it all (slicing.gauss_hermite, fold)
    t, w = gauss_hermite(num_knots, projection_gamma(kernel, z), fold=True)
    target = _target_cf(prior, t, z.shape[-1], target_cf)           # float64, on the host
    t, w, target = t.to(z), w.to(z), target.to(z)

    def statistic(x):
        n = distributed.global_rows(x.shape[0])
        cos_mean, sin_mean = ecf(project(x, dirs), t)                   # (K, U)
        ecf_sq = cos_mean.square() + sin_mean.square()
        if estimator == "u":
            ecf_sq = (n * ecf_sq - 1.0) / (n - 1)
        err = ecf_sq - 2.0 * cos_mean * target + target.square()
        return (err @ w).mean()

    return _checks.per_view(z, statistic)


# --------------------------------------------------------------------------------------------
# LeJEPA's Epps–Pulley / SIGReg
# --------------------------------------------------------------------------------------------
def check_epps_pulley_options(num_slices: int = 1024, t_max: float = 3.0, n_points: int = 17,
                              fixed_directions: bool = False) -> None:
    """Raise unless ``num_slices`` >= 1 (without fixed directions), ``t_max > 0`` and ``n_points``
    is an odd int >= 3 (shared with :class:`kerjepa.EppsPulley`)."""
    if not fixed_directions:
        _checks.positive_int(num_slices, "num_slices")
    _checks.positive(t_max, "t_max")
    _checks.positive_int(n_points, "n_points", minimum=3)
    if n_points % 2 == 0:
        raise ValueError(f"n_points must be odd, got {n_points}")


def epps_pulley(z: torch.Tensor, num_slices: int = 1024, t_max: float = 3.0, n_points: int = 17,
                directions: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""LeJEPA's SIGReg: the sliced Epps–Pulley statistic as LeJEPA's library computes it.

    For each slice, the trapezoid rule on :math:`t\in[0, t_{max}]` with ``n_points`` points,
    doubled to cover :math:`t<0`, of
    :math:`N\big[(\overline{\cos tp} - e^{-t^2/2})^2 + \overline{\sin tp}^{\,2}\big]e^{-t^2/2}`,
    averaged over slices (LeJEPA's SIGReg). Up to that quadrature error (about 1e-3 relative for
    the default grid) it equals :math:`N\sqrt{2\pi}` times :func:`sliced_mmd2` with
    :math:`\gamma = 1/2` and a standard Gaussian prior (paper Prop. 1).

    Args:
        z: embeddings (N, D), or (V, N, D) (per view, averaged).
        num_slices: K random directions (ignored when ``directions`` is given).
        t_max: upper end of the grid.
        n_points: odd number of grid points.
        directions: (K, D) fixed directions.
        generator: RNG for random directions.

    Returns:
        Scalar tensor.

    Example:
        >>> import torch
        >>> z = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))
        >>> bool(epps_pulley(z + 1.0, directions=torch.eye(8)) > epps_pulley(z, directions=torch.eye(8)))
        True
    """
    check_epps_pulley_options(num_slices, t_max, n_points, fixed_directions=directions is not None)
    z = _checks.embeddings(z)
    dirs = resolve_directions(z, num_slices, directions, generator)
    t = torch.linspace(0.0, float(t_max), n_points, dtype=z.dtype, device=z.device)
    window = torch.exp(-0.5 * t * t)
    dt = float(t_max) / (n_points - 1)
    weights = torch.full_like(t, 2.0 * dt)
    weights[0] = weights[-1] = dt
    weights = weights * window

    def statistic(x):
        # linear grid t_u = u dt: cos/sin by angle addition (slicing.ecf with step)
        cos_mean, sin_mean = ecf(project(x, dirs), t, step=dt)         # (K, T)
        err = (cos_mean - window).square() + sin_mean.square()
        return (err @ weights).mean() * distributed.global_rows(x.shape[0])

    return _checks.per_view(z, statistic)
