r"""Slicing: random unit directions, the Gauss–Hermite rule, and the one characteristic-function
core that every finitely sliced estimator shares.

A sliced discrepancy projects (N, D) embeddings on K unit directions and averages a 1-D
discrepancy over them (paper Def. 1). Directions are drawn from a ``torch.Generator``; the
``nn.Module`` regularizers seed it with a step counter that is identical on every rank, so all
processes use the same slices and a resumed run continues the same sequence.

Every finitely sliced estimator (:func:`kerjepa.functional.sliced_mmd2`, :func:`kerjepa.functional.epps_pulley`,
:func:`kerjepa.functional.sliced_ksd2`) reduces to the same (K, U) statistics of the projections
:math:`p_{ki} = \theta_k^\top z_i`: empirical characteristic functions, possibly weighted per row,

.. math::
    M_{kuj} = \frac1N\sum_i w_{kij}\,e^{\mathrm i t_u p_{ki}},

computed by :func:`ecf` (with :math:`w = 1` for the MMDs and :math:`w \in \{1, s\}` for the KSD,
:math:`s` the projected score). Each estimator then keeps only its 1-D discrepancy of these (K, U)
numbers. :func:`ecf` never stores an (N, K, U) tensor: it runs over blocks of slices, and its
backward recomputes :math:`\cos, \sin` of one block at a time from the saved projections, so
forward+backward memory is :math:`O(NK)`. Two facts of the grids save work:

* a quadrature whose integrand is even in :math:`t` (every estimator here: :math:`\cos` is even,
  :math:`\sin` odd and the targets real and even) needs only the knots :math:`t \ge 0`
  (:func:`gauss_hermite` with ``fold=True``);
* on a linear grid :math:`t_u = u\Delta` (Epps–Pulley's trapezoid rule) :math:`e^{\mathrm i t_u p}`
  follows from :math:`e^{\mathrm i\Delta p}` by complex multiplication (angle addition), one
  sine/cosine pair per projection instead of one per knot.
"""
from __future__ import annotations

import math
import os
import warnings

import numpy as np
import scipy.special as sps
import torch

from . import _checks, distributed, kernels as _kernels

__all__ = ["random_directions", "gauss_hermite", "resolve_directions", "projection_gamma", "project",
           "ecf", "check_slice_memory", "available_memory", "total_memory", "ECF_BLOCK"]

#: floor on direction norms before normalising; a zero draw gives a zero direction, never NaN
DIRECTION_EPS = 1e-12
#: elements of one block of (slices x 2 knots x rows) cos/sin values in :func:`ecf` (8 MiB in float32)
ECF_BLOCK = 1 << 21
#: (K, N) tensors a sliced estimator holds at once per view, forward and backward (projections,
#: projected scores, their gradients, the row weights): the estimate of :func:`check_slice_memory`
_LIVE_KN = 6


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


def total_memory(device) -> int | None:
    """Bytes of memory of ``device`` (physical memory, or the container's limit, for the CPU), or None
    when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type != "cpu":
        return None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    limit = _cgroup_value("memory.max")
    return total if limit is None else min(total, limit)


def _cgroup_value(name: str) -> int | None:
    """An integer of the process's cgroup v2 memory controller (``memory.max``, ``memory.current``), if any."""
    try:
        with open(f"/sys/fs/cgroup/{name}") as f:
            text = f.read().strip()
        return None if text == "max" else int(text)
    except (OSError, ValueError):
        return None


def available_memory(device) -> int | None:
    """Bytes that new tensors on ``device`` can still take, or None when unknown.

    CUDA: the device's free memory plus what PyTorch's caching allocator holds unused. CPU: the
    kernel's estimate (``MemAvailable`` in ``/proc/meminfo``, else the free pages), and at most what
    the container's memory limit leaves.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type != "cpu":
        return None
    free = None
    try:
        with open("/proc/meminfo") as f:
            free = next((int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")), None)
    except (OSError, ValueError, IndexError):
        pass
    if free is None:
        try:
            free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None
    limit, used = _cgroup_value("memory.max"), _cgroup_value("memory.current")
    return free if limit is None or used is None else min(free, max(limit - used, 0))


def check_slice_memory(num_slices: int, z: torch.Tensor) -> None:
    """Check that K slices of ``z`` (..., N, D) fit in its device's memory.

    The estimate counts the (K, D) directions and a few (K, N) tensors per view (projections,
    scores, gradients); no tensor is read, so the check costs no synchronisation. More than the
    device's memory (:func:`total_memory`) raises a ``ValueError``; more than what is still
    available (:func:`available_memory`) warns (``RuntimeWarning``) and goes on. Only the first
    can be an error: it is the same on every rank of a distributed run, so no rank stops alone
    while the others wait for it in an all-reduce.
    """
    n, dim = z.shape[-2], z.shape[-1]
    need = num_slices * (dim + _LIVE_KN * n) * z.element_size()
    what = (f"num_slices={num_slices} needs about {need / 2 ** 30:.3g} GiB for the (K, D) directions and "
            f"(K, N) projections of z of shape {tuple(z.shape)}")
    total = total_memory(z.device)
    if total is not None and need > total:
        raise ValueError(f"{what}, more than the {total / 2 ** 30:.3g} GiB of memory of device {z.device}; "
                         f"use fewer slices")
    free = available_memory(z.device)
    if free is not None and need > free:
        warnings.warn(f"{what}, more than the {free / 2 ** 30:.3g} GiB still available on device {z.device}: "
                      f"the call may run out of memory", RuntimeWarning, stacklevel=4)


def resolve_directions(z: torch.Tensor, num_slices: int, directions, generator) -> torch.Tensor:
    """The (K, D) unit directions a sliced estimator uses for ``z`` of shape (..., N, D)."""
    if directions is not None:
        return _checks.directions(directions, z.shape[-1], z)
    check_slice_memory(num_slices, z)
    return random_directions(num_slices, z.shape[-1], generator, dtype=z.dtype, device=z.device)


def gauss_hermite(num_knots: int, gamma: float, fold: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Knots and weights for :math:`\int f(t)\,\rho_\gamma(t)\,dt \approx \sum_q w_q f(t_q)`.

    :math:`\rho_\gamma` is the spectral density of the 1-D Gaussian kernel
    :math:`e^{-\gamma u^2}`, i.e. the :math:`\mathcal N(0, 2\gamma)` density (paper eq. 18), so
    :math:`t_q = 2\sqrt\gamma\,x_q` and :math:`w_q = w^{GH}_q/\sqrt\pi` from the physicists'
    Gauss–Hermite rule. The rule is exact for polynomials of degree :math:`< 2U`. Its nodes come
    from SciPy's ``roots_hermite`` (Golub–Welsch up to U = 150, an asymptotic expansion above),
    finite for every U; far-out weights underflow to 0 for large U, harmlessly.

    Args:
        num_knots: U >= 1.
        gamma: bandwidth > 0.
        fold: for integrands even in :math:`t`: return the knots :math:`t_q \ge 0` only (ascending),
            each :math:`t_q > 0` with the weight of :math:`\pm t_q` together.

    Returns:
        ``(t, w)``: float64 tensors of shape (U,), or (⌈U/2⌉,) with ``fold``.

    Example:
        >>> t, w = gauss_hermite(3, 0.5, fold=True)    # N(0, 1): knots 0 and sqrt(3)
        >>> [round(float(v), 6) for v in t], [round(float(v), 6) for v in w]
        ([0.0, 1.732051], [0.666667, 0.333333])
    """
    _checks.positive_int(num_knots, "num_knots")
    return _gauss_hermite(num_knots, _checks.positive(gamma, "gamma"), fold)


def _gauss_hermite(num_knots: int, gamma: float, fold: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`gauss_hermite` for checked options; a NaN ``gamma`` (the median bandwidth of
    non-finite ``z``) gives NaN knots, hence a NaN statistic, as everywhere else."""
    x, w = sps.roots_hermite(num_knots)
    x, w = 2.0 * math.sqrt(gamma) * x, w / math.sqrt(math.pi)
    if fold:
        # the rule is symmetric: x[U - 1 - q] = -x[q], equal weights; the middle knot (odd U) is 0
        half = num_knots // 2
        pos, wpos = -x[:half][::-1], 2.0 * w[:half][::-1]
        if num_knots % 2:
            pos, wpos = np.concatenate([[0.0], pos]), np.concatenate([[w[half]], wpos])
        x, w = pos, wpos
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(w))


def projection_gamma(kernel, z: torch.Tensor) -> float:
    r"""Bandwidth of the 1-D Gaussian kernel that the sliced estimators apply to projections.

    A number is used as given; ``None`` gives :math:`1/2` (the rule :math:`1/(2D)` with D = 1);
    ``"median"`` gives D times the median heuristic of all rows of ``z`` (..., N, D), since a
    uniform unit :math:`\theta` has :math:`\mathbb E(\theta^\top\delta)^2 = \|\delta\|^2/D`.
    """
    if kernel.gamma == "median":
        return z.shape[-1] * _kernels._median_gamma(z.reshape(-1, z.shape[-1]))
    return kernel.resolve(dim=1).gamma


def project(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    r"""Projections :math:`p_{ki} = \theta_k^\top x_i` of rows ``x`` (N, D) on directions ``theta`` (K, D).

    Trusts its inputs (the estimators have checked them).

    Shape:
        Returns (K, N): one row per slice, the layout :func:`ecf` works in.
    """
    return theta @ x.T


# --------------------------------------------------------------------------------------------
# The empirical characteristic function of the projections
# --------------------------------------------------------------------------------------------
def _block_slices(k: int, n: int, u: int) -> int:
    """Slices per block, so that a block's (slices, 2U, N) cos/sin buffer has about ECF_BLOCK elements."""
    return max(1, min(k, ECF_BLOCK // max(1, 2 * u * n)))


def _cos_sin(p: torch.Tensor, t: torch.Tensor, step: float | None, buf: torch.Tensor) -> torch.Tensor:
    r"""``[cos(t_u p); sin(t_u p)]`` for a block of projections ``p`` (B, N), written into
    ``buf[:B]``: shape (B, 2U, N), one contiguous (2U, N) matrix per slice (the operand of the
    batched matrix products that reduce it over the rows).

    With ``step`` (a linear grid :math:`t_u = u\Delta`, :math:`t_0 = 0`) the values follow from
    :math:`e^{\mathrm i\Delta p}` by the recurrence :math:`e^{\mathrm i(u+1)\Delta p}
    = e^{\mathrm iu\Delta p}e^{\mathrm i\Delta p}`; otherwise each is evaluated directly.
    """
    b = p.shape[0]
    u = t.shape[0]
    cs = buf[:b] if b < buf.shape[0] else buf
    cos, sin = cs[:, :u], cs[:, u:]
    if step is None:
        arg = torch.mul(p[:, None], t[:, None], out=sin)                  # (B, U, N), in the sin half
        torch.cos(arg, out=cos)
        sin.sin_()
        return cs
    cos[:, 0].fill_(1.0)
    sin[:, 0].zero_()
    if u > 1:
        arg = p * step
        c1, s1 = torch.cos(arg, out=cos[:, 1]), torch.sin(arg, out=sin[:, 1])
        for j in range(2, u):  # (c + i s)(c1 + i s1)
            torch.mul(cos[:, j - 1], c1, out=cos[:, j]).addcmul_(sin[:, j - 1], s1, value=-1.0)
            torch.mul(sin[:, j - 1], c1, out=sin[:, j]).addcmul_(cos[:, j - 1], s1)
    return cs


def _ecf_reference(p, t, weights):
    """The sums of :class:`_EcfSums` (K, 1 + m, 2U), with autograd on a (K, 2U, N) tensor (double backward)."""
    arg = p[:, None, :] * t[None, :, None]
    cs = torch.cat([torch.cos(arg), torch.sin(arg)], 1)             # (K, 2U, N)
    plain = cs.sum(-1)[:, None, :]
    if weights is None:
        return plain
    return torch.cat([plain, weights.transpose(0, 1) @ cs.transpose(1, 2)], 1)


class _EcfSums(torch.autograd.Function):
    r"""Row sums :math:`\sum_i w_{jki}[\cos(t_u p_{ki}), \sin(t_u p_{ki})]`, shape (K, 1 + m, 2U),
    for :math:`w_0 = 1` and either the m row weights ``weights`` (m, K, N) or, with ``scale`` (N,),
    the one weight :math:`w_{1ki} = c_i p_{ki}` (never materialised).

    Forward and backward run over blocks of slices; only ``p`` (K, N) and the weights (or ``c``) are
    saved. Each block's cos/sin (B, 2U, N) is reduced by one batched matrix product with the block's
    rows :math:`[1; w_1; \dots]`; the backward recomputes it and takes one batched product with
    the (K, 1 + m, 2U) gradient: with :math:`G = [G_c, G_s]`,
    :math:`\partial/\partial w_{jki} = \sum_u G_{c,kju}\cos + G_{s,kju}\sin` and
    :math:`\partial/\partial p_{ki} = \sum_j w_{jki}\sum_u t_u(G_{s,kju}\cos - G_{c,kju}\sin)`
    (plus :math:`c_i\,\partial/\partial w_{1ki}` with ``scale``, whose gradient is
    :math:`\sum_k p_{ki}\,\partial/\partial w_{1ki}`). Everything per block stays in cache.
    """

    @staticmethod
    def forward(ctx, p, t, weights, step, scale):
        ctx.step = step
        ctx.save_for_backward(p, t, weights, scale)
        k, n = p.shape
        u = t.shape[0]
        m = 1 if scale is not None else 0 if weights is None else weights.shape[0]
        wk = None if weights is None else weights.transpose(0, 1)     # (K, m, N)
        out = torch.empty(k, 1 + m, 2 * u, dtype=p.dtype, device=p.device)
        bs = _block_slices(k, n, u)
        buf = torch.empty(bs, 2 * u, n, dtype=p.dtype, device=p.device)
        rows = torch.empty(bs, 1 + m, n, dtype=p.dtype, device=p.device)  # [1; w_1; ...] of a block
        rows[:, 0] = 1.0
        for k0 in range(0, k, bs):
            k1 = min(k0 + bs, k)
            cs = _cos_sin(p[k0:k1], t, step, buf)                         # (B, 2U, N)
            if m == 0:
                torch.sum(cs, -1, out=out[k0:k1, 0])
                continue
            r = rows[:k1 - k0]
            if scale is not None:
                torch.mul(p[k0:k1], scale, out=r[:, 1])
            else:
                r[:, 1:] = wk[k0:k1]
            torch.bmm(r, cs.transpose(1, 2), out=out[k0:k1])
        return out

    @staticmethod
    def backward(ctx, grad):
        p, t, weights, scale = ctx.saved_tensors
        if torch.is_grad_enabled():  # double backward: differentiate the autograd version
            w = (p * scale)[None] if scale is not None else weights
            wrt = [v for v, need in ((p, ctx.needs_input_grad[0]), (weights, ctx.needs_input_grad[2]),
                                     (scale, ctx.needs_input_grad[4])) if need]
            got = iter(torch.autograd.grad(_ecf_reference(p, t, w), wrt, grad, create_graph=True))
            return tuple(next(got) if i in (0, 2, 4) and ctx.needs_input_grad[i] else None for i in range(5))
        k, n = p.shape
        u = t.shape[0]
        m = grad.shape[1] - 1
        # rows [H; G_w]: H = [t G_s, -t G_c] gives d/dp, G of the weighted rows gives d/dw
        need_p = ctx.needs_input_grad[0]
        need_w = (weights is not None and ctx.needs_input_grad[2]) or scale is not None
        rows = torch.cat([grad[..., u:] * t, -grad[..., :u] * t], -1)    # (K, 1 + m, 2U)
        if need_w:
            rows = torch.cat([rows, grad[:, 1:]], 1)                      # (K, 1 + 2m, 2U)
        gp = torch.empty_like(p) if need_p else None
        gw = torch.empty_like(weights) if need_w and scale is None else None
        gc = torch.zeros_like(scale) if scale is not None and ctx.needs_input_grad[4] else None
        wk = None if weights is None else weights.transpose(0, 1)
        bs = _block_slices(k, n, u)
        buf = torch.empty(bs, 2 * u, n, dtype=p.dtype, device=p.device)
        for k0 in range(0, k, bs):
            k1 = min(k0 + bs, k)
            cs = _cos_sin(p[k0:k1], t, ctx.step, buf)                     # (B, 2U, N)
            both = torch.bmm(rows[k0:k1], cs)                             # (B, 1 + m [+ m], N)
            if scale is not None:  # w_1 = c p: d/dp = H_0 + c (p H_1 + G_1), d/dc = sum_k p G_1
                pb = p[k0:k1]
                if gc is not None:
                    gc.add_((pb * both[:, 2]).sum(0))
                if need_p:
                    torch.addcmul(both[:, 2], pb, both[:, 1], out=gp[k0:k1])
                    gp[k0:k1].mul_(scale).add_(both[:, 0])
                continue
            if need_p:
                if m == 0:
                    gp[k0:k1] = both[:, 0]
                else:
                    torch.addcmul(both[:, 0], both[:, 1], wk[k0:k1, 0], out=gp[k0:k1])
                    for j in range(1, m):
                        gp[k0:k1].addcmul_(both[:, 1 + j], wk[k0:k1, j])
            if need_w:
                gw[:, k0:k1] = both[:, 1 + m:].transpose(0, 1)
        return gp, None, gw, None, gc


def ecf(p: torch.Tensor, t: torch.Tensor, weights: torch.Tensor | None = None,
        step: float | None = None, scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Weighted empirical characteristic functions of projections, per slice and knot.

    .. math::
        \mathrm{Re}_{jku} + \mathrm i\,\mathrm{Im}_{jku}
        = \frac1N\sum_i w_{jki}\,e^{\mathrm i t_u p_{ki}}, \qquad w_0 = 1,

    with the mean over the rows of the global batch inside :func:`kerjepa.distributed.local_rows`
    (one all-reduce of the (K, U) sums). Memory :math:`O(NKm)` forward and backward (module
    docstring); differentiable in ``p`` and ``weights``, twice through autograd. Trusts its
    inputs and reads no tensor value on the host.

    Args:
        p: projections (K, N) (:func:`project`).
        t: knots (U,) in the dtype and on the device of ``p``.
        weights: optional stack of m row weights :math:`w_1, \dots, w_m`, shape (m, K, N).
        scale: instead of ``weights``, per-row factors :math:`c` (N,) of the one weight
            :math:`w_{1ki} = c_i p_{ki}` (the projected score of a radial prior,
            :math:`s(x) = c(x)\,x`), which is then never stored: less memory and one pass fewer.
        step: :math:`\Delta` when ``t`` is the linear grid :math:`t_u = u\Delta` (then evaluated by
            the angle-addition recurrence), else ``None``.

    Returns:
        ``(re, im)``: the plain characteristic function (:math:`w_0 = 1`), each (K, U); with
        ``weights``, each (1 + m, K, U) (with ``scale``, m = 1), the plain one first.

    Example:
        >>> p = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
        >>> re, im = ecf(p, torch.tensor([0.0, 2.0], dtype=torch.float64))
        >>> torch.allclose(re, torch.tensor([[1.0, (1 + math.cos(2.0)) / 2]], dtype=torch.float64))
        True
    """
    if weights is not None and scale is not None:
        raise ValueError("ecf takes row weights either as weights=(m, K, N) or as scale=(N,), not both")
    if scale is not None and scale.shape != p.shape[-1:]:
        raise ValueError(f"scale must have shape (N,) = {tuple(p.shape[-1:])} for p of shape {tuple(p.shape)}, "
                         f"got {tuple(scale.shape)}")
    u = t.shape[0]
    sums = _EcfSums.apply(p, t, weights, step, scale)                            # (K, 1 + m, 2U)
    mean = distributed.mean_of_row_sums(sums, p.shape[-1])
    re, im = mean[..., :u], mean[..., u:]
    if weights is None and scale is None:
        return re[:, 0], im[:, 0]
    return re.transpose(0, 1), im.transpose(0, 1)
