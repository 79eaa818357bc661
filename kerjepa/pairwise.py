r"""Sums over pairs :math:`\sum_{i,j} h(x_i, x_j)` — the engine of every unsliced estimator.

Every unsliced and analytically sliced statistic is a double sum of a *pair function*
``pair_fn(xa, xb, fa, fb, dot, r2) -> (Na, Nb)`` over rows of the batch, where

* ``xa`` (Na, D), ``xb`` (Nb, D) are blocks of rows of ``x``;
* ``fa``, ``fb`` are tuples with the same blocks of each per-row feature (scores, norms, ...);
* ``dot = xa @ xb.T`` and ``r2`` the squared distances, exactly 0 where a row meets itself.

The pair function must be finite (with finite gradients) at ``r2 == 0`` even when it is excluded,
because autograd multiplies by the mask rather than skipping the entry.

Backends:

* ``"dense"``: one block, plain autograd; memory O(N²). Twice differentiable.
* ``"chunked"``: square blocks of ``block_size`` rows, computed one at a time. When a gradient is
  needed, each block's gradient is taken while it is computed and accumulated into (N, D)
  buffers, so autograd never stores an N×N intermediate; extra memory O(N·D + block²). The
  result is once differentiable.
* ``"auto"``: ``"dense"`` when :math:`N \le` :data:`DENSE_MAX_ROWS`, else ``"chunked"``.
"""
from __future__ import annotations

import torch

from . import _checks

__all__ = ["pair_sum", "pair_mean", "BACKENDS", "DENSE_MAX_ROWS", "DEFAULT_BLOCK"]

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


class _ChunkedPairSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pair_fn, block, exclude_diagonal, x, *feats):
        n = x.shape[0]
        inputs = (x, *feats)
        need = list(ctx.needs_input_grad[3:])
        total = torch.zeros((), dtype=x.dtype, device=x.device)
        grads = [torch.zeros_like(t) if nd else None for t, nd in zip(inputs, need)]
        for i0 in range(0, n, block):
            i1 = min(i0 + block, n)
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
        return (None, None, None, *out)


def pair_sum(pair_fn, x: torch.Tensor, features=(), exclude_diagonal: bool = True,
             backend: str = "auto", block_size: int = DEFAULT_BLOCK) -> torch.Tensor:
    r""":math:`\sum_{i,j} h(x_i, x_j)` over all ordered pairs (``i != j`` if ``exclude_diagonal``).

    Args:
        pair_fn: ``pair_fn(xa, xb, fa, fb, dot, r2) -> (Na, Nb)`` (module docstring).
        x: (N, D) rows.
        features: per-row tensors of shape (N, ...), passed to ``pair_fn`` block by block.
        exclude_diagonal: drop the ``i == j`` terms (U-statistics).
        backend: ``"auto"``, ``"dense"`` or ``"chunked"`` (module docstring).
        block_size: block edge of the chunked backend.

    Returns:
        Scalar tensor.
    """
    _checks.choice(backend, "backend", BACKENDS)
    _checks.positive_int(block_size, "block_size")
    n = x.shape[0]
    if backend == "auto":
        backend = "dense" if n <= DENSE_MAX_ROWS else "chunked"
    features = tuple(features)
    if backend == "dense":
        return _block(pair_fn, x, features, 0, n, 0, n, exclude_diagonal)
    return _ChunkedPairSum.apply(pair_fn, block_size, exclude_diagonal, x, *features)


def pair_mean(pair_fn, x: torch.Tensor, features=(), estimator: str = "u",
              backend: str = "auto", block_size: int = DEFAULT_BLOCK) -> torch.Tensor:
    r"""U-statistic mean :math:`\frac{1}{N(N-1)}\sum_{i\ne j}` (``"u"``) or V-statistic mean
    :math:`\frac{1}{N^2}\sum_{i,j}` (``"v"``) of a pair function (see :func:`pair_sum`)."""
    _checks.choice(estimator, "estimator", ("u", "v"))
    n = x.shape[0]
    u = estimator == "u"
    total = pair_sum(pair_fn, x, features, exclude_diagonal=u, backend=backend, block_size=block_size)
    return total / (n * (n - 1) if u else n * n)
