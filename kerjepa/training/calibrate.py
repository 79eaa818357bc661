"""Recompute the calibrated lambda of every preset and print them as ``config.CALIBRATED_LAMBDA``.

Each row's lambda is :func:`kerjepa.calibration.calibrate_lambda` with its defaults (SIGReg with 1024
slices and 21 points as the reference, at LeJEPA's 0.02 transferred to the row's D; the reference
batches of :func:`kerjepa.calibration.reference_batches` in that D)::

    python -m kerjepa.training.calibrate                                   # every row, a few CPU minutes
    python -m kerjepa.training.calibrate table1/ksd-unsliced-imq-gaussian  # some rows

The output is the dict literal that ``kerjepa/training/config.py`` holds.
"""
from __future__ import annotations

import sys

import torch

import kerjepa
from kerjepa.calibration import calibrate_lambda

from .config import calibration_rows

__all__ = ["calibrated_lambda", "main"]


def calibrated_lambda(key: str) -> float:
    """The calibrated lambda of one row of :func:`kerjepa.training.config.calibration_rows`, recomputed."""
    rows = calibration_rows()
    if key not in rows:
        raise KeyError(f"unknown row {key!r}; rows are {sorted(rows)}")
    reg, dim = rows[key]
    with torch.random.fork_rng(devices=[]):
        return calibrate_lambda(kerjepa.regularizer(**reg), dim=dim)


def main(argv=None) -> int:
    keys = list(argv if argv is not None else sys.argv[1:]) or list(calibration_rows())
    print("CALIBRATED_LAMBDA = {")
    for key in keys:
        print(f'    "{key}": {calibrated_lambda(key):.6g},', flush=True)
    print("}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
