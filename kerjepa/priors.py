r"""Isotropic priors :math:`Q` on :math:`\mathbb R^D` (paper Table 2).

Every prior carries what the estimators need of it:

* ``score(z)`` — :math:`\nabla\log q(z)`, used by the kernel Stein discrepancies;
* ``marginal_cf(t, dim)`` — the characteristic function of :math:`\xi^\top Y` for a unit
  :math:`\xi` and :math:`Y\sim Q` in dimension ``dim``: the 1-D target of the sliced estimators;
* ``sample(n, dim)`` — exact draws, for two-sample MMD and for tests;
* ``log_prob(z)`` — the normalised log density.

The :class:`Laplace` prior is the *multivariate* one of Table 2, density
:math:`\propto e^{-\|x\|/\sigma}`: its radius is :math:`\mathrm{Gamma}(D, \sigma)` and its
direction uniform, so its 1-D marginals have CF :math:`(1+\sigma^2t^2)^{-(D+1)/2}`, not the 1-D
Laplace CF :math:`1/(1+\sigma^2t^2)` that the paper's Figure 1 uses (see the book's errata table).
"""
from __future__ import annotations

import math

import numpy as np
import scipy.special as sps
import torch

from . import _checks

__all__ = ["Prior", "Gaussian", "Laplace", "StudentT", "get", "check_prior", "unit_variance_sigma"]


def _uniform(n, dim, generator, dtype):
    u = torch.rand(n, dim, generator=generator, dtype=torch.float64)
    return u.clamp(1e-300, 1 - 1e-16).numpy()


def _gamma_draws(shape_param: float, n: int, generator) -> torch.Tensor:
    """Gamma(shape, 1) draws by inverse CDF of uniforms from `generator` (reproducible), float64 (n,)."""
    u = _uniform(n, 1, generator, torch.float64)[:, 0]
    return torch.from_numpy(sps.gammaincinv(shape_param, u))


def _check_z(z, name="z"):
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
    if z.dim() < 1:
        raise ValueError(f"{name} must have shape (..., D), got a scalar")
    return z


class Prior:
    """Base class. Subclasses set ``name`` and implement the four methods."""

    name = ""

    def __init__(self, sigma: float = 1.0):
        self.sigma = _checks.positive(sigma, "sigma")

    def score(self, z: torch.Tensor) -> torch.Tensor:
        """Score :math:`\\nabla\\log q(z)`, shape (..., D) like ``z``."""
        raise NotImplementedError

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised log density, shape (...)."""
        raise NotImplementedError

    def marginal_cf(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        """Real CF of a 1-D projection :math:`\\xi^\\top Y` of the prior in dimension ``dim``."""
        raise NotImplementedError

    def sample(self, n: int, dim: int, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
        """``n`` exact draws in dimension ``dim``, shape (n, dim). CPU ``generator`` for reproducibility."""
        raise NotImplementedError

    def _sample_args(self, n, dim):
        _checks.positive_int(n, "n")
        _checks.positive_int(dim, "dim")

    def __repr__(self):
        return f"{type(self).__name__}(sigma={self.sigma!r})"


class Gaussian(Prior):
    r""":math:`\mathcal N(0, \sigma^2 I_D)`; score :math:`-x/\sigma^2`, marginal CF :math:`e^{-\sigma^2t^2/2}`.

    Example:
        >>> import torch
        >>> Gaussian(sigma=2.0).score(torch.tensor([[4.0, -2.0]]))
        tensor([[-1.0000,  0.5000]])
    """

    name = "gaussian"

    def score(self, z):
        return -_check_z(z) / self.sigma ** 2

    def log_prob(self, z):
        d = _check_z(z).shape[-1]
        return -0.5 * (z * z).sum(-1) / self.sigma ** 2 - 0.5 * d * math.log(2 * math.pi * self.sigma ** 2)

    def marginal_cf(self, t, dim):
        return torch.exp(-0.5 * (self.sigma * t) ** 2)

    def sample(self, n, dim, generator=None, dtype=torch.float32, device=None):
        self._sample_args(n, dim)
        x = torch.randn(n, dim, generator=generator, dtype=torch.float64) * self.sigma
        return x.to(dtype=dtype, device=device)


class Laplace(Prior):
    r"""Multivariate Laplace of Table 2, density :math:`\propto \exp(-\|x\|/\sigma)`.

    Score :math:`-x/(\sigma\|x\|)` is singular at 0; it is evaluated as
    :math:`-x/(\sigma\sqrt{\|x\|^2 + (\epsilon\sigma)^2})`, which is finite with finite gradients
    everywhere and differs from the exact score only within :math:`\|x\|\lesssim\epsilon\sigma`
    (a set of prior probability about :math:`\epsilon^D`).

    Args:
        sigma: scale > 0.
        eps: smoothing radius in units of ``sigma`` (default ``1e-3``).

    Example:
        >>> import torch
        >>> Laplace(sigma=1.0).score(torch.tensor([[3.0, 4.0]]))
        tensor([[-0.6000, -0.8000]])
    """

    name = "laplace"

    def __init__(self, sigma: float = 1.0, eps: float = 1e-3):
        super().__init__(sigma)
        self.eps = _checks.positive(eps, "eps")

    def score(self, z):
        r2 = (_check_z(z) * z).sum(-1, keepdim=True)
        return -z / (self.sigma * torch.sqrt(r2 + (self.eps * self.sigma) ** 2))

    def log_prob(self, z):
        d = _check_z(z).shape[-1]
        log_norm = (math.lgamma(d / 2) - math.log(2) - 0.5 * d * math.log(math.pi)
                    - d * math.log(self.sigma) - math.lgamma(d))
        return log_norm - z.norm(dim=-1) / self.sigma

    def marginal_cf(self, t, dim):
        return (1.0 + (self.sigma * t) ** 2).pow(-(dim + 1) / 2)

    def sample(self, n, dim, generator=None, dtype=torch.float32, device=None):
        self._sample_args(n, dim)
        g = torch.randn(n, dim, generator=generator, dtype=torch.float64)
        radius = _gamma_draws(float(dim), n, generator) * self.sigma
        x = g / g.norm(dim=1, keepdim=True) * radius[:, None]
        return x.to(dtype=dtype, device=device)

    def __repr__(self):
        return f"Laplace(sigma={self.sigma!r}, eps={self.eps!r})"


#: above this order v = nu / 2 the Student-t CF uses the Debye expansion (SciPy's kve is used below)
STUDENT_T_DEBYE_ORDER = 50.0


def _log_student_t_cf_debye(v: float, x: np.ndarray) -> np.ndarray:
    r""":math:`\log[K_v(x)x^v/(\Gamma(v)2^{v-1})]` for large v, by the uniform expansion of :math:`K_v(vz)`.

    With :math:`z = x/v`, :math:`s = \sqrt{1+z^2}`, :math:`p = 1/s` (DLMF 10.41.4, 10.41.10),
    :math:`K_v(vz) \sim \sqrt{\pi/(2v)}\,e^{-v\eta}(1+z^2)^{-1/4}\sum_k(-1)^ku_k(p)/v^k` with
    :math:`\eta = s + \log(z/(1+s))`. The terms :math:`v\log z`, :math:`v\log v` and
    :math:`\log\Gamma(v)` cancel up to Stirling's remainder, leaving
    :math:`-v\delta - r(v) - \tfrac14\log(1+z^2) + \log\sum_k`, with
    :math:`\delta = s - 1 - \log((1+s)/2) \approx z^2/4` and
    :math:`r(v) = \log\Gamma(v) - (v-\tfrac12)\log v + v - \tfrac12\log 2\pi`. Four terms of
    the series and Stirling's series for :math:`r`: relative error below 1e-10 for
    :math:`v \ge 50` (the tests compare with mpmath).
    """
    z = x / v
    z2 = z * z
    sq = np.sqrt(1.0 + z2)
    s_minus_1 = z2 / (1.0 + sq)
    delta = s_minus_1 - np.log1p(s_minus_1 / 2.0)
    p = 1.0 / sq
    p2 = p * p
    u1 = p * (3.0 - 5.0 * p2) / 24.0
    u2 = p2 * (81.0 - 462.0 * p2 + 385.0 * p2 ** 2) / 1152.0
    u3 = p * p2 * (30375.0 - 369603.0 * p2 + 765765.0 * p2 ** 2 - 425425.0 * p2 ** 3) / 414720.0
    u4 = p2 ** 2 * (4465125.0 - 94121676.0 * p2 + 349922430.0 * p2 ** 2 - 446185740.0 * p2 ** 3
                    + 185910725.0 * p2 ** 4) / 39813120.0
    iv = 1.0 / v
    series = 1.0 + iv * (-u1 + iv * (u2 + iv * (-u3 + iv * u4)))
    iv2 = iv * iv
    stirling = iv * (1.0 / 12.0 - iv2 * (1.0 / 360.0 - iv2 * (1.0 / 1260.0 - iv2 / 1680.0)))  # r(v)
    return -v * delta - stirling - 0.25 * np.log1p(z2) + np.log(series)


class StudentT(Prior):
    r"""Multivariate Student-t :math:`t_\nu(0, \sigma^2 I_D)`.

    Score :math:`-(\nu + D)x/(\nu\sigma^2 + \|x\|^2)`. Its 1-D marginals are
    :math:`t_\nu(0,\sigma^2)`, with CF
    :math:`K_{\nu/2}(\sqrt\nu\sigma|t|)(\sqrt\nu\sigma|t|)^{\nu/2}/(\Gamma(\nu/2)2^{\nu/2-1})`
    (evaluated in float64 with SciPy; the sliced estimators call it once per set of knots).

    Args:
        nu: degrees of freedom > 0.
        sigma: scale > 0.

    Example:
        >>> import torch
        >>> StudentT(nu=3.0).score(torch.tensor([[1.0, 0.0]]))
        tensor([[-1.2500, -0.0000]])
    """

    name = "student_t"

    def __init__(self, nu: float, sigma: float = 1.0):
        super().__init__(sigma)
        self.nu = _checks.positive(nu, "nu")

    def score(self, z):
        d = _check_z(z).shape[-1]
        r2 = (z * z).sum(-1, keepdim=True)
        return -(self.nu + d) * z / (self.nu * self.sigma ** 2 + r2)

    def log_prob(self, z):
        d = _check_z(z).shape[-1]
        nu, s2 = self.nu, self.sigma ** 2
        log_norm = (math.lgamma((nu + d) / 2) - math.lgamma(nu / 2)
                    - 0.5 * d * math.log(nu * math.pi * s2))
        return log_norm - 0.5 * (nu + d) * torch.log1p((z * z).sum(-1) / (nu * s2))

    def marginal_cf(self, t, dim):
        r"""The :math:`t_\nu(0, \sigma^2)` CF, float64 on the host, returned like ``t``.

        With :math:`v = \nu/2` and :math:`x = \sqrt\nu\sigma|t|`,
        :math:`\log\varphi = \log K_v(x) + v\log x - \log\Gamma(v) - (v - 1)\log 2`. For
        :math:`v \le` ``STUDENT_T_DEBYE_ORDER`` the Bessel function is SciPy's ``kve``; above it,
        where :math:`K_v` overflows, the uniform (Debye) expansion of :math:`K_v(vz)`
        (DLMF 10.41.4) with its :math:`e^{v\log z}` and :math:`\Gamma(v)` parts cancelled in
        closed form, so every :math:`\nu` gives a finite CF that tends to the Gaussian
        :math:`e^{-\sigma^2t^2/2}` as :math:`\nu\to\infty`.
        """
        v = self.nu / 2
        x = np.abs(math.sqrt(self.nu) * self.sigma * t.detach().cpu().double().numpy())
        if v <= STUDENT_T_DEBYE_ORDER:
            with np.errstate(divide="ignore", invalid="ignore"):
                log_cf = (np.log(sps.kve(v, x)) - x + v * np.log(x)
                          - math.lgamma(v) - (v - 1) * math.log(2))
        else:
            log_cf = _log_student_t_cf_debye(v, x)
        cf = np.where(x > 0, np.exp(log_cf), 1.0)
        return torch.from_numpy(cf).to(dtype=t.dtype, device=t.device)

    def sample(self, n, dim, generator=None, dtype=torch.float32, device=None):
        self._sample_args(n, dim)
        g = torch.randn(n, dim, generator=generator, dtype=torch.float64)
        chi2 = 2.0 * _gamma_draws(self.nu / 2, n, generator)
        x = self.sigma * g / torch.sqrt(chi2 / self.nu)[:, None]
        return x.to(dtype=dtype, device=device)

    def __repr__(self):
        return f"StudentT(nu={self.nu!r}, sigma={self.sigma!r})"


_PRIORS = {"gaussian": Gaussian, "laplace": Laplace, "student_t": StudentT}


def check_prior(prior, name: str = "prior") -> Prior:
    """Return ``prior`` if it is a :class:`Prior`, else raise ``TypeError`` naming ``name``."""
    if not isinstance(prior, Prior):
        raise TypeError(f"{name} must be a kerjepa.priors.Prior (Gaussian, Laplace or StudentT), "
                        f"got {type(prior).__name__}")
    return prior


def get(name: str, **params) -> Prior:
    """Build a prior by name (``"gaussian"``, ``"laplace"``, ``"student_t"``)."""
    _checks.choice(name, "prior", _PRIORS)
    return _PRIORS[name](**params)


def unit_variance_sigma(name: str, dim: int, nu: float | None = None) -> float:
    r"""The scale :math:`\sigma` at which prior ``name`` in dimension ``dim`` has covariance :math:`I_D`.

    The scale convention of the presets: every prior is compared at unit per-coordinate
    variance, so that one kernel bandwidth suits all of them (a radius of about :math:`\sqrt D`).

    * Gaussian :math:`N(0, \sigma^2 I)`: :math:`\sigma = 1`.
    * Laplace (Table 2), radius :math:`\mathrm{Gamma}(D, \sigma)`: :math:`E\|Y\|^2 = D(D+1)\sigma^2`,
      so :math:`\sigma = 1/\sqrt{D+1}`.
    * Student-t :math:`t_\nu(0, \sigma^2 I)`: covariance :math:`\nu\sigma^2/(\nu-2)\,I`, so
      :math:`\sigma = \sqrt{(\nu-2)/\nu}`; defined for :math:`\nu > 2` only.

    Example:
        >>> round(unit_variance_sigma("laplace", 3), 6)
        0.5
    """
    _checks.choice(name, "prior", _PRIORS)
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    if name == "gaussian":
        return 1.0
    if name == "laplace":
        return 1.0 / math.sqrt(dim + 1)
    if nu is None or isinstance(nu, bool) or not isinstance(nu, (int, float)) or not nu > 2:
        raise ValueError(f"nu must be a number > 2 for a Student-t prior of finite variance, got {nu!r}")
    return math.sqrt((nu - 2) / nu)
