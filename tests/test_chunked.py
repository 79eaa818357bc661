"""Chunked == dense for every unsliced and analytically sliced estimator (values and gradients).

Float64, at awkward sizes: N not a multiple of the block, N smaller than the block, D = 1.
Also: row ranges of the pair engine partition the full sum, and the row-sharded sum (what
each rank computes under :mod:`kerjepa.distributed`) adds up to the single-process value.
"""
import functools

import pytest
import torch

from kerjepa import analytic, functional as F, kernels, ksd, pairwise, priors
from kerjepa.ksd import _stein_pair
from tolerances import assert_reordered

SIZES = [(11, 3, 4), (5, 2, 16), (9, 1, 4)]  # (N, D, block): N % block != 0, N < block, D = 1

KERNELS = {"gaussian": kernels.Gaussian(gamma=0.3), "imq": kernels.IMQ(alpha=0.4, beta=0.5)}
PRIORS = {"gaussian": priors.Gaussian(1.2), "laplace": priors.Laplace(1.0),
          "student_t": priors.StudentT(nu=4.0)}


def _estimators():
    out = {}
    for k in KERNELS:
        for est in ("u", "v"):
            out[f"mmd2-{k}-{est}"] = functools.partial(F.mmd2, kernel=KERNELS[k], prior=PRIORS["gaussian"],
                                                       estimator=est)
            for q in PRIORS:
                out[f"ksd2-{k}-{q}-{est}"] = functools.partial(F.ksd2, kernel=KERNELS[k], prior=PRIORS[q],
                                                               estimator=est)
    for est in ("u", "v"):
        out[f"analytic-mmd2-{est}"] = functools.partial(analytic.analytic_sliced_mmd2, kernel=kernels.Gaussian(0.5),
                                                        prior=priors.Gaussian(), estimator=est)
        out[f"analytic-ksd2-{est}"] = functools.partial(analytic.analytic_sliced_ksd2, kernel=kernels.Gaussian(0.5),
                                                        prior=priors.Gaussian(), estimator=est)
    return out


ESTIMATORS = _estimators()


@pytest.mark.parametrize("n,d,block", SIZES)
@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_chunked_equals_dense(name, n, d, block):
    fn = ESTIMATORS[name]
    g = torch.Generator().manual_seed(100 * n + d)
    z = (1.3 * torch.randn(n, d, generator=g, dtype=torch.float64) + 0.2).requires_grad_(True)
    dense = fn(z, backend="dense")
    (grad_dense,) = torch.autograd.grad(dense, z)
    chunked = fn(z, backend="chunked", block_size=block)
    (grad_chunked,) = torch.autograd.grad(chunked, z)
    assert_reordered(chunked, dense)
    assert_reordered(grad_chunked, grad_dense, grad=True)


def _stein_like(xa, xb, fa, fb, dot, r2):
    k = torch.exp(-0.3 * r2)
    return k * (fa[0] @ fb[0].T) + dot * k


@pytest.mark.parametrize("backend", ["dense", "chunked"])
@pytest.mark.parametrize("exclude_diagonal", [True, False])
def test_row_ranges_partition_the_sum(backend, exclude_diagonal):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(13, 2, generator=g, dtype=torch.float64, requires_grad=True)
    s = torch.randn(13, 2, generator=g, dtype=torch.float64, requires_grad=True)
    total = pairwise.pair_sum(_stein_like, x, (s,), exclude_diagonal, backend="dense")
    grads = torch.autograd.grad(total, (x, s))
    cuts = [0, 4, 4, 9, 13]  # includes an empty range
    parts = [pairwise.pair_sum(_stein_like, x, (s,), exclude_diagonal, backend=backend, block_size=3,
                               rows=(a, b)) for a, b in zip(cuts[:-1], cuts[1:])]
    summed = torch.stack(parts).sum()
    assert_reordered(summed, total)
    for a, b in zip(torch.autograd.grad(summed, (x, s)), grads):
        assert_reordered(a, b)


@pytest.mark.parametrize("backend", ["dense", "chunked"])
def test_row_shard_gives_the_global_value_and_w_times_the_gradient(backend):
    """Simulate W = 3 ranks in one process: the shard's value is the global sum, and the
    shards' gradients add up to W times the single-process gradient."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(10, 3, generator=g, dtype=torch.float64, requires_grad=True)
    fn = functools.partial(F.ksd2, kernel=kernels.IMQ(0.5), prior=priors.Laplace(), backend=backend, block_size=3)
    expected = fn(x)
    (grad,) = torch.autograd.grad(expected, x)
    world = 3
    partials = []
    for rank in range(world):  # the partial sum each rank contributes, without sharding
        n = x.shape[0]
        rows = (n * rank // world, n * (rank + 1) // world)
        pair = _stein_pair(kernels.IMQ(0.5), 3)
        partials.append(pairwise.pair_sum(pair, x.detach(), (priors.Laplace().score(x.detach()),),
                                          rows=rows).detach())
    total = torch.stack(partials).sum()
    summed_grad = torch.zeros_like(x)
    for rank in range(world):
        with pairwise.row_shard(rank, world, lambda t: total):
            value = fn(x)
        assert_reordered(value, expected)
        summed_grad += torch.autograd.grad(value, x)[0]
    assert_reordered(summed_grad / world, grad)


def test_bad_rows():
    with pytest.raises(ValueError, match="rows"):
        pairwise.pair_sum(_stein_like, torch.randn(4, 2), (torch.randn(4, 2),), rows=(3, 5))


@pytest.mark.parametrize("kernel", ["gaussian", "imq", "imq-beta"])
@pytest.mark.parametrize("prior", sorted(PRIORS))
@pytest.mark.parametrize("estimator", ["u", "v"])
def test_hand_written_stein_backward_equals_autograd(kernel, prior, estimator):
    """The hand-written backward (``ksd.SteinPair.sum_and_grads``) equals autograd's."""
    k = {"gaussian": KERNELS["gaussian"], "imq": KERNELS["imq"], "imq-beta": kernels.IMQ(0.4, beta=1.3)}[kernel]
    q = PRIORS[prior]
    g = torch.Generator().manual_seed(7)
    z = (1.3 * torch.randn(12, 3, generator=g, dtype=torch.float64) + 0.2).requires_grad_(True)
    expected = pairwise.pair_mean(ksd._stein_pair(k, 3), z, (q.score(z),), estimator, backend="dense")
    (grad,) = torch.autograd.grad(expected, z)
    value = F.ksd2(z, k, q, estimator, backend="dense")
    (grad_fused,) = torch.autograd.grad(value, z)
    assert type(value.grad_fn.next_functions[0][0]).__name__ == "_FusedPairSumBackward"
    assert_reordered(value, expected)
    assert_reordered(grad_fused, grad, grad=True)


def test_hand_written_stein_backward_is_twice_differentiable():
    """A second derivative through the ``sum_and_grads`` path falls back to autograd."""
    k, q = kernels.IMQ(0.5), priors.Laplace()
    z = torch.randn(6, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64, requires_grad=True)
    fused = lambda x: F.ksd2(x, k, q, backend="dense")
    assert torch.autograd.gradcheck(fused, (z,))
    assert torch.autograd.gradgradcheck(fused, (z,))
