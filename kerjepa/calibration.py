r"""Choosing lambda: transferring LeJEPA's weight to KerJEPA's loss, and from one regularizer to another.

LeJEPA weights its loss as :math:`(1-\lambda_L)\,\mathrm{MSE} + \lambda_L\,\mathrm{SIGReg}`, where the
MSE is the mean over views, images and the D coordinates of the squared distance to the view mean
(``alignment_loss(z, "center_mse")``). KerJEPA's eq. 16 uses the all-pairs term
(``alignment_loss(z, "pairs")``), which is :math:`2VD/(V-1)` times that MSE, with weight 1. Both
losses have the same minimisers (and the same training under SGD with a rescaled learning rate)
when :math:`\lambda_K / 1 = \frac{\lambda_L}{1-\lambda_L}\cdot\frac{2VD}{V-1}`, for a regularizer on
LeJEPA's scale of the statistic (``scale="lejepa"``, :math:`N\sqrt{2\pi}\cdot\mathrm{MMD}^2`, which
is what LeJEPA's SIGReg returns). On the library's own scale (``scale="kerjepa"``, :math:`\mathrm{MMD}^2`)
the weight is a further :math:`N\sqrt{2\pi}` larger.

That transfer holds for LeJEPA's own statistic. For any other regularizer :math:`\Omega` (another
kernel, prior or slicing), :func:`calibrate_lambda` picks :math:`\lambda` so that the gradient
:math:`\lambda\,\partial\Omega/\partial z_i` pushes the embeddings as hard as the reference's
does, on a documented family of batches (:func:`reference_batches`): Gaussian batches at several
spreads and collapsed (rank-deficient) batches at the same spreads. The mean per-row gradient norm
(:func:`row_gradient_norm`) is what the optimizer sees of the regularizer, so matching it puts every
regularizer on the same footing before a sweep; the sweep is still needed (a factor of 4 either
way, ``lambda * {1/4, 1/2, 1, 2, 4}``), since equal gradients do not mean equal optima.
"""
from __future__ import annotations

import copy
import math

import torch

from . import _checks

__all__ = ["lambda_from_lejepa", "reference_batches", "row_gradient_norm", "calibrate_lambda",
           "REFERENCE_SPREADS", "LEJEPA_LAMBDA"]

#: LeJEPA's recommended weight (its MINIMAL recipe), the reference of :func:`calibrate_lambda`.
LEJEPA_LAMBDA = 0.02
#: Per-coordinate standard deviations of the reference batches (:func:`reference_batches`).
REFERENCE_SPREADS = (0.25, 0.5, 1.0, 2.0)


def lambda_from_lejepa(lam_lejepa: float, views: int, dim: int, scale: str = "lejepa",
                       batch_size: int | None = None) -> float:
    r"""KerJEPA's :math:`\lambda` equivalent to LeJEPA's :math:`\lambda_L` (see the module docstring).

    Args:
        lam_lejepa: LeJEPA's weight, in (0, 1).
        views: number of views V >= 2.
        dim: projector output dimension D.
        scale: the regularizer's scale, ``"lejepa"`` (:math:`N\sqrt{2\pi}\,\mathrm{MMD}^2`) or
            ``"kerjepa"`` (:math:`\mathrm{MMD}^2`; needs ``batch_size``).
        batch_size: images per view N, for ``scale="kerjepa"``.

    Example:
        >>> round(lambda_from_lejepa(0.02, views=4, dim=128), 3)     # the MMD rows of Table 1
        6.966
    """
    if isinstance(lam_lejepa, bool) or not isinstance(lam_lejepa, (int, float)) or not 0 < lam_lejepa < 1:
        raise ValueError(f"lam_lejepa must be a number in (0, 1), got {lam_lejepa!r}")
    for name, value, low in (("views", views, 2), ("dim", dim, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if scale not in ("lejepa", "kerjepa"):
        raise ValueError(f"scale must be 'lejepa' or 'kerjepa', got {scale!r}")
    lam = lam_lejepa / (1 - lam_lejepa) * 2 * views * dim / (views - 1)
    if scale == "lejepa":
        return lam
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int with scale='kerjepa', got {batch_size!r}")
    return lam * batch_size * math.sqrt(2 * math.pi)


def reference_batches(dim: int, num: int = 256, spreads=REFERENCE_SPREADS, rank: int | None = None,
                      seed: int = 0, dtype: torch.dtype = torch.float64) -> list:
    r"""The reference family of batches on which :func:`calibrate_lambda` matches gradients.

    For each spread :math:`s` two batches of ``num`` rows, both with per-coordinate standard
    deviation :math:`s`: a full-rank Gaussian one, :math:`s\,G` with :math:`G_{ij}\sim N(0,1)`, and a
    collapsed one of rank ``rank``, :math:`s\,G'R` with :math:`G'\in\mathbb R^{N\times r}` and
    :math:`R\in\mathbb R^{r\times D}` standard Gaussian over :math:`\sqrt r`. Spread 1 is the
    Gaussian prior itself; the others are the shrunk or inflated batches met during training, and
    the collapsed ones are what the regularizer exists to push away from.

    Args:
        dim: D, the embedding dimension.
        num: N, rows per batch (the per-view batch of Table 1 is 256).
        spreads: per-coordinate standard deviations, each > 0.
        rank: r of the collapsed batches, 1 <= r <= D; default ``max(1, D // 16)`` (8 in D = 128).
        seed: seed of the draws (a CPU generator, so the family is the same on every machine).
        dtype: float32 or float64.

    Returns:
        A list of ``2 * len(spreads)`` tensors of shape (N, D): the Gaussian batches in the order of
        ``spreads``, then the collapsed ones.

    Example:
        >>> zs = reference_batches(16, num=8)
        >>> len(zs), tuple(zs[0].shape), int(torch.linalg.matrix_rank(zs[-1]))
        (8, (8, 16), 1)
    """
    dim, num = _checks.positive_int(dim, "dim"), _checks.positive_int(num, "num", minimum=2)
    spreads = tuple(_checks.positive(s, "spreads") for s in spreads)
    if not spreads:
        raise ValueError("spreads must hold at least one standard deviation > 0, got an empty sequence")
    rank = max(1, dim // 16) if rank is None else _checks.positive_int(rank, "rank")
    if rank > dim:
        raise ValueError(f"rank must be <= dim={dim}, got {rank}")
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    gen = torch.Generator().manual_seed(seed)
    full = [s * torch.randn(num, dim, generator=gen, dtype=torch.float64) for s in spreads]
    collapsed = []
    for s in spreads:
        mix = torch.randn(rank, dim, generator=gen, dtype=torch.float64) / math.sqrt(rank)
        collapsed.append(s * torch.randn(num, rank, generator=gen, dtype=torch.float64) @ mix)
    return [z.to(dtype) for z in full + collapsed]


def row_gradient_norm(reg, z: torch.Tensor) -> float:
    r"""Mean over rows of :math:`\|\partial\Omega(Z)/\partial z_i\|_2`: how hard ``reg`` pushes each embedding.

    Args:
        reg: a regularizer (any callable module, e.g. :func:`kerjepa.regularizer`); called once
            on a copy, so its slice ``step`` counter does not move.
        z: one batch of embeddings.

    Shape:
        z: (N, D).

    Returns:
        The mean per-row gradient norm, a float.

    Raises:
        ValueError: ``z`` not a finite (N, D) float tensor, or a non-finite gradient.

    Example:
        >>> import kerjepa
        >>> z = torch.randn(64, 8, generator=torch.Generator().manual_seed(0)) * 0.3
        >>> row_gradient_norm(kerjepa.regularizer("mmd"), z) > 0
        True
    """
    z = _checks.embeddings(z, allow_views=False).detach().clone().requires_grad_(True)
    value = copy.deepcopy(reg)(z)
    (grad,) = torch.autograd.grad(value, z)
    norm = float(grad.norm(dim=-1).mean())
    if not math.isfinite(norm):
        raise ValueError(f"the gradient of {reg!r} is not finite on this batch")
    return norm


def calibrate_lambda(reg, reference=None, lam_reference: float | None = None, batches=None,
                     dim: int | None = None) -> float:
    r""":math:`\lambda` for ``reg`` whose gradient matches :math:`\lambda_{ref}` times the reference's.

    .. math::
        \lambda = \lambda_{ref}\,\exp\Big(\frac1B\sum_{b=1}^{B}
        \log\frac{g_{ref}(Z_b)}{g(Z_b)}\Big),

    where :math:`g` is the mean per-row gradient norm (:func:`row_gradient_norm`) and
    :math:`Z_1, \dots, Z_B` the reference batches: the geometric mean of the per-batch ratios, so
    that no single batch dominates. By construction :math:`\lambda` scales as :math:`1/c` when
    ``reg`` is multiplied by :math:`c`, and the reference calibrates to :math:`\lambda_{ref}`.

    Args:
        reg: the regularizer to weigh.
        reference: the reference regularizer; default LeJEPA's SIGReg as Table 1 runs it,
            ``kerjepa.regularizer("epps_pulley", slices=1024, n_points=21)``.
        lam_reference: the reference's weight; default LeJEPA's 0.02 transferred to the paper's
            loss with :func:`lambda_from_lejepa` (V = 4 views, D of the batches).
        batches: the batches :math:`Z_b`, each (N, D); default :func:`reference_batches` ``(dim)``.
        dim: D, needed only when ``batches`` is not given.

    Returns:
        :math:`\lambda`, a float > 0.

    Raises:
        ValueError: no batches and no ``dim``; batches of different D; a regularizer whose gradient
            vanishes or is not finite on a batch.

    Example:
        >>> import kerjepa
        >>> sigreg = kerjepa.regularizer("epps_pulley", slices=64)
        >>> zs = reference_batches(8, num=32)
        >>> round(calibrate_lambda(sigreg, sigreg, 7.0, zs), 6)            # the reference itself
        7.0
    """
    if batches is None:
        if dim is None:
            raise ValueError("calibrate_lambda needs batches or dim (to build reference_batches(dim))")
        batches = reference_batches(dim)
    batches = [_checks.embeddings(z, f"batches[{b}]", allow_views=False) for b, z in enumerate(batches)]
    if not batches:
        raise ValueError("batches must hold at least one (N, D) tensor, got an empty sequence")
    dims = {z.shape[-1] for z in batches}
    if len(dims) != 1 or (dim is not None and dims != {dim}):
        raise ValueError(f"every batch must have the same D{'' if dim is None else f' = dim = {dim}'}, "
                         f"got D in {sorted(dims)}")
    if reference is None:
        from .modules import regularizer
        reference = regularizer("epps_pulley", slices=1024, n_points=21)
    if lam_reference is None:
        lam_reference = lambda_from_lejepa(LEJEPA_LAMBDA, views=4, dim=dims.pop())
    lam_reference = _checks.positive(lam_reference, "lam_reference")
    log_ratio = 0.0
    for b, z in enumerate(batches):
        g, g_ref = row_gradient_norm(reg, z), row_gradient_norm(reference, z)
        if not (g > 0 and g_ref > 0):
            raise ValueError(f"a gradient vanishes on batches[{b}] (regularizer {g:.3g}, reference {g_ref:.3g}); "
                             f"the ratio is undefined there: drop that batch")
        log_ratio += math.log(g_ref / g)
    return lam_reference * math.exp(log_ratio / len(batches))
