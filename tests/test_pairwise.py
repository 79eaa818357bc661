"""The pair-sum engine: chunked == dense for values and gradients, at awkward sizes."""
import pytest
import torch

from kerjepa import functional as F, kernels, priors
from kerjepa.pairwise import pair_mean
from tolerances import assert_reordered


def pair_fn(xa, xb, fa, fb, dot, r2):
    """A pair function that uses every input: a Stein-like kernel with per-row features."""
    k = torch.exp(-0.3 * r2)
    return k * (fa[0] @ fb[0].T) + dot * k + fa[1][:, None] * fb[1][None, :] * k


@pytest.mark.parametrize("n,d,block", [(7, 3, 3), (5, 2, 16), (10, 1, 4), (9, 4, 9), (2, 5, 1)])
@pytest.mark.parametrize("estimator", ["u", "v"])
def test_chunked_equals_dense(n, d, block, estimator):
    g = torch.Generator().manual_seed(n * 10 + d)
    x = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    s = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    c = torch.randn(n, generator=g, dtype=torch.float64, requires_grad=True)
    feats = (torch.tanh(s), c * 2)
    dense = pair_mean(pair_fn, x, feats, estimator, backend="dense")
    grads_dense = torch.autograd.grad(dense, (x, s, c))
    feats = (torch.tanh(s), c * 2)
    chunked = pair_mean(pair_fn, x, feats, estimator, backend="chunked", block_size=block)
    grads_chunked = torch.autograd.grad(chunked, (x, s, c))
    assert_reordered(chunked, dense)
    for a, b in zip(grads_chunked, grads_dense):
        assert_reordered(a, b)


def test_chunked_gradcheck():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 2, generator=g, dtype=torch.float64, requires_grad=True)
    fn = lambda x: pair_mean(lambda xa, xb, fa, fb, dot, r2: torch.exp(-r2) * (1 + dot), x, backend="chunked", block_size=4)
    assert torch.autograd.gradcheck(fn, (x,))


def test_no_grad_path_and_estimator_through_mmd2():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(11, 3, generator=g, dtype=torch.float64)
    for kernel in (kernels.Gaussian(0.4), kernels.IMQ(0.5)):
        dense = F.mmd2(z, kernel, priors.Gaussian(), backend="dense")
        chunked = F.mmd2(z, kernel, priors.Gaussian(), backend="chunked", block_size=4)
        assert_reordered(chunked, dense)


def test_chunked_keeps_no_n_by_n_graph():
    """The autograd graph of the chunked backend holds (N, D) tensors only."""
    x = torch.randn(64, 3, dtype=torch.float64, requires_grad=True)
    out = pair_mean(lambda xa, xb, fa, fb, dot, r2: torch.exp(-r2), x, backend="chunked", block_size=8)
    saved = out.grad_fn.next_functions[0][0].saved_tensors
    assert len(saved) == 1 and saved[0].shape == (64, 3)


def test_bad_backend():
    with pytest.raises(ValueError, match="backend"):
        pair_mean(lambda *a: a[-1], torch.randn(3, 2), backend="sparse")
