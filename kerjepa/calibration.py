r"""Choosing lambda: transferring LeJEPA's weight to KerJEPA's loss.

LeJEPA weights its loss as :math:`(1-\lambda_L)\,\mathrm{MSE} + \lambda_L\,\mathrm{SIGReg}`, where the
MSE is the mean over views, images and the D coordinates of the squared distance to the view mean
(``alignment_loss(z, "center_mse")``). KerJEPA's eq. 16 uses the all-pairs term
(``alignment_loss(z, "pairs")``), which is :math:`2VD/(V-1)` times that MSE, with weight 1. Both
losses have the same minimisers (and the same training under SGD with a rescaled learning rate)
when :math:`\lambda_K / 1 = \frac{\lambda_L}{1-\lambda_L}\cdot\frac{2VD}{V-1}`, for a regularizer on
LeJEPA's scale of the statistic (``scale="lejepa"``, :math:`N\sqrt{2\pi}\cdot\mathrm{MMD}^2`, which
is what LeJEPA's SIGReg returns). On the library's own scale (``scale="kerjepa"``, :math:`\mathrm{MMD}^2`)
the weight is a further :math:`N\sqrt{2\pi}` larger.
"""
from __future__ import annotations

import math

__all__ = ["lambda_from_lejepa"]


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
