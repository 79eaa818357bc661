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

Functions:

* :func:`stein_kernel` — the (N, M) Stein-kernel matrix;
* :func:`ksd2` — its U- or V-statistic over a batch (paper eq. 25), with the dense or chunked
  pair engine of :mod:`kerjepa.pairwise`;
* :func:`sliced_ksd2` — the sliced KSD (paper eq. 14) with K random directions and the spectral
  form evaluated by Gauss–Hermite quadrature (paper Fig. 1, corrected), or, with
  ``num_slices=None``, the analytic limit of infinitely many slices
  (:func:`kerjepa.analytic.analytic_sliced_ksd2`).

Derived in the book chapter :ref:`ch-ksd`.
"""
from __future__ import annotations

import torch

from . import _checks, distributed, kernels as _kernels, priors as _priors
from .analytic import KSD_APPROX, analytic_sliced_ksd2, check_analytic_options
from .kernels import Gaussian as _GaussianKernel
from .kernels import sqdist
from .pairwise import BACKENDS, DEFAULT_BLOCK, pair_mean
from .slicing import ecf, gauss_hermite, project, projection_gamma, resolve_directions

__all__ = ["stein_kernel", "ksd2", "sliced_ksd2", "SteinPair", "check_ksd2_options", "check_sliced_ksd2_options"]

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


def stein_kernel(x: torch.Tensor, y: torch.Tensor | None, kernel, prior) -> torch.Tensor:
    r"""Langevin Stein kernel matrix :math:`k_Q(x_i, y_j)` (paper eqs. 10 and 26).

    .. math::

        k_Q(x, y) = \varphi\,s(x)^\top s(y) + 2\varphi'\,(x - y)^\top\big(s(y) - s(x)\big)
                    - 2D\varphi' - 4r^2\varphi'',

    the expansion of :math:`s(x)^\top s(y)k + s(x)^\top\nabla_y k + \nabla_x k^\top s(y)
    + \operatorname{tr}\nabla_x\nabla_y^\top k` for :math:`k = \varphi(\|x-y\|^2)`, with
    :math:`s` the prior's score (paper Table 2) and the kernel derivatives of Table 3 (IMQ trace
    corrected). Computed from Gram matrices only: memory :math:`O(NM + (N+M)D)`.

    Args:
        x: (N, D) rows.
        y: (M, D) rows, or ``None`` for ``x`` (then the diagonal uses :math:`r^2 = 0` exactly).
        kernel: a :class:`kerjepa.kernels.Gaussian` or :class:`kerjepa.kernels.IMQ`. A bandwidth
            rule (``None`` or ``"median"``) is resolved on the rows of ``x`` and ``y`` together,
            with D their dimension.
        prior: a :class:`kerjepa.priors.Prior` (Gaussian, Laplace or StudentT).

    Shape:
        Returns (N, M), in the dtype of ``x``.

    Raises:
        TypeError: ``kernel``/``prior`` of the wrong type, or non-float inputs.
        ValueError: wrong rank, mismatched D, or x and y on different devices (values are not
            checked: NaN or Inf gives non-finite entries).

    Derived in :ref:`ch-ksd`.

    Example:
        >>> import torch
        >>> from kerjepa import kernels, priors
        >>> x = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
        >>> stein_kernel(x, None, kernels.Gaussian(gamma=0.5), priors.Gaussian())
        tensor([[ 1.0000, -0.6065],
                [-0.6065,  2.0000]], dtype=torch.float64)
    """
    _kernels.check_kernel(kernel)
    _priors.check_prior(prior)
    x = _checks.embeddings(x, name="x", allow_views=False)
    same = y is None
    if not same:
        y = _checks.embeddings(y, name="y", allow_views=False)
        _checks.same_device(x, y, "y", "x")
        if y.shape[1] != x.shape[1]:
            raise ValueError(f"x and y must have the same number of features D, got x of shape "
                             f"{tuple(x.shape)} and y of shape {tuple(y.shape)}")
        if y.dtype != x.dtype:
            raise TypeError(f"x and y must have the same dtype, got {x.dtype} and {y.dtype}")
    yy = x if same else y
    k = kernel.resolve(x if same else torch.cat([x, yy]))
    sx = prior.score(x)
    sy = sx if same else prior.score(yy)
    r2 = sqdist(x) if same else sqdist(x, yy)
    return _stein_pair(k, x.shape[1])(x, yy, (sx,), (sy,), x @ yy.T, r2)


def ksd2(z: torch.Tensor, kernel, prior, estimator: str = "u", backend: str = "auto",
         block_size: int = DEFAULT_BLOCK) -> torch.Tensor:
    r"""Squared kernel Stein discrepancy between a batch and a prior (paper eqs. 9, 25).

    .. math::

        \widehat{\mathrm{KSD}}^2_U = \frac{1}{N(N-1)}\sum_{i\ne j} k_Q(z_i, z_j),
        \qquad
        \widehat{\mathrm{KSD}}^2_V = \frac{1}{N^2}\sum_{i,j} k_Q(z_i, z_j),

    with :math:`k_Q` the Stein kernel of :func:`stein_kernel`. The U-statistic is unbiased and
    has mean 0 when the rows are drawn from the prior; the V-statistic adds the diagonal
    :math:`\varphi(0)\|s(z_i)\|^2 - 2D\varphi'(0) > 0` and is always :math:`\ge 0`.
    Gradients flow to ``z`` through the kernel and through the score.

    Args:
        z: embeddings (N, D), or (V, N, D): each view is compared with the prior separately and
            the V values are averaged.
        kernel: :class:`kerjepa.kernels.Gaussian` (any ``gamma``) or
            :class:`kerjepa.kernels.IMQ` (any ``alpha`` > 0, ``beta`` > 0). ``None`` bandwidth
            means :math:`1/(2D)`; ``"median"`` the median heuristic of each view.
        prior: :class:`kerjepa.priors.Gaussian`, :class:`~kerjepa.priors.Laplace` or
            :class:`~kerjepa.priors.StudentT`.
        estimator: ``"u"`` (default, off-diagonal pairs) or ``"v"`` (all pairs).
        backend: ``"auto"``, ``"dense"`` or ``"chunked"`` (see :mod:`kerjepa.pairwise`).
        block_size: block edge of the chunked backend.

    Shape:
        z: (N, D) or (V, N, D). Returns a scalar tensor in the dtype of ``z`` (float32 for
        bfloat16/float16 inputs).

    Values of ``z`` are not checked (that would wait for the device): NaN or Inf in ``z`` gives a
    non-finite result. In float32 the squared norms of ``z`` and of its scores must stay inside
    float32's range (about :math:`\|z\| < 10^{18}` for unit-scale priors); beyond it the products
    of scores overflow and the result is non-finite too (use float64 there).

    Raises:
        TypeError: ``kernel``/``prior`` of the wrong type, or a non-float ``z``.
        ValueError: wrong rank, N < 2 with ``estimator="u"``, V = 0 views, or an unknown
            ``estimator``/``backend``.

    Derived in :ref:`ch-ksd`.

    Example:
        >>> import torch
        >>> from kerjepa import kernels, priors
        >>> z = torch.tensor([[0.5, -1.0], [1.5, 0.3], [-0.2, 0.8]], dtype=torch.float64)
        >>> round(float(ksd2(z, kernels.IMQ(alpha=0.5), priors.Gaussian())), 6)
        -0.450476
        >>> round(float(ksd2(z, kernels.IMQ(alpha=0.5), priors.Gaussian(), estimator="v")), 6)
        0.507461
    """
    check_ksd2_options(kernel, prior, estimator, backend, block_size)
    z = _checks.embeddings(z, min_rows=2 if estimator == "u" else 1)
    return _ksd2(z, kernel, prior, estimator, backend, block_size)


def check_ksd2_options(kernel, prior, estimator: str = "u", backend: str = "auto",
                       block_size: int = DEFAULT_BLOCK) -> None:
    """Raise unless :func:`ksd2` accepts these options (shared with :class:`kerjepa.KSD`)."""
    _kernels.check_kernel(kernel)
    _priors.check_prior(prior)
    _checks.choice(estimator, "estimator", ESTIMATORS)
    _checks.choice(backend, "backend", BACKENDS)
    _checks.positive_int(block_size, "block_size")


def _ksd2(z, kernel, prior, estimator, backend, block_size):
    """:func:`ksd2` on checked arguments."""
    def statistic(x):
        k = kernel.resolve(x)
        return pair_mean(SteinPair(k, x.shape[-1]), x, (prior.score(x),), estimator=estimator,
                         backend=backend, block_size=block_size)

    return _checks.per_view(z, statistic)


#: priors whose score is a radial function times x (Table 2's isotropic priors)
_RADIAL_SCORE = (_priors.Gaussian, _priors.Laplace, _priors.StudentT)


def _sliced_ksd2_finite(x, theta, t, w, prior, estimator):
    """Finite-slice spectral estimator for one view ``x`` (N, D), directions ``theta`` (K, D),
    knots ``t`` and weights ``w`` (U,) of a folded rule (the integrand is even in t)."""
    n = distributed.global_rows(x.shape[0])
    p = project(x, theta)                          # (K, N) projections
    score = prior.score(x)
    if type(prior) in _RADIAL_SCORE:
        # s(x) = phi(|x|^2) x: the projected score is phi(|x_i|^2) p_ki, no second projection
        sq = (x * x).sum(-1)
        s = p * ((score * x).sum(-1) / torch.where(sq > 0, sq, torch.ones_like(sq)))
    else:
        s = project(score, theta)                  # (K, N) projected multivariate score
    # E_i[(s_i + i t) e^{i t p_i}] = E[s cos - t sin] + i E[s sin + t cos], shape (K, U),
    # from the plain and the score-weighted characteristic functions of the projections
    (re0, re1), (im0, im1) = ecf(p, t, s[None])                # (2, K, U) each
    re = re1 - t * im0
    im = im1 + t * re0
    v = ((re * re + im * im) @ w).mean()
    if estimator == "v":
        return v
    # i == j terms: |(s_i + i t) e^{i t p_i}|^2 = s_i^2 + t^2, weighted, per slice
    diag = distributed.row_mean((s * s).T).mean() * w.sum() + (w * t * t).sum()
    return (n * v - diag) / (n - 1)


def check_sliced_ksd2_options(kernel, prior, num_slices=1024, num_knots: int = 21, estimator: str = "v",
                              approx=None, backend: str = "auto", block_size: int = DEFAULT_BLOCK,
                              fixed_directions: bool = False) -> None:
    """Raise unless :func:`sliced_ksd2` accepts these options (shared with :class:`kerjepa.SlicedKSD`).

    ``fixed_directions``: whether ``directions=`` is given (then ``num_slices`` is not used).
    """
    _kernels.check_kernel(kernel)
    _priors.check_prior(prior)
    _checks.choice(estimator, "estimator", ESTIMATORS)
    if num_slices is None and not fixed_directions:
        check_analytic_options(kernel, prior, estimator, approx, KSD_APPROX, "sliced_ksd2")
        _checks.choice(backend, "backend", BACKENDS)
        _checks.positive_int(block_size, "block_size")
        return
    if not fixed_directions:
        _checks.positive_int(num_slices, "num_slices")
    _checks.positive_int(num_knots, "num_knots")
    if approx is not None:
        raise ValueError(f"approx={approx!r} applies only to analytic slicing (num_slices=None "
                         f"and directions=None)")
    if not isinstance(kernel, _GaussianKernel):
        raise ValueError(f"finite slicing (num_slices=int or directions=...) supports only the "
                         f"Gaussian kernel, got {kernel!r}: the Gauss-Hermite rule integrates "
                         f"against the Gaussian kernel's spectral density. Supported: "
                         f"sliced_ksd2 with kernels.Gaussian and any prior (Gaussian, Laplace, "
                         f"StudentT); ksd2 (unsliced) with any kernel; num_slices=None for "
                         f"analytic slicing")


def sliced_ksd2(z: torch.Tensor, kernel, prior, num_slices: int | None = 1024, num_knots: int = 21,
                directions: torch.Tensor | None = None, generator: torch.Generator | None = None,
                estimator: str = "v", approx=None, backend: str = "auto",
                block_size: int = DEFAULT_BLOCK) -> torch.Tensor:
    r"""Sliced squared KSD (paper eq. 14): a 1-D KSD along each of K directions, averaged.

    Along a unit direction :math:`\theta`, the projections :math:`p_i = \theta^\top z_i` are
    compared with the projected multivariate score :math:`s_i = \theta^\top s(z_i)` (Gong et al.
    2021) through the spectral form of the 1-D KSD with the Gaussian kernel
    :math:`e^{-\gamma u^2}` (paper Prop. 4):

    .. math::

        \mathrm{KSD}^2_\theta = \int\Big|\frac1N\sum_i (s_i + \mathrm i t)e^{\mathrm i t p_i}\Big|^2
        \rho_\gamma(t)\,dt
        \approx \sum_{q=1}^{U} w_q\Big[\Big(\overline{s\cos(t_qp) - t_q\sin(t_qp)}\Big)^2
        + \Big(\overline{s\sin(t_qp) + t_q\cos(t_qp)}\Big)^2\Big],

    with the bar the mean over the N rows, :math:`\rho_\gamma = \mathcal N(0, 2\gamma)` and
    Gauss–Hermite knots :math:`t_q = 2\sqrt\gamma x_q` (:func:`kerjepa.slicing.gauss_hermite`).
    This is the computation the paper's Figure 1 intends (its printed shapes cannot
    broadcast); real and imaginary parts are both kept. The exact integral is the V-statistic of
    the 1-D Stein kernel of the projections. ``estimator="u"`` removes the :math:`i = j` terms,
    :math:`\sum_q w_q(s_i^2 + t_q^2)` each, and rescales by :math:`N/(N-1)`: the U-statistic of the
    same 1-D Stein kernel, to quadrature accuracy. The result is averaged over the K slices.

    With ``num_slices=None`` the average over directions is taken exactly (the limit
    :math:`K \to \infty`, paper Thm 9): the call is delegated to
    :func:`kerjepa.analytic.analytic_sliced_ksd2`, which documents the kernels and priors it
    supports and its ``approx`` options.

    Args:
        z: embeddings (N, D) or (V, N, D); views are compared with the prior separately (with the
            same directions) and averaged.
        kernel: finite slicing supports only :class:`kerjepa.kernels.Gaussian`, whose spectral
            density is the weight the Gauss–Hermite rule integrates against. Its ``gamma`` acts on
            the 1-D projections: ``None`` means :math:`1/2` (the paper's Figure 1), ``"median"``
            means :math:`D/\operatorname{median}_{i<j}\|z_i - z_j\|^2` (the median heuristic of
            the projections, whose squared distances are :math:`\|z_i-z_j\|^2/D` on average),
            computed once over all views.
        prior: :class:`kerjepa.priors.Gaussian`, :class:`~kerjepa.priors.Laplace` or
            :class:`~kerjepa.priors.StudentT`.
        num_slices: K, the number of random directions drawn when ``directions`` is None; ``None``
            for analytic slicing.
        num_knots: U, the number of Gauss–Hermite knots (21 in the paper).
        directions: fixed (K, D) directions (normalised to unit length); override
            ``num_slices`` (also ``num_slices=None``).
        generator: ``torch.Generator`` the random directions are drawn from.
        estimator: ``"v"`` (default, the paper's estimator) or ``"u"``.
        approx: analytic slicing only (``num_slices=None``, no ``directions``); see
            :func:`kerjepa.analytic.analytic_sliced_ksd2`.
        backend: pair engine of analytic slicing (``"auto"``, ``"dense"``, ``"chunked"``); finite
            slicing has no pair sum and needs :math:`O(NK)` memory (:func:`kerjepa.slicing.ecf`).
        block_size: block edge of the chunked backend (analytic slicing).

    Shape:
        z: (N, D) or (V, N, D); directions: (K, D). Returns a scalar tensor.

    Raises:
        TypeError: ``kernel``/``prior`` of the wrong type, non-float ``z`` or ``directions``.
        ValueError: finite slicing with a kernel other than Gaussian, ``approx`` with finite
            slicing, wrong shapes, N < 2 with ``estimator="u"`` (values are not checked: NaN or
            Inf in ``z`` or ``directions`` gives a non-finite result).

    Derived in :ref:`ch-ksd` (finite slicing and Theorem 9); analytic slicing in
    :ref:`ch-slicing`.

    Example:
        >>> import torch
        >>> from kerjepa import kernels, priors
        >>> z = torch.tensor([[0.5, -1.0], [1.5, 0.3], [-0.2, 0.8]], dtype=torch.float64)
        >>> theta = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
        >>> value = sliced_ksd2(z, kernels.Gaussian(), priors.Gaussian(), directions=theta)
        >>> round(float(value), 6)
        0.262376
    """
    check_sliced_ksd2_options(kernel, prior, num_slices, num_knots, estimator, approx, backend,
                              block_size, fixed_directions=directions is not None)
    if num_slices is None and directions is None:
        return analytic_sliced_ksd2(z, kernel, prior, estimator=estimator, approx=approx,
                                    backend=backend, block_size=block_size)
    z = _checks.embeddings(z, min_rows=2 if estimator == "u" else 1)
    theta = resolve_directions(z, num_slices, directions, generator)
    t, w = gauss_hermite(num_knots, projection_gamma(kernel, z), fold=True)
    t, w = t.to(dtype=z.dtype, device=z.device), w.to(dtype=z.dtype, device=z.device)

    def statistic(x):
        return _sliced_ksd2_finite(x, theta, t, w, prior, estimator)

    return _checks.per_view(z, statistic)
