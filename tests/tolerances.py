"""One tolerance table for every numerical comparison in the test suite.

Each entry says which kind of difference it allows; a test picks the entry that names its
comparison instead of writing numbers of its own.
"""
import torch

#: relative tolerance against an independent float64 reference
RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}

#: the same float64 sum evaluated in another order or grouping (dense vs chunked pair sums,
#: row ranges, a hand-written backward vs autograd): round-off of about 1e-16 per term only
REORDER = dict(rtol=1e-12, atol=1e-14)

#: a gradient evaluated in another order: absolute tolerance per unit of its largest entry
REORDER_GRAD_ATOL = 1e-13

#: one process vs W processes holding shards of the same global batch, by dtype
DISTRIBUTED = {torch.float32: 1e-6, torch.float64: 1e-12}


def close(actual, expected, dtype=torch.float64, scale=None):
    """Assert |actual - expected| <= rtol * scale, with scale = |expected| unless given.

    ``scale`` is the magnitude of the terms that cancel in a statistic (e.g. the pair, cross
    and constant terms of an MMD), which bounds its round-off in the working precision.
    """
    actual, expected = float(actual), float(expected)
    scale = abs(expected) if scale is None else float(scale)
    tol = RTOL[dtype] * max(scale, 1e-300)
    assert abs(actual - expected) <= tol, (
        f"{actual!r} vs {expected!r}: |diff| {abs(actual - expected):.3e} > {tol:.3e} ({dtype})")


def assert_reordered(actual, expected, grad=False):
    """``actual`` equals ``expected`` up to the round-off of a reordered float64 sum.

    With ``grad=True`` the absolute tolerance scales with the largest entry of ``expected``.
    """
    if grad:
        atol = REORDER_GRAD_ATOL * float(expected.abs().max())
        torch.testing.assert_close(actual, expected, rtol=REORDER["rtol"], atol=atol)
    else:
        torch.testing.assert_close(actual, expected, **REORDER)
