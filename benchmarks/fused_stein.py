r"""Prototype: the Stein-kernel pair sum with a hand-written backward (proposed for ``kerjepa.ksd``).

It implements the optional ``sum_and_grads`` protocol of :mod:`kerjepa.pairwise`, so
``pair_mean(SteinPair(kernel, D), z, (prior.score(z),))`` equals :func:`kerjepa.functional.ksd2`
(value and gradient; tested in ``tests/test_chunked.py``) while the dense backend computes

* forward: the three Gram blocks :math:`xx^\top, xs^\top, ss^\top` (N, N), then about twenty
  (N, N) element-wise operations, most in place;
* backward: the derivatives of the sum with respect to the Gram entries in closed form, and one
  product :math:`(2N, 2N) \times (2N, D)` for both gradients.

With :math:`h = \varphi\,s_i^\top s_j + 2\varphi' c_{ij} - 2D\varphi' - 4r^2\varphi''`,
:math:`c_{ij} = (x_i - x_j)^\top(s_j - s_i)` and symmetric weights
:math:`P = \varphi`, :math:`C = 2\varphi'`,
:math:`E = \partial h/\partial r^2 = \varphi' s_i^\top s_j + 2\varphi'' c_{ij} - (2D + 4)\varphi'' - 4r^2\varphi'''`
(diagonal handled as the autograd version does: no gradient through :math:`r^2` or :math:`c`
where a row meets itself),

.. math::
    \nabla_x = -4Ex + 2Cs + 4\,(E\mathbf 1)\odot x - 2\,(C\mathbf 1)\odot s, \qquad
    \nabla_s = 2Cx + 2Ps - 2\,(C\mathbf 1)\odot x .
"""
from __future__ import annotations

import torch

from kerjepa import kernels as _kernels
from kerjepa.ksd import _stein_pair


def _derivatives(kernel, r2):
    """``(phi, u1, u2, u3), (c1, c2, c3)`` with the k-th derivative of phi in r2 equal to ``ck * uk``."""
    if isinstance(kernel, _kernels.Gaussian):
        g = kernel.gamma
        phi = torch.mul(r2, -g).exp_()
        return (phi, phi, phi, phi), (-g, g * g, -g ** 3)
    a, b = kernel.alpha, kernel.beta
    inv = torch.mul(r2, a).add_(1.0).reciprocal_()
    phi = inv.sqrt() if b == 0.5 else inv.pow(b)
    u1 = phi * inv
    u2 = u1 * inv
    u3 = u2 * inv
    return (phi, u1, u2, u3), (-a * b, a * a * b * (b + 1.0), -a ** 3 * b * (b + 1.0) * (b + 2.0))


class SteinPair:
    """Stein-kernel pair function with the ``sum_and_grads`` fast path."""

    def __init__(self, kernel, dim: int):
        self.kernel, self.dim = kernel, dim
        self._plain = _stein_pair(kernel, dim)

    def __call__(self, xa, xb, fa, fb, dot, r2):
        return self._plain(xa, xb, fa, fb, dot, r2)

    def sum_and_grads(self, x, features, exclude_diagonal):
        (s,) = features
        n, dim = x.shape
        nx = (x * x).sum(-1)
        r2 = torch.mm(x * -2.0, x.T).add_(nx[:, None]).add_(nx[None, :]).clamp_min_(0.0)
        r2.fill_diagonal_(0.0)
        # cross2 = 2 (x_i - x_j).(s_j - s_i) - 2D, exactly -2D where a row meets itself
        xs2 = torch.mm(x * 2.0, s.T)
        u = 2.0 * (x * s).sum(-1) + dim
        cross2 = torch.add(xs2, xs2.T).sub_(u[:, None]).sub_(u[None, :]).fill_diagonal_(-2.0 * dim)
        del xs2
        ss = s @ s.T
        (phi, u1, u2, u3), (c1, c2, c3) = _derivatives(self.kernel, r2)
        h = torch.mul(phi, ss).addcmul_(u1, cross2, value=c1).addcmul_(r2, u2, value=-4.0 * c2)
        if exclude_diagonal:
            h.fill_diagonal_(0.0)
        total = h.sum()
        # E / c1 with E = dh/dr2 (in the buffer of h); its diagonal cancels in the gradients below
        e = torch.mul(u1, ss, out=h).addcmul_(u2, cross2, value=c2 / c1)
        e.add_(u2, alpha=-4.0 * c2 / c1).addcmul_(r2, u3, value=-4.0 * c3 / c1)
        del ss, cross2
        m1 = u1 @ torch.cat([x, s], 1)                     # C / (2 c1) against x and s
        me = e @ x
        mp = phi @ s
        rs1, rse = u1.sum(-1)[:, None], e.sum(-1)[:, None]
        # sum_j C_ij (s_j - s_i), sum_j E_ij (x_j - x_i): the j = i terms vanish
        grad_x = (me - rse * x).mul_(-4.0 * c1).add_(m1[:, dim:] - rs1 * s, alpha=4.0 * c1)
        grad_s = (m1[:, :dim] - rs1 * x).mul_(4.0 * c1).add_(mp, alpha=2.0)
        if exclude_diagonal:  # phi(0) = 1 on the diagonal of P
            grad_s.sub_(s, alpha=2.0)
        return total, (grad_x, grad_s)
