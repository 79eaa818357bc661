"""The invariance (alignment) term of the JEPA loss, paper eq. 16."""
import torch

__all__ = ["alignment_loss"]

ALIGNMENTS = ("pairs", "center_mse")


def alignment_loss(z: torch.Tensor, kind: str = "pairs") -> torch.Tensor:
    r"""Invariance term on projections z of shape (V, N, D).

    ``"pairs"`` (paper eq. 16): :math:`\frac{1}{N|\mathcal P|}\sum_n\sum_{i<j}\|z_i - z_j\|^2` with
    :math:`|\mathcal P| = V(V-1)/2`, computed with :math:`\sum_{i<j}\|z_i - z_j\|^2 = V\sum_i\|z_i - \bar z\|^2`.
    ``"center_mse"`` (LeJEPA's minimal example): the mean over views, images and coordinates of
    :math:`(\bar z - z_i)^2`, i.e. ``"pairs"`` divided by :math:`2VD/(V - 1)`.

    Example:
        >>> z = torch.tensor([[[0.0, 0.0]], [[1.0, 0.0]], [[0.0, 1.0]]])   # V=3 views of N=1 image, D=2
        >>> round(float(alignment_loss(z)), 6)                             # (1 + 1 + 2) / 3 pairs
        1.333333
    """
    if kind not in ALIGNMENTS:
        raise ValueError(f"kind must be one of {ALIGNMENTS}, got {kind!r}")
    if not isinstance(z, torch.Tensor) or z.dim() != 3 or z.shape[0] < 2:
        got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise ValueError(f"z must be a tensor of shape (V, N, D) with V >= 2 views, got {got}")
    centered = z - z.mean(0, keepdim=True)
    if kind == "center_mse":
        return centered.square().mean()
    return 2.0 / (z.shape[0] - 1) * centered.square().sum((0, 2)).mean()
