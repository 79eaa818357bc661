"""Validation at the public boundary: clear errors naming the argument, never a silent cast.

The convention of the library:

* A public function checks its hyperparameters (plain Python values) and then ``z`` *once*,
  with :func:`embeddings`, before it calls private code that trusts its inputs.
* Every check of a tensor here reads only its metadata (type, rank, shape, dtype): none reads a
  value, so none waits for an accelerator (a host synchronisation). A valid call of an estimator
  synchronises only where its result needs a number on the host (the ``"median"`` bandwidth).
* Values are not checked: NaN or Inf in ``z`` (or in fixed ``directions``) makes the result
  non-finite, which a training loop detects on the loss it already reads.

This module imports no other part of the library; the checks that need the library's classes
live with them (:func:`kerjepa.kernels.check_kernel`, :func:`kerjepa.priors.check_prior`).
"""
from __future__ import annotations

import math
from numbers import Real

import torch

_FLOATS = (torch.float32, torch.float64)
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def embeddings(z, name: str = "z", min_rows: int = 1, allow_views: bool = True) -> torch.Tensor:
    """Check a batch of embeddings of shape (N, D), or (V, N, D) when `allow_views`.

    Metadata only (no host synchronisation). float16/bfloat16 inputs (what bf16 autocast
    produces) are promoted to float32: every discrepancy is computed in float32 or float64, as
    the docstrings of the estimators say. Values are not inspected (see the module docstring).
    """
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
    ranks = "(N, D) or (V, N, D)" if allow_views else "(N, D)"
    if z.dim() not in ((2, 3) if allow_views else (2,)):
        raise ValueError(f"{name} must have shape {ranks}, got shape {tuple(z.shape)}")
    if z.dtype in _LOW_PRECISION:
        z = z.float()
    elif z.dtype not in _FLOATS:
        raise TypeError(f"{name} must be a float32 or float64 tensor (float16/bfloat16 are "
                        f"computed in float32), got dtype {z.dtype}")
    if z.dim() == 3 and z.shape[0] < 1:
        raise ValueError(f"{name} of shape (V, N, D) needs at least one view (V >= 1), "
                         f"got shape {tuple(z.shape)}")
    if z.shape[-1] < 1:
        raise ValueError(f"{name} must have at least one feature (D >= 1), got shape {tuple(z.shape)}")
    if z.shape[-2] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} row(s) along N for this estimator, "
                         f"got shape {tuple(z.shape)}")
    return z


def same_device(z: torch.Tensor, other: torch.Tensor, name: str, z_name: str = "z") -> None:
    """Raise unless ``other`` lives on the device of ``z`` (metadata only)."""
    if other.device != z.device:
        raise ValueError(f"{name} must be on the device of {z_name} ({z.device}), got {other.device}")


def positive(value, name: str, allow_none: bool = False) -> float | None:
    """A finite real number > 0 (bools are rejected)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a positive real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def positive_int(value, name: str, minimum: int = 1) -> int:
    """An integer >= `minimum` (bools are rejected)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return value


def choice(value, name: str, options) -> str:
    """One of a fixed set of names."""
    if value not in options:
        raise ValueError(f"{name} must be one of {sorted(options, key=repr)}, got {value!r}")
    return value


def directions(dirs, dim: int, like: torch.Tensor, name: str = "directions") -> torch.Tensor:
    """Slice directions of shape (K, D), returned unit-normalised in the dtype of `like`.

    Metadata only: a zero or non-finite row is not looked for, and makes the result of the
    estimator non-finite (0/0), like non-finite embeddings.
    """
    if not isinstance(dirs, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (K, {dim}), got {type(dirs).__name__}")
    if dirs.dim() != 2 or dirs.shape[1] != dim or dirs.shape[0] < 1:
        raise ValueError(f"{name} must have shape (K, {dim}) with K >= 1, got {tuple(dirs.shape)}")
    if not dirs.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {dirs.dtype}")
    return (dirs / dirs.norm(dim=1, keepdim=True)).to(device=like.device, dtype=like.dtype)


def per_view(z: torch.Tensor, statistic) -> torch.Tensor:
    """Apply ``statistic`` to an (N, D) batch, or to each view of a (V, N, D) batch and average.

    Runs with autocast disabled, so the discrepancy is computed in the dtype of ``z``
    (float32 or float64) even inside a bf16 autocast region.
    """
    with torch.autocast(device_type=z.device.type, enabled=False):
        if z.dim() == 2:
            return statistic(z)
        return torch.stack([statistic(zv) for zv in z.unbind(0)]).mean()
