r"""Maximum mean discrepancies (paper §3.1–3.2, App. C, Prop. 1): the mathematics.

The estimators of :math:`\mathrm{MMD}^2_k(\hat P_N, Q)` between the batch and a prior are called
through :mod:`kerjepa.functional` (which checks their input once):

* :func:`kerjepa.functional.mmd2` — unsliced, all pairs in :math:`\mathbb R^D`, with the prior
  terms of :func:`kernel_prior_mean`;
* :func:`kerjepa.functional.sliced_mmd2` — averaged over 1-D projections: finitely many random
  slices with Gauss–Hermite quadrature of the characteristic-function form
  (:func:`sliced_mmd2_slices` here), or (``num_slices=None``) the analytic infinite-slice limit of
  Theorems 7–8;
* :func:`kerjepa.functional.epps_pulley` — LeJEPA's SIGReg statistic exactly as its library
  computes it (:func:`epps_pulley_slices` here), the baseline the paper compares with.

The functions here trust their inputs.
"""
from __future__ import annotations

import math

import torch

from . import _checks, distributed, kernels as _kernels, priors as _priors
from .pairwise import pair_mean
from .slicing import ecf, project

__all__ = ["kernel_prior_mean", "sliced_mmd2_slices", "epps_pulley_grid", "epps_pulley_slices",
           "NUM_MIXTURE_NODES", "TARGET_CFS"]

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


def _mmd2(z, kernel, prior, estimator, prior_samples, generator, backend, block_size):
    """:func:`kerjepa.functional.mmd2` on checked arguments."""
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


def _target_cf(prior, t, dim, target_cf):
    """The 1-D target characteristic function at the knots ``t``: the prior's marginal, or with
    ``target_cf="paper"`` Figure 1's Laplace target (checked options: no Student-t there)."""
    if target_cf == "paper" and isinstance(prior, _priors.Laplace):
        return 1.0 / (1.0 + (prior.sigma * t) ** 2)
    return prior.marginal_cf(t, dim)


def sliced_mmd2_slices(x: torch.Tensor, directions: torch.Tensor, t: torch.Tensor, w: torch.Tensor,
                       target: torch.Tensor, estimator: str) -> torch.Tensor:
    r"""Finitely sliced MMD² of one view ``x`` (N, D): the mean over the (K, D) ``directions`` of
    :math:`\sum_q w_q\,|\hat\varphi_\theta(t_q) - \varphi_Q(t_q)|^2` (the U-statistic of
    :math:`|\hat\varphi|^2` with ``estimator="u"``), for folded knots ``t``, weights ``w`` and the
    target characteristic function ``target`` (U,), all in the dtype and on the device of ``x``."""
    n = distributed.global_rows(x.shape[0])
    cos_mean, sin_mean = ecf(project(x, directions), t)                   # (K, U)
    ecf_sq = cos_mean.square() + sin_mean.square()
    if estimator == "u":
        ecf_sq = (n * ecf_sq - 1.0) / (n - 1)
    err = ecf_sq - 2.0 * cos_mean * target + target.square()
    return (err @ w).mean()


# --------------------------------------------------------------------------------------------
# LeJEPA's Epps–Pulley / SIGReg
# --------------------------------------------------------------------------------------------
def epps_pulley_grid(t_max: float, n_points: int, like: torch.Tensor):
    """LeJEPA's grid: ``(t, dt, window, weights)``: the n_points knots of [0, t_max] (linear, step dt),
    the window :math:`e^{-t^2/2}` and the trapezoid weights times the window, like ``like``."""
    t = torch.linspace(0.0, float(t_max), n_points, dtype=like.dtype, device=like.device)
    window = torch.exp(-0.5 * t * t)
    dt = float(t_max) / (n_points - 1)
    weights = torch.full_like(t, 2.0 * dt)
    weights[0] = weights[-1] = dt
    return t, dt, window, weights * window


def epps_pulley_slices(x: torch.Tensor, directions: torch.Tensor, t: torch.Tensor, dt: float,
                       window: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Epps–Pulley statistic of one view ``x`` (N, D), averaged over the (K, D) ``directions``, on the
    grid of :func:`epps_pulley_grid`, at LeJEPA's scale (times N)."""
    # linear grid t_u = u dt: cos/sin by angle addition (slicing.ecf with step)
    cos_mean, sin_mean = ecf(project(x, directions), t, step=dt)         # (K, T)
    err = (cos_mean - window).square() + sin_mean.square()
    return (err @ weights).mean() * distributed.global_rows(x.shape[0])
