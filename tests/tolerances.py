"""One tolerance table for every numerical comparison in the test suite."""
import torch

#: relative tolerance against an independent float64 reference
RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}


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
