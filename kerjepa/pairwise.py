r"""Sums over pairs :math:`\sum_{i,j} h(x_i, x_j)` — the engine of every unsliced estimator.

Every unsliced and analytically sliced statistic is a double sum of a *pair function*
``pair_fn(xa, xb, fa, fb, dot, r2) -> (Na, Nb)`` over rows of the batch, where

* ``xa`` (Na, D), ``xb`` (Nb, D) are blocks of rows of ``x``;
* ``fa``, ``fb`` are tuples with the same blocks of each per-row feature (scores, norms, ...);
* ``dot = xa @ xb.T`` and ``r2`` the squared distances, exactly 0 where a row meets itself.

The pair function must be finite (with finite gradients) at ``r2 == 0`` even when it is excluded,
because autograd multiplies by the mask rather than skipping the entry.

A pair function of ``r2`` alone may set the attribute ``overflow_safe = True``: for float32 rows
it then gets ``dot=None`` and ``r2`` computed from rows scaled by a power of two
(:func:`kerjepa.kernels.scaled_sqdist`): the same numbers to round-off, but squared distances
beyond the float32 range come out as ``inf``, not ``inf - inf = nan``. The MMDs ask for it (their
kernel is 0 at ``r2 = inf``).

Backends:

* ``"dense"``: one block, plain autograd; memory O(N²). Twice differentiable.
* ``"chunked"``: square blocks of ``block_size`` rows, computed one at a time. When a gradient is
  needed, each block's gradient is taken while it is computed and accumulated into (N, D)
  buffers, so autograd never stores an N×N intermediate; extra memory O(N·D + block²). The
  result is once differentiable.
* ``"auto"``: ``"dense"`` when the pairs evaluated number at most :data:`DENSE_MAX_ROWS` squared
  (in one process: :math:`N \le` :data:`DENSE_MAX_ROWS`), else ``"chunked"``.

Analytic gradients (optional protocol): a pair function object may also define
``sum_and_grads(x, features, exclude_diagonal) -> (total, grads)``, the full symmetric sum
over all rows and its gradients with respect to ``x`` and to each feature (``grads`` a tuple of
the same shapes, ``None`` for a feature without one), computed by hand. The dense backend then
uses it whenever a gradient is needed over all rows (one process): it can share one Gram
matrix among all the products and run the backward as a single matrix product, where
autograd takes two products per forward product and stores every (N, N) intermediate. A
second derivative (``create_graph=True``) falls back to autograd, so the dense backend stays
twice differentiable. Pair functions without the method are unaffected.

Row ranges and distributed sums: :func:`pair_sum` can evaluate only the rows
``[r0, r1)`` against all columns (``rows=(r0, r1)``). Inside :func:`row_shard` every pair sum
does so for this process's share of the rows and adds the other processes' partial sums
through a reduction callable; :mod:`kerjepa.distributed` uses this to split an unsliced
estimator of the global batch over ranks.
"""
from __future__ import annotations

import contextlib
import contextvars

import torch

from . import _checks
from .kernels import scaled_sqdist

__all__ = ["pair_sum", "pair_mean", "row_shard", "BACKENDS", "DENSE_MAX_ROWS", "DEFAULT_BLOCK"]

BACKENDS = ("auto", "dense", "chunked")
#: ``backend="auto"`` stays dense up to this many rows (a 4096² float32 matrix is 64 MiB)
DENSE_MAX_ROWS = 4096
#: default block edge of the chunked backend
DEFAULT_BLOCK = 1024


def _block(pair_fn, x, feats, i0, i1, j0, j1, exclude_diagonal, xa=None, fa=None, xb=None, fb=None):
    """Sum of the pair function over rows [i0, i1) x [j0, j1)."""
    xa = x[i0:i1] if xa is None else xa
    xb = x[j0:j1] if xb is None else xb
    fa = tuple(f[i0:i1] for f in feats) if fa is None else fa
    fb = tuple(f[j0:j1] for f in feats) if fb is None else fb
    if getattr(pair_fn, "overflow_safe", False) and x.dtype == torch.float32:
        dot, r2 = None, scaled_sqdist(xa, xb)  # no inf - inf where |x|^2 exceeds the float32 range
    else:
        dot = xa @ xb.T
        r2 = ((xa * xa).sum(-1)[:, None] + (xb * xb).sum(-1)[None, :] - 2.0 * dot).clamp_min(0.0)
    lo, hi = max(i0, j0), min(i1, j1)
    if lo < hi:  # the block meets the diagonal
        rows = torch.arange(i0, i1, device=x.device)[:, None]
        cols = torch.arange(j0, j1, device=x.device)[None, :]
        same = rows == cols
        r2 = r2.masked_fill(same, 0.0)
        h = pair_fn(xa, xb, fa, fb, dot, r2)
        if exclude_diagonal:
            h = h.masked_fill(same, 0.0)
    else:
        h = pair_fn(xa, xb, fa, fb, dot, r2)
    return h.sum()


class _FusedPairSum(torch.autograd.Function):
    """Dense sum through the pair function's own ``sum_and_grads`` (see the module docstring).

    A backward pass that itself builds a graph (``create_graph=True``) recomputes the sum with
    autograd instead, so the dense backend stays twice differentiable.
    """

    @staticmethod
    def forward(ctx, pair_fn, exclude_diagonal, x, *feats):
        total, grads = pair_fn.sum_and_grads(x.detach(), tuple(f.detach() for f in feats), exclude_diagonal)
        grads = [g if need else None for g, need in zip(grads, ctx.needs_input_grad[2:])]
        ctx.save_for_backward(x, *feats, *[g for g in grads if g is not None])
        ctx.mask = [g is not None for g in grads]
        ctx.pair_fn, ctx.exclude_diagonal = pair_fn, exclude_diagonal
        return total.detach()

    @staticmethod
    def backward(ctx, grad_total):
        saved = ctx.saved_tensors
        inputs, grads = saved[:len(ctx.mask)], iter(saved[len(ctx.mask):])
        if torch.is_grad_enabled():  # double backward: differentiate the autograd version
            x, feats = inputs[0], tuple(inputs[1:])
            n = x.shape[0]
            s = _block(ctx.pair_fn, x, feats, 0, n, 0, n, ctx.exclude_diagonal)
            targets = [t for t, m in zip(inputs, ctx.mask) if m]
            g = iter(torch.autograd.grad(s, targets, create_graph=True))
            out = [next(g) * grad_total if m else None for m in ctx.mask]
        else:
            out = [next(grads) * grad_total if m else None for m in ctx.mask]
        return (None, None, *out)


class _ChunkedPairSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pair_fn, block, exclude_diagonal, r0, r1, x, *feats):
        n = x.shape[0]
        inputs = (x, *feats)
        need = list(ctx.needs_input_grad[5:])
        total = torch.zeros((), dtype=x.dtype, device=x.device)
        grads = [torch.zeros_like(t) if nd else None for t, nd in zip(inputs, need)]
        for i0 in range(r0, r1, block):
            i1 = min(i0 + block, r1)
            for j0 in range(0, n, block):
                j1 = min(j0 + block, n)
                if not any(need):
                    total += _block(pair_fn, x, feats, i0, i1, j0, j1, exclude_diagonal)
                    continue
                with torch.enable_grad():
                    xa = x[i0:i1].detach().requires_grad_(need[0])
                    xb = x[j0:j1].detach().requires_grad_(need[0])
                    fa = tuple(f[i0:i1].detach().requires_grad_(nd) for f, nd in zip(feats, need[1:]))
                    fb = tuple(f[j0:j1].detach().requires_grad_(nd) for f, nd in zip(feats, need[1:]))
                    s = _block(pair_fn, x, feats, i0, i1, j0, j1, exclude_diagonal, xa, fa, xb, fb)
                    targets, where = [], []
                    for k, (ta, tb) in enumerate(zip((xa, *fa), (xb, *fb))):
                        if need[k]:
                            targets += [ta, tb]
                            where += [(k, i0, i1), (k, j0, j1)]
                    g = torch.autograd.grad(s, targets, allow_unused=True)
                for gk, (k, a0, a1) in zip(g, where):
                    if gk is not None:
                        grads[k][a0:a1] += gk
                total += s.detach()
        ctx.save_for_backward(*[g for g in grads if g is not None])
        ctx.mask = [g is not None for g in grads]
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total):
        saved = iter(ctx.saved_tensors)
        out = [next(saved) * grad_total if m else None for m in ctx.mask]
        return (None, None, None, None, None, *out)


# --------------------------------------------------------------------------------------------
# Row sharding (used by kerjepa.distributed)
# --------------------------------------------------------------------------------------------
_SHARD = contextvars.ContextVar("kerjepa_pair_shard", default=None)


@contextlib.contextmanager
def row_shard(rank: int, world_size: int, all_reduce):
    r"""Split every pair sum in this context over ``world_size`` processes.

    Process ``rank`` evaluates the rows :math:`[\lfloor Nr/W\rfloor, \lfloor N(r+1)/W\rfloor)`
    of each pair sum against all N columns, giving a partial sum :math:`P_r`; the value
    returned is the global sum :math:`S = \sum_r P_r` (``all_reduce`` maps a detached scalar to
    its sum over processes), written :math:`W P_r + (S - W P_r)` with the bracket detached. Its
    gradient is :math:`W\,\partial P_r/\partial x`: summed over the processes (which is what
    the backward of a differentiable all-gather of ``x`` does) it is :math:`W\,\partial S/\partial x`,
    the convention of :mod:`kerjepa.distributed`.

    Args:
        rank: this process's index r in ``[0, world_size)``.
        world_size: W >= 1.
        all_reduce: callable, detached scalar tensor -> its sum over the W processes.
    """
    token = _SHARD.set((int(rank), int(world_size), all_reduce))
    try:
        yield
    finally:
        _SHARD.reset(token)


def pair_sum(pair_fn, x: torch.Tensor, features=(), exclude_diagonal: bool = True,
             backend: str = "auto", block_size: int = DEFAULT_BLOCK, rows=None) -> torch.Tensor:
    r""":math:`\sum_{i,j} h(x_i, x_j)` over all ordered pairs (``i != j`` if ``exclude_diagonal``).

    Args:
        pair_fn: ``pair_fn(xa, xb, fa, fb, dot, r2) -> (Na, Nb)`` (module docstring).
        x: (N, D) rows.
        features: per-row tensors of shape (N, ...), passed to ``pair_fn`` block by block.
        exclude_diagonal: drop the ``i == j`` terms (U-statistics).
        backend: ``"auto"``, ``"dense"`` or ``"chunked"`` (module docstring).
        block_size: block edge of the chunked backend.
        rows: ``(r0, r1)`` to sum only over rows ``r0 <= i < r1`` (all columns j); ``None``
            for all rows, or this process's share inside :func:`row_shard`.

    Returns:
        Scalar tensor.
    """
    _checks.choice(backend, "backend", BACKENDS)
    _checks.positive_int(block_size, "block_size")
    n = x.shape[0]
    shard = _SHARD.get() if rows is None else None
    if shard is not None:
        rank, world, _ = shard
        rows = (n * rank // world, n * (rank + 1) // world)
    r0, r1 = (0, n) if rows is None else (int(rows[0]), int(rows[1]))
    if not 0 <= r0 <= r1 <= n:
        raise ValueError(f"rows must satisfy 0 <= r0 <= r1 <= N = {n}, got {rows!r}")
    if backend == "auto":
        backend = "dense" if (r1 - r0) * n <= DENSE_MAX_ROWS ** 2 else "chunked"
    features = tuple(features)
    if r0 == r1:
        partial = (x.sum() + sum(f.sum() for f in features)) * 0.0
    elif (backend == "dense" and (r0, r1) == (0, n) and hasattr(pair_fn, "sum_and_grads")
          and torch.is_grad_enabled() and any(t.requires_grad for t in (x, *features))):
        partial = _FusedPairSum.apply(pair_fn, exclude_diagonal, x, *features)
    elif backend == "dense":
        partial = _block(pair_fn, x, features, r0, r1, 0, n, exclude_diagonal)
    else:
        partial = _ChunkedPairSum.apply(pair_fn, block_size, exclude_diagonal, r0, r1, x, *features)
    if shard is None:
        return partial
    world, all_reduce = shard[1], shard[2]
    local = partial * world
    return local + (all_reduce(partial.detach()) - local).detach()


def pair_mean(pair_fn, x: torch.Tensor, features=(), estimator: str = "u",
              backend: str = "auto", block_size: int = DEFAULT_BLOCK) -> torch.Tensor:
    r"""U-statistic mean :math:`\frac{1}{N(N-1)}\sum_{i\ne j}` (``"u"``) or V-statistic mean
    :math:`\frac{1}{N^2}\sum_{i,j}` (``"v"``) of a pair function (see :func:`pair_sum`)."""
    _checks.choice(estimator, "estimator", ("u", "v"))
    n = x.shape[0]
    u = estimator == "u"
    total = pair_sum(pair_fn, x, features, exclude_diagonal=u, backend=backend, block_size=block_size)
    return total / (n * (n - 1) if u else n * n)
