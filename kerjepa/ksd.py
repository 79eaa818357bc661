r"""Kernel Stein discrepancies: unsliced, and sliced with a finite number of directions.

A kernel Stein discrepancy compares a batch of embeddings with a prior :math:`Q` through the
prior's *score* :math:`s(x) = \nabla\log q(x)` only: no prior samples and no normalising constant
(paper §3.3, eqs. 9–10). With the Langevin Stein operator, a base kernel :math:`k` becomes the
Stein kernel

.. math::

    k_Q(x, y) = s(x)^\top s(y)\,k(x, y) + s(x)^\top\nabla_y k(x, y)
                + \nabla_x k(x, y)^\top s(y) + \operatorname{tr}\nabla_x\nabla_y^\top k(x, y),

whose mean over pairs of the batch is :math:`\mathrm{KSD}^2`. For a radial kernel
:math:`k = \varphi(r^2)`, :math:`r^2 = \|x - y\|^2`, this is (paper eqs. 9-10 with Table 3)

.. math::

    k_Q(x, y) = \varphi\,s(x)^\top s(y) + 2\varphi'\,(x - y)^\top\big(s(y) - s(x)\big)
                - 2D\varphi' - 4r^2\varphi'',

with :math:`\varphi, \varphi', \varphi''` evaluated at :math:`r^2`. Every term is a Gram matrix
(of scores, of embeddings, or of embeddings against scores), so a batch costs
:math:`O(N^2 D)` time and :math:`O(N^2 + ND)` memory, never an (N, N, D) tensor.

The IMQ trace term here is the corrected one,
:math:`\operatorname{tr}\nabla_x\nabla_y^\top k = 2\alpha\beta D(1+\alpha r^2)^{-\beta-1}
- 4\alpha^2\beta(\beta+1)r^2(1+\alpha r^2)^{-\beta-2}`; the paper's Table 3 prints only the
second term, with the opposite sign (see the book's errata table).

The estimators are called through :mod:`kerjepa.functional`, which checks their input once:
:func:`kerjepa.functional.stein_kernel` (the (N, M) Stein-kernel matrix),
:func:`kerjepa.functional.ksd2` (its U- or V-statistic over a batch, paper eq. 25, with the dense or
chunked pair engine of :mod:`kerjepa.pairwise` and the hand-written backward of :class:`SteinPair`)
and :func:`kerjepa.functional.sliced_ksd2` (the sliced KSD of paper eq. 14: K random directions
and the spectral form by Gauss–Hermite quadrature, :func:`sliced_ksd2_slices` here, paper Fig. 1
corrected; or, with ``num_slices=None``, the analytic limit of infinitely many slices,
:func:`kerjepa.analytic.analytic_sliced_ksd2`). The functions here trust their inputs.

Derived in the book chapter :ref:`ch-ksd`.
"""
from __future__ import annotations

import torch

from . import _checks, distributed, priors as _priors
from .kernels import Gaussian as _GaussianKernel
from .pairwise import pair_mean
from .slicing import ecf, project

__all__ = ["SteinPair", "sliced_ksd2_slices", "ESTIMATORS"]

ESTIMATORS = ("u", "v")


def _stein_pair(kernel, dim: int):
    """Pair function ``(xa, xb, (sa,), (sb,), dot, r2) -> (Na, Nb)`` of the Stein kernel.

    ``kernel`` must be resolved; ``dim`` is D, the dimension of the rows.
    """

    def pair_fn(xa, xb, fa, fb, dot, r2):
        sa, sb = fa[0], fb[0]
        phi, dphi, d2phi = kernel.phi_and_derivatives(r2)
        # (x_i - x_j)^T (s_j - s_i) = x_i.s_j - x_i.s_i - x_j.s_j + s_i.x_j, all Gram products
        cross = (xa @ sb.T - (xa * sa).sum(-1)[:, None]
                 - (xb * sb).sum(-1)[None, :] + sa @ xb.T)
        # where a row meets itself (r2 == 0) the difference vanishes; make it exactly 0
        cross = torch.where(r2 == 0, torch.zeros_like(cross), cross)
        return (phi * (sa @ sb.T) + 2.0 * dphi * cross
                - (2.0 * dim) * dphi - 4.0 * r2 * d2phi)

    return pair_fn


def _derivatives(kernel, r2):
    """``(phi, u1, u2, u3), (c1, c2, c3)`` with the k-th derivative of phi in r2 equal to ``ck * uk``."""
    if isinstance(kernel, _GaussianKernel):
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
    r"""The Stein-kernel pair function, with a hand-written gradient of its full sum.

    Called as a pair function it is the autograd version (used by the chunked backend, row
    shards and second derivatives). Its ``sum_and_grads`` (the protocol of
    :mod:`kerjepa.pairwise`) gives the dense backend the sum over all pairs and its gradients in
    closed form: the Gram blocks :math:`xx^\top, xs^\top, ss^\top`, about twenty (N, N)
    element-wise passes, and one product :math:`(N, N)\times(N, 2D)` for the backward, where
    autograd would store a dozen (N, N) intermediates.

    With :math:`h = \varphi\,s_i^\top s_j + 2\varphi' c_{ij} - 2D\varphi' - 4r^2\varphi''`,
    :math:`c_{ij} = (x_i - x_j)^\top(s_j - s_i)`, :math:`P = \varphi`, :math:`C = 2\varphi'` and
    :math:`E = \partial h/\partial r^2 = \varphi' s_i^\top s_j + 2\varphi'' c_{ij} - (2D + 4)\varphi''
    - 4r^2\varphi'''`,

    .. math::
        \nabla_x = -4Ex + 2Cs + 4\,(E\mathbf 1)\odot x - 2\,(C\mathbf 1)\odot s, \qquad
        \nabla_s = 2Cx + 2Ps - 2\,(C\mathbf 1)\odot x

    (where a row meets itself there is no gradient through :math:`r^2` or :math:`c`, as in the
    autograd version). Derived in :ref:`ch-scale`.
    """

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
        # E / c1 with E = dh/dr2 (in the buffer of h); its diagonal cancels in the gradients below, so it is 0
        e = torch.mul(u1, ss, out=h).addcmul_(u2, cross2, value=c2 / c1)
        e.add_(u2, alpha=-4.0 * c2 / c1).addcmul_(r2, u3, value=-4.0 * c3 / c1)
        e.fill_diagonal_(0.0)  # exact (the j = i terms cancel) and keeps e_ii x_i (|s|^2 |x|) from overflowing
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


def _ksd2(z, kernel, prior, estimator, backend, block_size):
    """:func:`kerjepa.functional.ksd2` on checked arguments."""
    def statistic(x):
        k = kernel.resolve(x)
        return pair_mean(SteinPair(k, x.shape[-1]), x, (prior.score(x),), estimator=estimator,
                         backend=backend, block_size=block_size)

    return _checks.per_view(z, statistic)


#: priors whose score is a radial function times x (Table 2's isotropic priors)
_RADIAL_SCORE = (_priors.Gaussian, _priors.Laplace, _priors.StudentT)


def sliced_ksd2_slices(x: torch.Tensor, theta: torch.Tensor, t: torch.Tensor, w: torch.Tensor, prior,
                       estimator: str) -> torch.Tensor:
    """Finitely sliced KSD² of one view ``x`` (N, D): the spectral estimator averaged over the
    (K, D) directions ``theta``, for knots ``t`` and weights ``w`` (U,) of a folded rule (the
    integrand is even in t), in the dtype and on the device of ``x``."""
    n = distributed.global_rows(x.shape[0])
    p = project(x, theta)                          # (K, N) projections
    score = prior.score(x)
    # E_i[(s_i + i t) e^{i t p_i}] = E[s cos - t sin] + i E[s sin + t cos], shape (K, U),
    # from the plain and the score-weighted characteristic functions of the projections
    if type(prior) in _RADIAL_SCORE:
        # s(x) = c(x) x: the projected score is c_i p_ki, weighted inside ecf without a (K, N) copy
        sq = (x * x).sum(-1)
        c = (score * x).sum(-1) / torch.where(sq > 0, sq, torch.ones_like(sq))
        (re0, re1), (im0, im1) = ecf(p, t, scale=c)             # (2, K, U) each
        s2 = torch.einsum("kn,kn->n", p, p) / p.shape[0] * (c * c) if estimator == "u" else None  # mean_k s_ki^2
    else:
        s = project(score, theta)                  # (K, N) projected multivariate score
        (re0, re1), (im0, im1) = ecf(p, t, s[None])
        s2 = (s * s).mean(0) if estimator == "u" else None
    re = re1 - t * im0
    im = im1 + t * re0
    v = ((re * re + im * im) @ w).mean()
    if estimator == "v":
        return v
    # i == j terms: |(s_i + i t) e^{i t p_i}|^2 = s_i^2 + t^2, weighted, per slice
    diag = distributed.row_mean(s2) * w.sum() + (w * t * t).sum()
    return (n * v - diag) / (n - 1)
