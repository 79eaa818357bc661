r"""Radial base kernels :math:`k(x, y) = \varphi(\|x - y\|^2)`.

Both kernels are written as a function :math:`\varphi` of the squared distance
:math:`r^2 = \|x - y\|^2`, with its first two derivatives in :math:`r^2`; the Stein kernels of
:mod:`kerjepa.ksd` need exactly these (paper Table 3).

Bandwidths follow the paper: ``gamma`` multiplies :math:`r^2` in the Gaussian kernel, ``alpha``
in the IMQ kernel (so a *small* value means a *wide* kernel). Each accepts

* a positive float;
* ``None`` (default): the dimension-scaled value :math:`1/(2D)`, with D the dimension the
  kernel acts on (D = 1 for the sliced estimators, which apply the kernel to projections).
  For samples of :math:`\mathcal N(0, I_D)`, :math:`\mathbb E\|x - y\|^2 = 2D`, so the exponent
  stays of order one at every D — a fixed ``gamma`` would make ``exp(-gamma * r2)`` underflow
  at D = 1024;
* ``"median"``: the median heuristic :math:`1/\operatorname{median}_{i<j}\|z_i - z_j\|^2`,
  computed from the (detached) batch at every call.

Call :meth:`Kernel.resolve` to turn the rule into a number for a given batch.
"""
from __future__ import annotations

import copy
import math

import torch

from . import _checks

__all__ = ["Kernel", "Gaussian", "IMQ", "sqdist", "median_heuristic", "get", "check_kernel",
           "power_of_two_scale", "scaled_sqdist"]


def power_of_two_scale(*tensors: torch.Tensor) -> torch.Tensor:
    r"""The power of two :math:`s \ge \max|t|` over the entries of ``tensors`` (1 when all are 0).

    Dividing by ``s`` is exact in floating point, so a sum of products computed from ``t / s``
    and multiplied back by ``s`` (twice for a product) is the same number bit for bit, but
    cannot overflow on the way: a squared distance that exceeds the dtype's range comes out as
    ``inf`` (a kernel value of 0) instead of ``inf - inf = nan``. Computed on the device (no host
    synchronisation); NaN or Inf entries give ``s = 1``, so they propagate as before.
    """
    top = torch.stack([t.detach().abs().amax() for t in tensors]).amax()
    exponent = torch.frexp(top).exponent
    return torch.where(torch.isfinite(top), torch.ldexp(torch.ones_like(top), exponent), torch.ones_like(top))


def scaled_sqdist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r""":math:`\|x_i - y_j\|^2` (N, M), clamped at 0, without intermediate overflow (see
    :func:`power_of_two_scale`): equal to the direct formula to round-off whenever that does not
    overflow, and ``inf`` (never ``nan``) where the distance exceeds the dtype's range."""
    s = power_of_two_scale(x, y)
    xs, ys = x / s, y / s
    norms = (xs * xs).sum(-1)[:, None] + (ys * ys).sum(-1)[None, :]
    return torch.addmm(norms, xs, ys.T, alpha=-2.0).clamp_min_(0.0) * s * s


def sqdist(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    r"""Pairwise squared distances :math:`\|x_i - y_j\|^2` through one matrix product.

    Computed on rows scaled by a power of two (exactly), so that distances beyond the range of
    the dtype come out as ``inf``, never ``nan``.

    Args:
        x: (N, D).
        y: (M, D); defaults to ``x``, in which case the diagonal is exactly zero.

    Returns:
        (N, M), clamped at 0 against round-off.
    """
    same = y is None
    y = x if same else y
    r2 = scaled_sqdist(x, y)
    if same:
        r2 = r2.masked_fill(torch.eye(r2.shape[0], dtype=torch.bool, device=r2.device), 0.0)
    return r2


def median_heuristic(z: torch.Tensor) -> float:
    r"""Inverse median pairwise squared distance, :math:`1/\operatorname{median}_{i<j}\|z_i-z_j\|^2`.

    Args:
        z: (N, D) with N >= 2.
    """
    z = _checks.embeddings(z, min_rows=2, allow_views=False)
    gamma = _median_gamma(z)
    if math.isnan(gamma):
        raise ValueError("median heuristic: z holds NaN or Inf values")
    return gamma


def _median_gamma(z: torch.Tensor) -> float:
    """:func:`median_heuristic` of rows z (N, D), unchecked but for N >= 2. One host synchronisation.

    NaN when ``z`` holds NaN or Inf, so that the statistic is NaN (the library's rule for
    non-finite input); :func:`median_heuristic` itself raises then.
    """
    if z.shape[0] < 2:
        raise ValueError(f"the 'median' bandwidth needs at least 2 rows of z, got {z.shape[0]}")
    z = z.detach()
    r2 = sqdist(z)
    i, j = torch.triu_indices(z.shape[0], z.shape[0], offset=1, device=z.device)
    med = float(r2[i, j].median())
    if math.isnan(med) or math.isinf(med):  # non-finite z: the statistic is NaN, as without the median
        return math.nan
    if med <= 0:
        raise ValueError("median heuristic: the median pairwise distance of z is 0 "
                         "(most rows coincide); pass an explicit bandwidth")
    return 1.0 / med


class Kernel:
    """A radial kernel :math:`\\varphi(r^2)`. Subclasses define ``phi_and_derivatives``."""

    #: name of the bandwidth attribute (``gamma`` or ``alpha``)
    bandwidth_name: str = ""

    def __init__(self, bandwidth):
        if isinstance(bandwidth, str):
            _checks.choice(bandwidth, self.bandwidth_name, {"median"})
        else:
            _checks.positive(bandwidth, self.bandwidth_name, allow_none=True)
            bandwidth = None if bandwidth is None else float(bandwidth)
        setattr(self, self.bandwidth_name, bandwidth)

    # -- bandwidth rules -------------------------------------------------------------------
    @property
    def bandwidth(self):
        return getattr(self, self.bandwidth_name)

    @property
    def is_resolved(self) -> bool:
        return isinstance(self.bandwidth, float)

    def resolve(self, z: torch.Tensor | None = None, dim: int | None = None) -> "Kernel":
        """A copy with a numeric bandwidth for data ``z`` of shape (N, D) (or dimension ``dim``)."""
        bw = self.bandwidth
        if isinstance(bw, float):
            return self
        if bw is None:
            dim = dim if dim is not None else (z.shape[-1] if z is not None else None)
            if dim is None:
                raise ValueError(f"{type(self).__name__}: {self.bandwidth_name}=None needs the data "
                                 "dimension to resolve its default 1/(2D)")
            value = 1.0 / (2.0 * dim)
        else:
            if z is None:
                raise ValueError(f"{type(self).__name__}: {self.bandwidth_name}='median' needs the data")
            value = _median_gamma(z.reshape(-1, z.shape[-1]))
            if math.isnan(value):  # non-finite data: a NaN bandwidth, so a NaN statistic
                resolved = copy.copy(self)
                setattr(resolved, self.bandwidth_name, value)
                return resolved
        return self._with_bandwidth(value)

    def _with_bandwidth(self, value: float) -> "Kernel":
        raise NotImplementedError

    def _require_resolved(self):
        if not self.is_resolved:
            raise ValueError(f"{self!r} has the bandwidth rule {self.bandwidth!r}; "
                             "call .resolve(z) first or pass a number")

    # -- evaluation ------------------------------------------------------------------------
    def phi(self, r2: torch.Tensor) -> torch.Tensor:
        """Kernel value as a function of the squared distance."""
        return self.phi_and_derivatives(r2)[0]

    def phi_and_derivatives(self, r2: torch.Tensor):
        """``(phi, dphi, d2phi)``: the kernel and its first two derivatives in ``r2``."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Gram matrix (N, M) of x (N, D) against y (M, D) (default: x)."""
        k = self if self.is_resolved else self.resolve(x)
        return k.phi(sqdist(x, y))

    def __repr__(self):
        return f"{type(self).__name__}({self._params()})"

    def _params(self) -> str:
        return f"{self.bandwidth_name}={self.bandwidth!r}"


class Gaussian(Kernel):
    r"""Gaussian kernel :math:`k(x, y) = \exp(-\gamma\|x - y\|^2)` (paper eq. 3).

    Its spectral density is the :math:`\mathcal N(0, 2\gamma I_D)` density (paper eq. 18).

    Args:
        gamma: bandwidth > 0, ``None`` for :math:`1/(2D)`, or ``"median"``.

    Example:
        >>> import torch
        >>> k = Gaussian(gamma=0.5)
        >>> k(torch.zeros(1, 3), torch.ones(1, 3))
        tensor([[0.2231]])
    """

    bandwidth_name = "gamma"

    def __init__(self, gamma: float | str | None = None):
        super().__init__(gamma)

    def _with_bandwidth(self, value):
        return Gaussian(value)

    def phi_and_derivatives(self, r2):
        self._require_resolved()
        g = self.gamma
        phi = torch.exp(-g * r2)
        return phi, -g * phi, (g * g) * phi


class IMQ(Kernel):
    r"""Inverse multiquadric kernel :math:`k(x, y) = (1 + \alpha\|x - y\|^2)^{-\beta}` (paper eq. 19).

    Heavy-tailed: it decays like :math:`r^{-2\beta}`. It is a Gamma scale mixture of Gaussian
    kernels, :math:`(1+\alpha r^2)^{-\beta} = \mathbb E_{S\sim\Gamma(\beta, 1)} e^{-\alpha S r^2}`,
    which :func:`kerjepa.functional.mmd2` uses for its exact prior terms.

    Args:
        alpha: inverse squared length scale > 0, ``None`` for :math:`1/(2D)`, or ``"median"``.
        beta: tail exponent > 0 (``0.5`` is the usual choice and the one Theorem 7's limit gives).

    Example:
        >>> import torch
        >>> IMQ(alpha=1.0, beta=0.5)(torch.zeros(1, 1), torch.full((1, 1), 3.0))
        tensor([[0.3162]])
    """

    bandwidth_name = "alpha"

    def __init__(self, alpha: float | str | None = None, beta: float = 0.5):
        super().__init__(alpha)
        self.beta = _checks.positive(beta, "beta")

    def _with_bandwidth(self, value):
        return IMQ(value, self.beta)

    def _params(self):
        return f"alpha={self.alpha!r}, beta={self.beta!r}"

    def phi_and_derivatives(self, r2):
        self._require_resolved()
        a, b = self.alpha, self.beta
        base = 1.0 + a * r2
        phi = base.pow(-b)
        dphi = (-a * b) * phi / base
        d2phi = (a * a * b * (b + 1.0)) * phi / (base * base)
        return phi, dphi, d2phi


_KERNELS = {"gaussian": Gaussian, "imq": IMQ}


def check_kernel(kernel, name: str = "kernel") -> Kernel:
    """Return ``kernel`` if it is a :class:`Kernel`, else raise ``TypeError`` naming ``name``."""
    if not isinstance(kernel, Kernel):
        raise TypeError(f"{name} must be a kerjepa.kernels.Kernel (Gaussian or IMQ), "
                        f"got {type(kernel).__name__}")
    return kernel


def get(name: str, **params) -> Kernel:
    """Build a kernel by name (``"gaussian"`` or ``"imq"``) — the factory's entry point."""
    _checks.choice(name, "kernel", _KERNELS)
    return _KERNELS[name](**params)
