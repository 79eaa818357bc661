r"""Distributed-exact regularizers: the statistic of the *global* batch, split over ranks.

Under an initialised :mod:`torch.distributed` process group (any backend: ``gloo`` on CPU,
``nccl`` on GPUs) each of the W ranks holds a shard ``z_r`` of the global batch of N rows.
Calling a :class:`kerjepa.Regularizer` on ``z_r`` returns, on every rank, the value of the
statistic of the concatenated batch :math:`[z_0; \dots; z_{W-1}]` exactly (to round-off):

* **Unsliced and analytically sliced** estimators (pair sums): the embeddings are gathered with
  :func:`gather_rows`, a differentiable all-gather; every rank evaluates only its share of
  the rows of each pair sum against all columns (:func:`kerjepa.pairwise.row_shard`), so the
  :math:`O(N^2 D)` work is divided by W, and the partial sums are all-reduced.
* **Finitely sliced** estimators draw the same directions on every rank: the regularizer's
  ``step`` counter is made equal on all ranks (all-reduce MAX) at its first call, and every
  rank seeds its generator with ``seed + step``. Each rank keeps its own rows
  (:func:`local_rows`): the estimators take their means over rows through :func:`row_mean`,
  one all-reduce of the (K, U) characteristic functions, with N the global batch size. (With
  the data-dependent ``gamma="median"`` the rows are gathered instead, so the bandwidth is
  that of the global batch.)

Gradient convention
-------------------
:class:`torch.nn.parallel.DistributedDataParallel` *averages* parameter gradients over the
W ranks. So that this average equals the gradient of the global statistic :math:`v`, the
gradient each rank receives for its own rows is **W times** the single-process gradient:

.. math::

    \nabla_{z_r}\,\mathtt{reg}(z_r)\big|_{\text{rank } r} = W\,\frac{\partial v(z_0,\dots,z_{W-1})}{\partial z_r},
    \qquad
    \frac1W\sum_r J_r^\top\Big(W\frac{\partial v}{\partial z_r}\Big) = \sum_r J_r^\top\frac{\partial v}{\partial z_r}.

Equivalently: each rank's gradient is that of the *sum* over ranks of the (identical) values,
which is what the backward passes of the collectives here compute (the backward of an
all-gather sums the gradients of all ranks and keeps this rank's rows; the backward of a
sum all-reduce is a sum all-reduce). The tests check ``z_r.grad / W`` against the rows of
the single-process gradient of the concatenated batch.

Without a process group, or with a group of one process, nothing here calls
:mod:`torch.distributed`: every function is the identity (or the plain local reduction).

Derived in :ref:`ch-scale`.
"""
from __future__ import annotations

import contextlib
import contextvars

import torch
import torch.distributed as dist

from . import pairwise

__all__ = ["is_active", "world_size", "rank", "gather_rows", "all_reduce_sum", "sync_max_",
           "sharded_pairs", "local_rows", "global_rows", "row_mean", "mean_of_row_sums"]


def is_active() -> bool:
    """True when a :mod:`torch.distributed` process group with more than one process exists."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """W, the number of processes (1 without a process group)."""
    return dist.get_world_size() if is_active() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_active() else 0


# --------------------------------------------------------------------------------------------
# Differentiable collectives
# --------------------------------------------------------------------------------------------
def _gather_sizes(n: int, device) -> list[int]:
    mine = torch.full((1,), n, dtype=torch.long, device=device)
    sizes = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, mine)
    return [int(s) for s in sizes]


class _GatherRows(torch.autograd.Function):
    """All-gather along the first dimension; backward: this rank's rows of the summed gradient."""

    @staticmethod
    def forward(ctx, x):
        x = x.contiguous()
        sizes = _gather_sizes(x.shape[0], x.device)
        top = max(sizes)
        if x.shape[0] < top:
            pad = x.new_zeros((top - x.shape[0],) + tuple(x.shape[1:]))
            xp = torch.cat([x, pad])
        else:
            xp = x
        parts = [torch.empty_like(xp) for _ in sizes]
        dist.all_gather(parts, xp)
        r = dist.get_rank()
        ctx.start, ctx.stop = sum(sizes[:r]), sum(sizes[:r + 1])
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.start:ctx.stop]


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; backward: sum over ranks of the incoming gradients."""

    @staticmethod
    def forward(ctx, x):
        out = x.contiguous().clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def gather_rows(z: torch.Tensor) -> torch.Tensor:
    """The global batch: every rank's ``z`` concatenated along the N axis, in rank order.

    Differentiable (see the module's gradient convention). Ranks may hold different numbers of
    rows; all must have the same trailing shape and dtype.

    Args:
        z: (N_r, D) or (V, N_r, D).

    Returns:
        (N, D) or (V, N, D) with :math:`N = \\sum_r N_r`; ``z`` itself without a process group.

    Example:
        >>> import torch
        >>> z = torch.zeros(4, 2)
        >>> gather_rows(z) is z  # one process
        True
    """
    if not is_active():
        return z
    if z.dim() == 2:
        return _GatherRows.apply(z)
    return _GatherRows.apply(z.transpose(0, -2)).transpose(0, -2)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Differentiable sum over ranks (identity without a process group)."""
    return _AllReduceSum.apply(t) if is_active() else t


def sync_max_(t: torch.Tensor) -> torch.Tensor:
    """In place: the maximum of ``t`` over ranks (no gradient). A no-op without a process group."""
    if is_active():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def _sum_detached(t: torch.Tensor) -> torch.Tensor:
    out = t.detach().clone()
    dist.all_reduce(out)
    return out


@contextlib.contextmanager
def sharded_pairs():
    """Context in which every :mod:`kerjepa.pairwise` sum is split over the ranks.

    Each rank evaluates its share of the rows of the (gathered) batch against all columns;
    the partial sums are all-reduced (:func:`kerjepa.pairwise.row_shard`). A no-op without
    a process group. Every rank must make the same pair-sum calls in the same order.
    """
    if not is_active():
        yield
        return
    with pairwise.row_shard(rank(), world_size(), _sum_detached):
        yield


_LOCAL_ROWS = contextvars.ContextVar("kerjepa_local_rows", default=None)


@contextlib.contextmanager
def local_rows(z: torch.Tensor):
    """Context in which :func:`row_mean` and :func:`global_rows` refer to the global batch.

    For estimators that reduce per-row quantities to means (the empirical characteristic
    functions of the finitely sliced statistics): inside the context each rank passes only its
    own rows ``z`` (N_r, D) or (V, N_r, D), :func:`row_mean` all-reduces the sums and
    :func:`global_rows` returns N. One all-reduce of the row count on entry, on the device of
    ``z``. A no-op without a process group.
    """
    if not is_active():
        yield
        return
    count = torch.full((), float(z.shape[-2]), dtype=torch.float64, device=z.device)
    dist.all_reduce(count)
    token = _LOCAL_ROWS.set(int(count))
    try:
        yield
    finally:
        _LOCAL_ROWS.reset(token)


def global_rows(n_local: int) -> int:
    """N, the global number of rows, inside :func:`local_rows`; else ``n_local``."""
    n = _LOCAL_ROWS.get()
    return n_local if n is None else n


def mean_of_row_sums(sums: torch.Tensor, n_local: int) -> torch.Tensor:
    """The mean over the rows from ``sums`` over this rank's ``n_local`` rows: over the global batch
    inside :func:`local_rows` (one differentiable all-reduce of ``sums``), else ``sums / n_local``.

    For estimators that accumulate their row sums themselves (:func:`kerjepa.slicing.ecf`).
    """
    n = _LOCAL_ROWS.get()
    if n is None:
        return sums / n_local
    return all_reduce_sum(sums) / n


def row_mean(t: torch.Tensor) -> torch.Tensor:
    r"""Mean over dimension 0 — over the rows of the *global* batch inside :func:`local_rows`.

    ``t`` (N_r, ...) holds this rank's rows; inside the context the result is
    :math:`\frac1N\sum_{r}\sum_{i} t_{ri}` on every rank, differentiable (one all-reduce of a
    tensor of shape ``t.shape[1:]``, e.g. (K, U) for a characteristic function), with the
    gradient convention of this module. Elsewhere it is ``t.mean(0)``.

    Example:
        >>> import torch
        >>> row_mean(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        tensor([2., 3.])
    """
    if _LOCAL_ROWS.get() is None:
        return t.mean(0)
    return mean_of_row_sums(t.sum(0), t.shape[0])
