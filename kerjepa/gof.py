r"""Goodness-of-fit tests: is a batch of embeddings distinguishable from the prior?

Every regularizer of :mod:`kerjepa` is a test statistic :math:`T(z)` of the hypothesis
:math:`H_0: z_1, \dots, z_N \overset{iid}{\sim} Q`. A test needs, besides :math:`T`, its
distribution under :math:`H_0`; this module supplies it two ways.

* **Wild bootstrap** (:func:`ksd_test`). The Stein kernel :math:`h = k_Q` has
  :math:`\mathbb E_{Y\sim Q}\,h(x, Y) = 0` for every :math:`x` (Stein's identity), so the
  U-statistic :math:`T = \frac1{N(N-1)}\sum_{i\ne j} h(z_i, z_j)` is *degenerate* under
  :math:`H_0`: :math:`N T` converges to :math:`\sum_l \lambda_l(\chi^2_{1,l} - 1)`, with
  :math:`\lambda_l` the eigenvalues of :math:`h` as an integral operator under :math:`Q`. The
  replicates :math:`T^* = \frac1{N(N-1)}\sum_{i\ne j}\varepsilon_i\varepsilon_j h(z_i, z_j)`
  with i.i.d. Rademacher :math:`\varepsilon` have, given the data, the same limit (Liu, Lee &
  Jordan 2016; Chwialkowski, Strathmann & Gretton 2016). All B replicates come from one Stein
  matrix :math:`H`: they are the diagonal of :math:`E H E^\top` for the (B, N) matrix of
  multipliers :math:`E`, computed as ``((E @ H) * E).sum(1)`` (row blocks of :math:`H` for
  large N, so memory stays :math:`O(BN + N\cdot\text{block})`).
* **Parametric bootstrap** (:func:`mmd_test`, and :func:`ksd_test` with
  ``bootstrap="parametric"``). :math:`Q` is known and can be sampled, so the null
  distribution of *any* statistic is simulated exactly: draw B batches of N rows from
  :math:`Q` and recompute :math:`T` on each. The Monte Carlo p-value
  :math:`(1 + \#\{b: T_b \ge T\})/(1 + B)` is then exact at every level :math:`\alpha` with
  :math:`\alpha(B+1)` an integer, for every N (Dufour 2006). This covers the unsliced, finitely
  sliced and analytically sliced MMDs and LeJEPA's Epps–Pulley statistic.

Both functions take the keywords of :func:`kerjepa.regularizer` for the statistic (``kernel``,
``prior``, ``slices``, ``estimator``, bandwidths, prior parameters, ...) plus ``num_bootstrap``,
``level`` and ``generator``, and return a :class:`GofResult`. Finitely sliced statistics draw
their K directions once from ``generator`` and keep them for the observed statistic and every
replicate (the test is then exact conditionally on the directions).

Derived in the book chapter :ref:`ch-gof`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import _checks
from .functional import epps_pulley, ksd2, mmd2, sliced_ksd2, sliced_mmd2, stein_kernel
from .mmd import kernel_prior_mean
from .modules import EppsPulley, MMD, SlicedKSD, SlicedMMD, regularizer
from .kernels import Gaussian as _GaussianKernel
from .pairwise import DEFAULT_BLOCK, DENSE_MAX_ROWS
from .priors import Gaussian as _GaussianPrior
from .priors import Laplace as _LaplacePrior
from .slicing import gauss_hermite, projection_gamma, random_directions

__all__ = ["GofResult", "ksd_test", "mmd_test", "gof_test", "pvalue_from_replicates",
           "critical_value", "BOOTSTRAPS"]

BOOTSTRAPS = ("wild", "parametric")
#: rows x features of prior draws generated at once by the parametric bootstrap
_SAMPLE_CHUNK = 1 << 22
#: elements of the largest intermediate (C, N, N) or (C, N, K, U) of a vectorised statistic
_BATCH_ELEMENTS = 1 << 23
#: the null of LeJEPA's Epps-Pulley statistic
_STANDARD_GAUSSIAN = _GaussianPrior()


@dataclass(frozen=True)
class GofResult:
    r"""Outcome of a goodness-of-fit test.

    * ``statistic``: the observed statistic :math:`T(z)` (the regularizer's value at the
      ``scale="kerjepa"`` scale; Epps–Pulley at LeJEPA's own scale);
    * ``pvalue``: the Monte Carlo p-value :math:`(1 + \#\{b: T_b \ge T\})/(1 + B)`, in
      :math:`[1/(B+1), 1]`;
    * ``critical_value``: reject at ``level`` exactly when ``statistic > critical_value``
      (equivalently ``pvalue <= level``); ``inf`` when ``level * (B + 1) < 1``;
    * ``level``: the significance level :math:`\alpha`;
    * ``num_bootstrap``: B, the number of replicates;
    * ``replicates``: the (B,) bootstrap replicates :math:`T_b`, on the device of ``z``;
    * ``method``: a short description (statistic and bootstrap).
    """

    statistic: float
    pvalue: float
    critical_value: float
    level: float
    num_bootstrap: int
    replicates: torch.Tensor
    method: str

    @property
    def reject(self) -> bool:
        """Whether :math:`H_0` is rejected at ``level`` (``pvalue <= level``)."""
        return self.pvalue <= self.level

    def __repr__(self):
        return (f"GofResult(statistic={self.statistic:.6g}, pvalue={self.pvalue:.4g}, "
                f"critical_value={self.critical_value:.6g}, level={self.level}, "
                f"num_bootstrap={self.num_bootstrap}, method={self.method!r})")


def pvalue_from_replicates(statistic: float, replicates: torch.Tensor) -> float:
    r"""Monte Carlo p-value :math:`(1 + \#\{b: T_b \ge T\})/(1 + B)` (ties count against :math:`H_0`)."""
    b = replicates.numel()
    return (1 + int((replicates >= statistic).sum())) / (1 + b)


def critical_value(replicates: torch.Tensor, level: float) -> float:
    r"""The threshold :math:`c` with ``T > c`` exactly when the Monte Carlo p-value is ``<= level``.

    With :math:`m = \lfloor\alpha(B+1)\rfloor - 1` exceedances allowed, :math:`c` is the
    :math:`(m+1)`-th largest replicate (``inf`` if :math:`m < 0`: no test of that level exists
    with so few replicates).
    """
    b = replicates.numel()
    m = math.floor(level * (b + 1) + 1e-9) - 1
    if m < 0:
        return math.inf
    return float(torch.sort(replicates.detach().flatten()).values[b - 1 - m])


def _result(statistic: float, replicates: torch.Tensor, level: float, method: str) -> GofResult:
    if not math.isfinite(statistic) or not bool(torch.isfinite(replicates).all()):
        raise FloatingPointError(f"{method}: the statistic or a bootstrap replicate is not finite "
                                 f"(statistic={statistic!r}); the embeddings are far outside the "
                                 f"range the kernel and prior can represent in this dtype")
    return GofResult(statistic=statistic, pvalue=pvalue_from_replicates(statistic, replicates),
                     critical_value=critical_value(replicates, level), level=level,
                     num_bootstrap=replicates.numel(), replicates=replicates, method=method)


def _check_common(z, num_bootstrap, level, generator, bootstrap=None):
    if isinstance(z, torch.Tensor) and z.dim() == 3:
        raise ValueError(f"z must have shape (N, D) for a test, got shape {tuple(z.shape)}; the views "
                         f"of one batch are not independent samples, so test each view: "
                         f"[test(zv) for zv in z]")
    z = _checks.embeddings(z, min_rows=2, allow_views=False)
    finite = torch.isfinite(z)    # a test reads its result on the host anyway: one more sync is free
    if not bool(finite.all()):
        raise ValueError(f"z contains {int((~finite).sum())} non-finite value(s) (NaN or Inf) out of "
                         f"{z.numel()}; a test needs finite embeddings")
    _checks.positive_int(num_bootstrap, "num_bootstrap")
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 < level < 1.0:
        raise ValueError(f"level must be a number in (0, 1), got {level!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if bootstrap is not None:
        _checks.choice(bootstrap, "bootstrap", BOOTSTRAPS)
    return z


def _cpu_generator(generator: torch.Generator | None) -> torch.Generator | None:
    """A CPU generator for prior draws (the priors sample on the CPU), seeded from ``generator``."""
    if generator is None or generator.device.type == "cpu":
        return generator
    seed = int(torch.randint(0, 2 ** 62, (), generator=generator, device=generator.device))
    return torch.Generator().manual_seed(seed)


def _directions(num_slices: int, dim: int, generator, like: torch.Tensor) -> torch.Tensor:
    """K random unit directions (K, D) in the dtype of ``like``, unit length in that dtype."""
    dirs = random_directions(num_slices, dim, generator, dtype=like.dtype, device=like.device)
    return dirs / dirs.norm(dim=1, keepdim=True)


def _finite_slicing_kernel(reg) -> None:
    """Finite slicing integrates against the Gaussian kernel's spectral density (as the estimators say)."""
    if getattr(reg, "num_slices", None) is not None and not isinstance(reg, EppsPulley) \
            and not isinstance(reg.kernel, _GaussianKernel):
        raise ValueError(f"finite slicing (slices=K) supports only the Gaussian kernel, got {reg.kernel!r}: "
                         f"the Gauss-Hermite rule integrates against the Gaussian kernel's spectral "
                         f"density. Use slices=None for the IMQ kernel")


def _rademacher(b: int, n: int, generator, like: torch.Tensor) -> torch.Tensor:
    """(B, N) i.i.d. signs, drawn on the generator's device, in the dtype/device of ``like``."""
    device = generator.device if generator is not None else like.device
    e = torch.randint(0, 2, (b, n), generator=generator, device=device, dtype=torch.int8)
    return (e.to(device=like.device, dtype=like.dtype) * 2.0 - 1.0)


def _prior_chunks(prior, b: int, n: int, dim: int, per_chunk: int, generator, like: torch.Tensor):
    """Yield B batches of N rows drawn from ``prior``, stacked by up to ``per_chunk``: (C, N, D)."""
    gen = _cpu_generator(generator)
    per_chunk = max(1, min(per_chunk, _SAMPLE_CHUNK // (n * dim)))
    done = 0
    while done < b:
        c = min(per_chunk, b - done)
        y = prior.sample(c * n, dim, generator=gen, dtype=torch.float64)
        yield y.to(dtype=like.dtype, device=like.device).view(c, n, dim)
        done += c


def _target(prior, t: torch.Tensor, dim: int, target_cf: str) -> torch.Tensor:
    """The 1-D target CF of :func:`kerjepa.functional.sliced_mmd2` (``target_cf`` as there)."""
    if target_cf == "paper" and isinstance(prior, _LaplacePrior):
        return 1.0 / (1.0 + (prior.sigma * t) ** 2)
    return prior.marginal_cf(t, dim)


# --------------------------------------------------------------------------------------------
# Wild bootstrap of the Stein U-/V-statistic
# --------------------------------------------------------------------------------------------
def _quadratic_forms(h_rows, n: int, e: torch.Tensor, exclude_diagonal: bool):
    r"""``(sum_ij H_ij, diag(E H E^T))`` from the row blocks ``(i0, H[i0:i1])`` of H."""
    total = e.new_zeros(())
    forms = e.new_zeros(e.shape[0])
    for i0, block in h_rows:
        i1 = i0 + block.shape[0]
        if exclude_diagonal:
            block = block.clone()
            block[:, i0:i1].fill_diagonal_(0.0)
        total = total + block.sum()
        # rows i0..i1 of E H E^T's diagonal: sum_i e_i (H e)_i over this block of i
        forms += ((e @ block.T) * e[:, i0:i1]).sum(1)
    return total, forms


def _stein_rows(x, kernel, prior, backend, block_size):
    """Row blocks ``(i0, H[i0:i1])`` of the Stein matrix of ``x`` with a resolved ``kernel``."""
    n = x.shape[0]
    dense = backend == "dense" or (backend == "auto" and n <= DENSE_MAX_ROWS)
    if dense:
        yield 0, stein_kernel(x, None, kernel, prior)
        return
    for i0 in range(0, n, block_size):
        i1 = min(n, i0 + block_size)
        block = stein_kernel(x[i0:i1], x, kernel, prior)
        # the diagonal has r2 = 0 exactly in the dense matrix; recompute it here the same way
        block[:, i0:i1].diagonal().copy_(stein_kernel(x[i0:i1], None, kernel, prior).diagonal())
        yield i0, block


def _sliced_stein_rows(x, theta, t, w, prior, slice_chunk: int = 64):
    r"""The Stein matrix of the finitely sliced KSD as one block, :math:`H = FF^\top`.

    With :math:`a_{ikq} = (s_{ik} + \mathrm i t_q)e^{\mathrm i t_q p_{ik}}`, the statistic of
    :func:`kerjepa.functional.sliced_ksd2` is :math:`\frac1{N^2}\sum_{ij}H_{ij}` with
    :math:`H_{ij} = \frac1K\sum_{k,q} w_q\,\mathrm{Re}(a_{ikq}\bar a_{jkq})`, the Gram matrix of
    the real features :math:`\sqrt{w_q/K}\,(\mathrm{Re}\,a, \mathrm{Im}\,a)`.
    """
    n, k = x.shape[0], theta.shape[0]
    score = prior.score(x)
    sw = (w / k).sqrt()
    h = x.new_zeros(n, n)
    for c0 in range(0, k, slice_chunk):
        th = theta[c0:c0 + slice_chunk]
        p, s = x @ th.T, score @ th.T                      # (N, c)
        arg = p[:, :, None] * t                             # (N, c, U)
        cos, sin = torch.cos(arg), torch.sin(arg)
        re = (s[:, :, None] * cos - t * sin) * sw
        im = (s[:, :, None] * sin + t * cos) * sw
        f = torch.cat([re.reshape(n, -1), im.reshape(n, -1)], 1)
        h.addmm_(f, f.T)
    yield 0, h


def ksd_test(z: torch.Tensor, *, kernel: str = "gaussian", prior: str = "gaussian",
             slices: int | str | None = None, estimator: str | None = None,
             gamma: float | str | None = None, alpha: float | str | None = None, beta: float = 0.5,
             sigma: float = 1.0, nu: float | None = None, num_knots: int = 21,
             approx: str | None = None, backend: str = "auto", block_size: int = DEFAULT_BLOCK,
             num_bootstrap: int = 1000, level: float = 0.05,
             generator: torch.Generator | None = None, bootstrap: str | None = None) -> GofResult:
    r"""Kernel Stein discrepancy test of :math:`H_0: z_i \overset{iid}{\sim} Q`.

    The statistic is the KSD² of :func:`kerjepa.regularizer` ``("ksd", ...)`` with the same
    keywords. Its null distribution comes from the wild bootstrap (module docstring):

    .. math::
        T^*_b = \frac{1}{N(N-1)}\sum_{i\ne j}\varepsilon_{bi}\varepsilon_{bj}\,h(z_i, z_j),
        \qquad \varepsilon_{bi} \overset{iid}{\sim} \mathrm{Unif}\{-1, 1\},

    (with :math:`N^2` and the diagonal for ``estimator="v"``), all B replicates from one Stein
    matrix. Finite slicing uses the Stein matrix of the sliced statistic (the Gram matrix of
    its quadrature features). Analytic slicing has no Stein matrix here and uses the
    parametric bootstrap, as does ``bootstrap="parametric"`` for any variant.

    Args:
        z: embeddings (N, D), N >= 2 (test the views of a (V, N, D) batch one at a time).
        kernel: as for :func:`kerjepa.regularizer` with ``kind="ksd"``, as are ``prior``,
            ``slices``, ``estimator`` (``None``: the regularizer's default, U unsliced, V sliced),
            ``gamma``, ``alpha``, ``beta``, ``sigma``, ``nu``, ``num_knots``, ``approx`` and
            ``backend``. ``backend`` also chooses the dense Stein matrix or row blocks of
            ``block_size`` rows for the wild bootstrap.
        block_size: rows per block of the Stein matrix with the chunked backend.
        num_bootstrap: B >= 1 replicates (the p-value's resolution is 1/(B+1)).
        level: :math:`\alpha \in (0, 1)` for the critical value.
        generator: ``torch.Generator`` (CPU or on ``z``'s device) for the multipliers, the slice
            directions and prior draws; ``None`` uses the global RNG.
        bootstrap: ``None`` (wild when available, else parametric), ``"wild"`` or
            ``"parametric"``.

    Shape:
        z: (N, D). ``GofResult.replicates``: (B,).

    Returns:
        :class:`GofResult`.

    Raises:
        TypeError: non-float ``z``, a non-generator ``generator``.
        ValueError: z not (N, D), N < 2, non-finite values, ``level`` outside (0, 1), options
            that do not apply (as :func:`kerjepa.regularizer`), or ``bootstrap="wild"`` with
            analytic slicing.

    Derived in :ref:`ch-gof`.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> z = torch.randn(200, 4, generator=g, dtype=torch.float64)
        >>> ksd_test(z, num_bootstrap=199, generator=g).pvalue > 0.05
        True
        >>> ksd_test(1.5 * z, num_bootstrap=199, generator=g).pvalue
        0.005
    """
    z = _check_common(z, num_bootstrap, level, generator, bootstrap)
    _checks.positive_int(block_size, "block_size")
    reg = regularizer("ksd", kernel=kernel, prior=prior, slices=slices, estimator=estimator,
                      gamma=gamma, alpha=alpha, beta=beta, sigma=sigma, nu=nu, num_knots=num_knots,
                      approx=approx, backend=backend)
    _finite_slicing_kernel(reg)
    analytic = slices == "analytic"
    if bootstrap == "wild" and analytic:
        raise ValueError("bootstrap='wild' needs the Stein matrix, which analytic slicing "
                         "(slices='analytic') does not form; use bootstrap='parametric' or None")
    name = f"KSD test ({reg!r})"
    if bootstrap == "parametric" or analytic:
        return _parametric(z, reg, num_bootstrap, level, generator, name)
    n, dim = z.shape
    u = reg.estimator == "u"
    with torch.no_grad(), torch.autocast(device_type=z.device.type, enabled=False):
        if slices is None:
            rows = _stein_rows(z, reg.kernel.resolve(z), reg.prior, backend, block_size)
        else:
            theta = _directions(slices, dim, generator, z)
            t, w = gauss_hermite(num_knots, projection_gamma(reg.kernel, z))
            rows = _sliced_stein_rows(z, theta, t.to(z), w.to(z), reg.prior)
        e = _rademacher(num_bootstrap, n, generator, z)
        total, forms = _quadratic_forms(rows, n, e, exclude_diagonal=u)
        norm = n * (n - 1) if u else n * n
        return _result(float(total) / norm, forms / norm, level, f"{name}, wild bootstrap")


# --------------------------------------------------------------------------------------------
# Parametric bootstrap
# --------------------------------------------------------------------------------------------
def _fixed_statistic(reg, dim: int, generator, like: torch.Tensor):
    """``T(x)`` for one (N, D) batch, with the random parts of the statistic fixed once."""
    if isinstance(reg, EppsPulley):
        dirs = _directions(reg.num_slices, dim, generator, like)
        return lambda x: epps_pulley(x, directions=dirs, t_max=reg.t_max, n_points=reg.n_points)
    if isinstance(reg, (SlicedMMD, SlicedKSD)):
        dirs = None
        if reg.num_slices is not None:
            dirs = _directions(reg.num_slices, dim, generator, like)
        if isinstance(reg, SlicedMMD):
            return lambda x: sliced_mmd2(x, reg.kernel, reg.prior, reg.num_slices, reg.num_knots,
                                         directions=dirs, estimator=reg.estimator,
                                         target_cf=reg.target_cf, approx=reg.approx, backend=reg.backend)
        return lambda x: sliced_ksd2(x, reg.kernel, reg.prior, reg.num_slices, reg.num_knots,
                                     directions=dirs, estimator=reg.estimator, approx=reg.approx,
                                     backend=reg.backend)
    if isinstance(reg, MMD):
        # the two-sample route draws M fresh prior rows at every evaluation: a random statistic
        # whose null distribution the same procedure on prior batches reproduces exactly
        gen = _cpu_generator(generator)
        return lambda x: mmd2(x, reg.kernel, reg.prior, reg.estimator, prior_samples=reg.prior_samples,
                              generator=gen, backend=reg.backend)
    return lambda x: ksd2(x, reg.kernel, reg.prior, reg.estimator, backend=reg.backend)


def _phi_(kernel, r2: torch.Tensor) -> torch.Tensor:
    """The kernel of the squared distances ``r2``, computed in place (Gaussian or IMQ, resolved)."""
    if isinstance(kernel, _GaussianKernel):
        return r2.mul_(-kernel.gamma).exp_()
    return r2.mul_(kernel.alpha).add_(1.0).pow_(-kernel.beta)


def _batched_statistic(reg, dim: int, generator, like: torch.Tensor):
    """``T`` of a stack of batches (C, N, D) -> (C,), for the statistics that vectorise, else ``None``.

    Vectorised: the unsliced MMD with its exact prior terms, the finitely sliced MMD and the
    Epps-Pulley statistic, each with a bandwidth that does not depend on the data. They compute
    what :func:`kerjepa.functional.mmd2`, :func:`~kerjepa.functional.sliced_mmd2` and
    :func:`~kerjepa.functional.epps_pulley` compute, for C batches at once.
    """
    if isinstance(reg, EppsPulley):
        dirs = _directions(reg.num_slices, dim, generator, like)
        t = torch.linspace(0.0, float(reg.t_max), reg.n_points, dtype=like.dtype, device=like.device)
        window = torch.exp(-0.5 * t * t)
        dt = float(reg.t_max) / (reg.n_points - 1)
        weights = torch.full_like(t, 2.0 * dt)
        weights[0] = weights[-1] = dt
        weights = weights * window

        def epps(y):
            arg = (y @ dirs.T)[..., None] * t                               # (C, N, K, T)
            err = (torch.cos(arg).mean(1) - window).square() + torch.sin(arg).mean(1).square()
            return (err * weights).sum(-1).mean(-1) * y.shape[1]

        return epps, dirs.shape[0] * reg.n_points
    if reg.kernel.bandwidth == "median":
        return None
    if isinstance(reg, SlicedMMD) and reg.num_slices is not None:
        dirs = _directions(reg.num_slices, dim, generator, like)
        t, w = gauss_hermite(reg.num_knots, projection_gamma(reg.kernel, like))
        t, w = t.to(like), w.to(like)
        target = _target(reg.prior, t, dim, reg.target_cf)

        def sliced(y):
            n = y.shape[1]
            arg = (y @ dirs.T)[..., None] * t                               # (C, N, K, U)
            cos_mean, sin_mean = torch.cos(arg).mean(1), torch.sin(arg).mean(1)
            ecf_sq = cos_mean.square() + sin_mean.square()
            if reg.estimator == "u":
                ecf_sq = (n * ecf_sq - 1.0) / (n - 1)
            err = ecf_sq - 2.0 * cos_mean * target + target.square()
            return (err * w).sum(-1).mean(-1)

        return sliced, dirs.shape[0] * reg.num_knots
    if type(reg) is MMD and reg.prior_samples is None:
        k = reg.kernel.resolve(dim=dim)

        def unsliced(y):
            c, n, _ = y.shape
            sq = (y * y).sum(-1)
            r2 = torch.bmm(y, y.transpose(1, 2)).mul_(-2.0).add_(sq[:, :, None]).add_(sq[:, None, :])
            r2.clamp_min_(0.0).diagonal(dim1=1, dim2=2).zero_()
            pairs = _phi_(k, r2).sum((1, 2))
            u = reg.estimator == "u"
            pairs = (pairs - n) / (n * (n - 1)) if u else pairs / (n * n)   # phi(0) = 1
            cross, const = kernel_prior_mean(y.reshape(c * n, dim), k, reg.prior)
            return pairs - 2.0 * cross.view(c, n).mean(1) + const

        return unsliced, None
    return None


def _parametric(z, reg, num_bootstrap, level, generator, name) -> GofResult:
    n, dim = z.shape
    null = _STANDARD_GAUSSIAN if isinstance(reg, EppsPulley) else reg.prior
    with torch.no_grad(), torch.autocast(device_type=z.device.type, enabled=False):
        batched = _batched_statistic(reg, dim, generator, z)
        if batched is None:
            stat = _fixed_statistic(reg, dim, generator, z)
            observed = float(stat(z))
            reps = torch.stack([stat(y) for ys in _prior_chunks(null, num_bootstrap, n, dim, 1 << 30, generator, z)
                                for y in ys.unbind(0)])
        else:
            stat, width = batched
            per = max(1, _BATCH_ELEMENTS // (n * (width or n)))
            observed = float(stat(z[None])[0])
            reps = torch.cat([stat(ys) for ys in _prior_chunks(null, num_bootstrap, n, dim, per, generator, z)])
    return _result(observed, reps, level, f"{name}, parametric bootstrap")


def mmd_test(z: torch.Tensor, *, kind: str = "mmd", kernel: str = "gaussian", prior: str = "gaussian",
             slices: int | str | None = None, estimator: str | None = None,
             gamma: float | str | None = None, alpha: float | str | None = None, beta: float = 0.5,
             sigma: float = 1.0, nu: float | None = None, num_knots: int = 21,
             approx: str | None = None, backend: str = "auto", prior_samples: int | None = None,
             target_cf: str = "marginal", t_max: float = 3.0, n_points: int = 17,
             num_bootstrap: int = 1000, level: float = 0.05,
             generator: torch.Generator | None = None) -> GofResult:
    r"""MMD test (or LeJEPA's Epps–Pulley test) of :math:`H_0: z_i \overset{iid}{\sim} Q`.

    The statistic is the regularizer :func:`kerjepa.regularizer` ``(kind, ...)`` builds with the
    same keywords: the unsliced, finitely sliced or analytically sliced MMD² (``kind="mmd"``), or
    LeJEPA's Epps–Pulley statistic (``kind="epps_pulley"``, standard Gaussian prior, K slices,
    default 1024). Its null distribution is simulated exactly by the parametric bootstrap:

    .. math::
        T_b = T(Y^{(b)}), \quad Y^{(b)}_1, \dots, Y^{(b)}_N \overset{iid}{\sim} Q, \qquad
        p = \frac{1 + \#\{b: T_b \ge T(z)\}}{1 + B},

    which has :math:`P_{H_0}(p \le \alpha) = \alpha` whenever :math:`\alpha(B+1)` is an integer
    (B = 199, 999, ...). The sliced statistics draw their directions once and keep them.

    Args:
        z: embeddings (N, D), N >= 2.
        kind: ``"mmd"`` or ``"epps_pulley"``.
        kernel: as for :func:`kerjepa.regularizer`, as are ``prior``, ``slices``, ``estimator``,
            ``gamma``, ``alpha``, ``beta``, ``sigma``, ``nu``, ``num_knots``, ``approx``,
            ``backend``, ``prior_samples``, ``target_cf``, ``t_max`` and ``n_points``.
        num_bootstrap: B >= 1 prior batches.
        level: :math:`\alpha \in (0, 1)` for the critical value.
        generator: ``torch.Generator`` for the slice directions and the prior draws; ``None``
            uses the global RNG.

    Shape:
        z: (N, D). ``GofResult.replicates``: (B,).

    Returns:
        :class:`GofResult`.

    Raises:
        TypeError: non-float ``z``, a non-generator ``generator``.
        ValueError: z not (N, D), N < 2, non-finite values, ``level`` outside (0, 1), an unknown
            ``kind``, or options that do not apply (as :func:`kerjepa.regularizer`).

    Derived in :ref:`ch-gof`.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> z = torch.randn(100, 3, generator=g, dtype=torch.float64)
        >>> mmd_test(z + 0.5, num_bootstrap=99, generator=g).pvalue
        0.01
    """
    _checks.choice(kind, "kind", ("mmd", "epps_pulley"))
    z = _check_common(z, num_bootstrap, level, generator)
    if kind == "epps_pulley":
        reg = regularizer("epps_pulley", slices=slices, t_max=t_max, n_points=n_points)
    else:
        reg = regularizer("mmd", kernel=kernel, prior=prior, slices=slices, estimator=estimator,
                          gamma=gamma, alpha=alpha, beta=beta, sigma=sigma, nu=nu,
                          num_knots=num_knots, approx=approx, backend=backend,
                          prior_samples=prior_samples, target_cf=target_cf)
    _finite_slicing_kernel(reg)
    name = "Epps-Pulley test" if kind == "epps_pulley" else "MMD test"
    return _parametric(z, reg, num_bootstrap, level, generator, f"{name} ({reg!r})")


def gof_test(kind: str, z: torch.Tensor, **options) -> GofResult:
    """The test of a regularizer kind: :func:`ksd_test` for ``"ksd"``, else :func:`mmd_test`.

    Example:
        >>> import torch
        >>> z = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
        >>> gof_test("epps_pulley", z, slices=16, num_bootstrap=19).num_bootstrap
        19
    """
    _checks.choice(kind, "kind", ("mmd", "ksd", "epps_pulley"))
    if kind == "ksd":
        return ksd_test(z, **options)
    return mmd_test(z, kind=kind, **options)
