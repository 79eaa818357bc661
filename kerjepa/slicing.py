r"""Slicing: random unit directions and the Gauss–Hermite rule of the sliced estimators.

A sliced discrepancy projects (N, D) embeddings on K unit directions and averages a 1-D
discrepancy over them (paper Def. 1). Directions are drawn from a ``torch.Generator``; the
``nn.Module`` regularizers seed it with a step counter that is identical on every rank, so all
processes use the same slices and a resumed run continues the same sequence.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from . import _checks, kernels as _kernels

__all__ = ["random_directions", "gauss_hermite", "resolve_directions", "projection_gamma"]

#: floor on direction norms before normalising; a zero draw gives a zero direction, never NaN
DIRECTION_EPS = 1e-12


def random_directions(num_slices: int, dim: int, generator: torch.Generator | None = None,
                      dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """K directions uniform on the unit sphere :math:`S^{D-1}`, shape (K, D).

    Gaussian vectors are drawn in float32 on the generator's device (so a seed gives the same
    directions whatever ``dtype`` is asked for), normalised, then moved to ``dtype``/``device``.
    """
    _checks.positive_int(num_slices, "num_slices")
    _checks.positive_int(dim, "dim")
    gen_device = generator.device if generator is not None else device
    g = torch.randn(num_slices, dim, generator=generator, device=gen_device, dtype=torch.float32)
    g = g / g.norm(dim=1, keepdim=True).clamp_min(DIRECTION_EPS)
    return g.to(dtype=dtype, device=device)


def resolve_directions(z: torch.Tensor, num_slices: int, directions, generator) -> torch.Tensor:
    """The (K, D) unit directions a sliced estimator uses for ``z`` of shape (..., N, D)."""
    if directions is not None:
        return _checks.directions(directions, z.shape[-1], z)
    return random_directions(num_slices, z.shape[-1], generator, dtype=z.dtype, device=z.device)


def gauss_hermite(num_knots: int, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Knots and weights for :math:`\int f(t)\,\rho_\gamma(t)\,dt \approx \sum_q w_q f(t_q)`.

    :math:`\rho_\gamma` is the spectral density of the 1-D Gaussian kernel
    :math:`e^{-\gamma u^2}`, i.e. the :math:`\mathcal N(0, 2\gamma)` density (paper eq. 18), so
    :math:`t_q = 2\sqrt\gamma\,x_q` and :math:`w_q = w^{GH}_q/\sqrt\pi` from the physicists'
    Gauss–Hermite rule. The rule is exact for polynomials of degree
    :math:`< 2U` and uses both signs of :math:`t` (no symmetry assumption).

    Returns:
        ``(t, w)``: float64 tensors of shape (U,).
    """
    _checks.positive_int(num_knots, "num_knots")
    gamma = _checks.positive(gamma, "gamma")
    x, w = np.polynomial.hermite.hermgauss(num_knots)
    t = torch.from_numpy(2.0 * math.sqrt(gamma) * x)
    return t, torch.from_numpy(w / math.sqrt(math.pi))


def projection_gamma(kernel, z: torch.Tensor) -> float:
    r"""Bandwidth of the 1-D Gaussian kernel that the sliced estimators apply to projections.

    A number is used as given; ``None`` gives :math:`1/2` (the rule :math:`1/(2D)` with D = 1);
    ``"median"`` gives D times the median heuristic of all rows of ``z`` (..., N, D), since a
    uniform unit :math:`\theta` has :math:`\mathbb E(\theta^\top\delta)^2 = \|\delta\|^2/D`.
    """
    if kernel.gamma == "median":
        return z.shape[-1] * _kernels.median_heuristic(z.reshape(-1, z.shape[-1]))
    return kernel.resolve(dim=1).gamma
