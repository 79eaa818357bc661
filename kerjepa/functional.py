"""Every estimator as a pure function of the batch ``z`` (N, D) or (V, N, D): the public path.

Each function here checks its hyperparameters and the metadata of ``z`` once (no host
synchronisation: values are not read, so NaN or Inf in ``z`` gives a non-finite result) and
then calls the mathematics of :mod:`kerjepa.mmd`, :mod:`kerjepa.ksd` and :mod:`kerjepa.analytic`,
which trusts its inputs. The hyperparameter half of each check is a function of its own,
``check_<estimator>_options``, which the :mod:`kerjepa.modules` regularizers run when they are
built; at each call the modules call these functions:

* :func:`mmd2` — :func:`check_mmd2_options` — :class:`kerjepa.MMD`;
* :func:`sliced_mmd2` — :func:`check_sliced_mmd2_options` — :class:`kerjepa.SlicedMMD`;
* :func:`epps_pulley` — :func:`check_epps_pulley_options` — :class:`kerjepa.EppsPulley`;
* :func:`ksd2` — :func:`check_ksd2_options` — :class:`kerjepa.KSD`;
* :func:`sliced_ksd2` — :func:`check_sliced_ksd2_options` — :class:`kerjepa.SlicedKSD`;
* :func:`stein_kernel` — the Stein-kernel matrix whose mean :func:`ksd2` is.

``num_slices=None`` in the sliced functions is analytic slicing
(:func:`kerjepa.analytic.analytic_sliced_mmd2`, :func:`kerjepa.analytic.analytic_sliced_ksd2`).

Example:
    >>> import torch
    >>> from kerjepa import functional as F, kernels, priors
    >>> z = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    >>> F.ksd2(z, kernels.IMQ(), priors.Gaussian()).shape
    torch.Size([])
"""
from __future__ import annotations

import torch

from . import _checks, kernels as _kernels, priors as _priors
from .analytic import (KSD_APPROX, MMD_APPROX, analytic_sliced_ksd2, analytic_sliced_mmd2,
                       check_analytic_options)
from .kernels import sqdist
from .ksd import ESTIMATORS, _ksd2, _stein_pair, sliced_ksd2_slices
from .mmd import TARGET_CFS, _mmd2, _target_cf, epps_pulley_grid, epps_pulley_slices, sliced_mmd2_slices
from .pairwise import BACKENDS, DEFAULT_BLOCK
from .slicing import _gauss_hermite, projection_gamma, resolve_directions

__all__ = ["mmd2", "sliced_mmd2", "epps_pulley", "ksd2", "sliced_ksd2", "stein_kernel",
           "check_mmd2_options", "check_sliced_mmd2_options", "check_epps_pulley_options",
           "check_ksd2_options", "check_sliced_ksd2_options"]


# --------------------------------------------------------------------------------------------
# Maximum mean discrepancies
# --------------------------------------------------------------------------------------------


def check_mmd2_options(kernel, prior, estimator: str = "u", prior_samples=None, backend: str = "auto",
                       block_size: int = DEFAULT_BLOCK) -> None:
    """Raise unless :func:`mmd2` accepts these options and has a route for this kernel × prior.

    The hyperparameter checks of :func:`mmd2`, shared with :class:`kerjepa.MMD` (which runs
    them when it is built).
    """
    _kernels.check_kernel(kernel)
    _priors.check_prior(prior)
    _checks.choice(estimator, "estimator", ("u", "v"))
    _checks.choice(backend, "backend", BACKENDS)
    _checks.positive_int(block_size, "block_size")
    if prior_samples is not None:
        _checks.positive_int(prior_samples, "prior_samples", minimum=2 if estimator == "u" else 1)
    elif not (isinstance(prior, _priors.Gaussian) and isinstance(kernel, (_kernels.Gaussian, _kernels.IMQ))):
        raise ValueError(
            f"mmd2 has exact prior terms only for a Gaussian prior with a Gaussian or IMQ kernel; "
            f"got kernel {type(kernel).__name__} with prior {type(prior).__name__}. Pass "
            f"prior_samples=M to use the two-sample estimator, or use ksd2 / sliced_mmd2 for this prior")


def mmd2(z: torch.Tensor, kernel: _kernels.Kernel, prior: _priors.Prior, estimator: str = "u",
         prior_samples: int | None = None, generator: torch.Generator | None = None,
         backend: str = "auto", block_size: int = DEFAULT_BLOCK) -> torch.Tensor:
    r"""Unsliced squared MMD between the batch and the prior (paper eqs. 5, 21–24).

    .. math::
        \widehat{\mathrm{MMD}}^2 = \frac{1}{N(N-1)}\sum_{i\ne j}k(z_i,z_j)
        - \frac{2}{N}\sum_i \mathbb E_Y k(z_i, Y) + \mathbb E_{Y,Y'}k(Y,Y')

    (``estimator="u"``; ``"v"`` keeps the ``i = j`` terms and divides by :math:`N^2`).

    Routes, by kernel × prior:

    * Gaussian × Gaussian: the closed form of Prop. 10 (BHEP, eq. 24 with its missing
      :math:`1/N` restored), computed in log space so large D does not underflow.
    * IMQ × Gaussian: exact prior terms through the IMQ's Gamma scale mixture of Gaussians
      (see :func:`.kernel_prior_mean`; derived in the MMD chapter).
    * anything × any prior with ``prior_samples=M``: the two-sample estimator against M fresh
      draws of the prior (U: eq. 21, with the cross term's :math:`1/(NM)`; V: all pairs).
      Other combinations without ``prior_samples`` raise ``ValueError``.

    Args:
        z: embeddings (N, D), or (V, N, D) for V views regularized separately and averaged.
        kernel: :class:`~kerjepa.kernels.Gaussian` or :class:`~kerjepa.kernels.IMQ`; a bandwidth
            of ``None`` resolves to :math:`1/(2D)`.
        prior: a :class:`~kerjepa.priors.Prior`.
        estimator: ``"u"`` (unbiased, may be negative) or ``"v"`` (biased, :math:`\ge 0`).
        prior_samples: M > 0 to use the two-sample estimator with M prior draws.
        generator: RNG for the prior draws.
        backend, block_size: pair-sum backend, see :mod:`kerjepa.pairwise`.

    Returns:
        Scalar tensor in the dtype of ``z`` (float32 for half-precision inputs).

    Values of ``z`` are not checked (that would wait for the device): NaN or Inf in ``z`` gives a
    non-finite result. Finite float32 rows whose squared distances exceed float32's range
    (:math:`\|z\| \gtrsim 10^{19}`) are computed without overflow: such pairs get the kernel
    value 0, as in float64.

    Raises:
        ValueError: bad shapes (V = 0 views included), N < 2 for ``"u"``, unknown names, or a
            kernel × prior combination without an exact route and no ``prior_samples``.
        TypeError: ``z``, ``kernel`` or ``prior`` of the wrong type.

    Derived in :ref:`ch-mmd`.

    Example:
        >>> import torch
        >>> from kerjepa import kernels, priors
        >>> z = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))
        >>> float(mmd2(z, kernels.Gaussian(), priors.Gaussian())) < 1e-2
        True
    """
    check_mmd2_options(kernel, prior, estimator, prior_samples, backend, block_size)
    z = _checks.embeddings(z, min_rows=2 if estimator == "u" else 1)
    return _mmd2(z, kernel, prior, estimator, prior_samples, generator, backend, block_size)


def check_sliced_mmd2_options(kernel, prior, num_slices=1024, num_knots: int = 21, estimator: str = "v",
                              target_cf: str = "marginal", approx=None, backend: str = "auto",
                              block_size: int = DEFAULT_BLOCK, fixed_directions: bool = False) -> None:
    """Raise unless :func:`sliced_mmd2` accepts these options (shared with :class:`kerjepa.SlicedMMD`).

    ``fixed_directions``: whether ``directions=`` is given (then ``num_slices`` is not used).
    """
    _kernels.check_kernel(kernel)
    _priors.check_prior(prior)
    _checks.choice(estimator, "estimator", ("u", "v"))
    _checks.choice(target_cf, "target_cf", TARGET_CFS)
    if not isinstance(kernel, _kernels.Gaussian):
        raise ValueError(f"sliced_mmd2 needs a Gaussian kernel (its spectral density is the quadrature "
                         f"weight); got {type(kernel).__name__}. Use mmd2 for the IMQ kernel")
    if num_slices is None and not fixed_directions:
        if target_cf != "marginal":
            raise ValueError(f"target_cf={target_cf!r} applies to finite slicing only (num_slices=K); "
                             f"analytic slicing (num_slices=None) uses the exact marginal")
        check_analytic_options(kernel, prior, estimator, approx, MMD_APPROX, "sliced_mmd2")
        _checks.choice(backend, "backend", BACKENDS)
        _checks.positive_int(block_size, "block_size")
        return
    if approx is not None:
        raise ValueError(f"approx={approx!r} applies to analytic slicing (num_slices=None) only")
    if not fixed_directions:
        _checks.positive_int(num_slices, "num_slices")
    _checks.positive_int(num_knots, "num_knots")
    if target_cf == "paper" and isinstance(prior, _priors.StudentT):
        raise ValueError("target_cf='paper' (Figure 1's 1-D targets) exists for the Gaussian and "
                         "Laplace priors only; the Student-t prior uses target_cf='marginal'")


def _finite_slicing(z, kernel, num_slices, num_knots, directions, generator, estimator) -> tuple:
    """What both finitely sliced statistics start from: the checked embeddings, the (K, D) unit
    directions, and the U folded Gauss–Hermite knots and weights (float64, on the host) at the
    projection bandwidth. The integrands are even in t, so the knots t >= 0 carry them all."""
    z = _checks.embeddings(z, min_rows=2 if estimator == "u" else 1)
    dirs = resolve_directions(z, num_slices, directions, generator)
    t, w = _gauss_hermite(num_knots, projection_gamma(kernel, z), fold=True)
    return z, dirs, t, w


def sliced_mmd2(z: torch.Tensor, kernel: _kernels.Kernel, prior: _priors.Prior, num_slices: int | None = 1024,
                num_knots: int = 21, directions: torch.Tensor | None = None,
                generator: torch.Generator | None = None, estimator: str = "v",
                target_cf: str = "marginal", approx: str | None = None,
                backend: str = "auto", block_size: int = DEFAULT_BLOCK) -> torch.Tensor:
    r"""Sliced squared MMD with a Gaussian kernel on 1-D projections (paper §3.2, Fig. 1).

    Finite slicing (``num_slices=K``): project on K unit directions :math:`\theta_k` and
    integrate the squared distance of characteristic functions against the kernel's spectral
    density :math:`\mathcal N(0, 2\gamma)` with U Gauss–Hermite knots
    :math:`t_q = 2\sqrt\gamma\,x_q` (paper Fig. 1):

    .. math::
        \frac1K\sum_k\sum_q w_q\Big|\frac1N\sum_i e^{\mathrm i t_q\theta_k^\top z_i}
        - \varphi_{Q_1}(t_q)\Big|^2 .

    Both the cosine and the sine parts are kept; the paper's Figure 1 drops the sine part,
    which penalises only the symmetric part of the distribution. This is the V-statistic; with
    ``estimator="u"`` the :math:`i=j` terms are removed from :math:`|\hat\varphi|^2`.
    :math:`\varphi_{Q_1}` is the exact 1-D marginal CF of the prior (``target_cf="marginal"``);
    ``target_cf="paper"`` uses Figure 1's 1-D Laplace CF :math:`1/(1+\sigma^2t^2)`, which is
    the marginal of a different multivariate prior than the Table-2 Laplace (kept to
    reproduce Table 1's row).

    Analytic slicing (``num_slices=None``): the infinite-slice limit, Theorem 8 — an unsliced
    MMD with the kernel :math:`{}_1F_1(\tfrac12; \tfrac D2; -\gamma\|x-y\|^2)`; see
    :func:`kerjepa.analytic.analytic_sliced_mmd2` (``approx="imq"`` gives eq. 13's variant).

    Args:
        z: embeddings (N, D) or (V, N, D) (views use the same directions).
        kernel: :class:`~kerjepa.kernels.Gaussian`; its ``gamma`` acts on projections
            (``None`` -> 1/2, ``"median"`` -> D × the median heuristic of ``z``).
        prior: any :class:`~kerjepa.priors.Prior` (Gaussian only for analytic slicing).
        num_slices: K >= 1, or ``None`` for analytic slicing.
        num_knots: U Gauss–Hermite knots (21 in the paper).
        directions: (K, D) fixed directions (normalised here); overrides ``num_slices``.
        generator: RNG for random directions.
        estimator: ``"v"`` (default, the paper's) or ``"u"``.
        target_cf: ``"marginal"`` or ``"paper"`` (see above).
        approx: analytic slicing only (``None`` or ``"imq"``).
        backend, block_size: analytic slicing only, see :mod:`kerjepa.pairwise`.

    Returns:
        Scalar tensor.

    Raises:
        ValueError: non-Gaussian kernel, bad sizes or names, options that do not apply.

    Derived in :ref:`ch-mmd`; analytic slicing in :ref:`ch-slicing`.

    Example:
        >>> import torch
        >>> from kerjepa import kernels, priors
        >>> g = torch.Generator().manual_seed(0)
        >>> z = torch.randn(512, 16, generator=g)
        >>> float(sliced_mmd2(z, kernels.Gaussian(), priors.Gaussian(), num_slices=64, generator=g)) < 1e-2
        True
    """
    check_sliced_mmd2_options(kernel, prior, num_slices, num_knots, estimator, target_cf, approx,
                              backend, block_size, fixed_directions=directions is not None)
    if num_slices is None and directions is None:
        return analytic_sliced_mmd2(z, kernel, prior, estimator=estimator, approx=approx,
                                    backend=backend, block_size=block_size)
    z, dirs, t, w = _finite_slicing(z, kernel, num_slices, num_knots, directions, generator, estimator)
    target = _target_cf(prior, t, z.shape[-1], target_cf)           # float64, on the host
    t, w, target = t.to(z), w.to(z), target.to(z)

    def statistic(x):
        return sliced_mmd2_slices(x, dirs, t, w, target, estimator)

    return _checks.per_view(z, statistic)


def check_epps_pulley_options(num_slices: int = 1024, t_max: float = 3.0, n_points: int = 17,
                              fixed_directions: bool = False) -> None:
    """Raise unless ``num_slices`` >= 1 (without fixed directions), ``t_max > 0`` and ``n_points``
    is an odd int >= 3 (shared with :class:`kerjepa.EppsPulley`)."""
    if not fixed_directions:
        _checks.positive_int(num_slices, "num_slices")
    _checks.positive(t_max, "t_max")
    _checks.positive_int(n_points, "n_points", minimum=3)
    if n_points % 2 == 0:
        raise ValueError(f"n_points must be odd, got {n_points}")


def epps_pulley(z: torch.Tensor, num_slices: int = 1024, t_max: float = 3.0, n_points: int = 17,
                directions: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""LeJEPA's SIGReg: the sliced Epps–Pulley statistic as LeJEPA's library computes it.

    For each slice, the trapezoid rule on :math:`t\in[0, t_{max}]` with ``n_points`` points,
    doubled to cover :math:`t<0`, of
    :math:`N\big[(\overline{\cos tp} - e^{-t^2/2})^2 + \overline{\sin tp}^{\,2}\big]e^{-t^2/2}`,
    averaged over slices (LeJEPA's SIGReg). Up to that quadrature error (about 1e-3 relative for
    the default grid) it equals :math:`N\sqrt{2\pi}` times :func:`sliced_mmd2` with
    :math:`\gamma = 1/2` and a standard Gaussian prior (paper Prop. 1).

    Args:
        z: embeddings (N, D), or (V, N, D) (per view, averaged).
        num_slices: K random directions (ignored when ``directions`` is given).
        t_max: upper end of the grid.
        n_points: odd number of grid points.
        directions: (K, D) fixed directions.
        generator: RNG for random directions.

    Returns:
        Scalar tensor.

    Example:
        >>> import torch
        >>> z = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))
        >>> bool(epps_pulley(z + 1.0, directions=torch.eye(8)) > epps_pulley(z, directions=torch.eye(8)))
        True
    """
    check_epps_pulley_options(num_slices, t_max, n_points, fixed_directions=directions is not None)
    z = _checks.embeddings(z)
    dirs = resolve_directions(z, num_slices, directions, generator)
    t, dt, window, weights = epps_pulley_grid(t_max, n_points, z)

    def statistic(x):
        return epps_pulley_slices(x, dirs, t, dt, window, weights)

    return _checks.per_view(z, statistic)

# --------------------------------------------------------------------------------------------
# Kernel Stein discrepancies
# --------------------------------------------------------------------------------------------


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


def check_ksd2_options(kernel, prior, estimator: str = "u", backend: str = "auto",
                       block_size: int = DEFAULT_BLOCK) -> None:
    """Raise unless :func:`ksd2` accepts these options (shared with :class:`kerjepa.KSD`)."""
    _kernels.check_kernel(kernel)
    _priors.check_prior(prior)
    _checks.choice(estimator, "estimator", ESTIMATORS)
    _checks.choice(backend, "backend", BACKENDS)
    _checks.positive_int(block_size, "block_size")


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
    if not isinstance(kernel, _kernels.Gaussian):
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
    z, theta, t, w = _finite_slicing(z, kernel, num_slices, num_knots, directions, generator, estimator)
    t, w = t.to(z), w.to(z)

    def statistic(x):
        return sliced_ksd2_slices(x, theta, t, w, prior, estimator)

    return _checks.per_view(z, statistic)
