"""Every estimator as a pure function of the batch ``z`` (N, D) or (V, N, D).

The :mod:`kerjepa.modules` regularizers hold hyperparameters and the slice step counter and
call these.
"""
from .mmd import epps_pulley, mmd2, sliced_mmd2
from .ksd import ksd2, sliced_ksd2, stein_kernel

__all__ = ["mmd2", "sliced_mmd2", "epps_pulley", "ksd2", "sliced_ksd2", "stein_kernel"]
