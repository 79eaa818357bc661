"""Every estimator as a pure function of the batch ``z`` (N, D) or (V, N, D): the public path.

Each function checks its hyperparameters and the metadata of ``z`` once (no host
synchronisation: values are not read, so NaN or Inf in ``z`` gives a non-finite result) and
then runs the estimator, which trusts its inputs. The hyperparameter half of each check is a
function of its own, ``check_<estimator>_options``, which the :mod:`kerjepa.modules`
regularizers run when they are built; at each call the modules call these functions:

* :func:`mmd2` — :func:`check_mmd2_options` — :class:`kerjepa.MMD`;
* :func:`sliced_mmd2` — :func:`check_sliced_mmd2_options` — :class:`kerjepa.SlicedMMD`;
* :func:`epps_pulley` — :func:`check_epps_pulley_options` — :class:`kerjepa.EppsPulley`;
* :func:`ksd2` — :func:`check_ksd2_options` — :class:`kerjepa.KSD`;
* :func:`sliced_ksd2` — :func:`check_sliced_ksd2_options` — :class:`kerjepa.SlicedKSD`;
* :func:`stein_kernel` — the Stein-kernel matrix whose mean :func:`ksd2` is.

``num_slices=None`` in the sliced functions is analytic slicing
(:func:`kerjepa.analytic.analytic_sliced_mmd2`, :func:`kerjepa.analytic.analytic_sliced_ksd2`).

Example:
    >>> import torch
    >>> from kerjepa import functional as F, kernels, priors
    >>> z = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    >>> F.ksd2(z, kernels.IMQ(), priors.Gaussian()).shape
    torch.Size([])
"""
from .ksd import check_ksd2_options, check_sliced_ksd2_options, ksd2, sliced_ksd2, stein_kernel
from .mmd import (check_epps_pulley_options, check_mmd2_options, check_sliced_mmd2_options, epps_pulley,
                  mmd2, sliced_mmd2)

__all__ = ["mmd2", "sliced_mmd2", "epps_pulley", "ksd2", "sliced_ksd2", "stein_kernel",
           "check_mmd2_options", "check_sliced_mmd2_options", "check_epps_pulley_options",
           "check_ksd2_options", "check_sliced_ksd2_options"]
