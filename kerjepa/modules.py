r"""``nn.Module`` regularizers: hyperparameters, the slice step counter, and the factory.

Each module wraps one function of :mod:`kerjepa.functional`: it checks every hyperparameter
when it is built (with the function's own ``check_*_options``), so a bad option fails before any
data is seen, and calls the function on each batch. Call it on the batch of projector outputs,
``loss = align + lam * reg(z)``, with ``z`` of shape (N, D) or (V, N, D).

Sliced modules draw fresh directions at every call from a generator seeded with
``seed + step``; ``step`` is a buffer, so it is saved in the ``state_dict`` and a resumed run
continues the same sequence of slices. Its value is also kept on the host, so seeding reads no
device memory: set it through ``load_state_dict``, not by writing to the buffer.

Scale: ``scale="kerjepa"`` (default) returns the discrepancy itself (MMD² or KSD²), as the
KerJEPA paper regularizes; ``scale="lejepa"`` multiplies by :math:`N\sqrt{2\pi}` (N = rows per
view), the scale of LeJEPA's Epps–Pulley statistic (paper Prop. 1); LeJEPA's λ maps onto KerJEPA's
loss through :func:`kerjepa.calibration.lambda_from_lejepa`.

Distributed: under an initialised :mod:`torch.distributed` process group each rank passes
its shard of the global batch and every module returns the statistic of the *global* batch
(N = global rows); unsliced pair sums are split over the ranks, finitely sliced statistics
all-reduce their characteristic functions, the ``step`` counter is synchronised (all-reduce
MAX) at the first call so all ranks draw the same slices, and the
gradient each rank gets for its rows is W times the single-process one, so that DDP's average
is exact. See :mod:`kerjepa.distributed`. Without a process group nothing changes.
"""
from __future__ import annotations

import inspect
import math

import torch
from torch import nn

from . import _checks, distributed, functional as F, kernels, priors

__all__ = ["Regularizer", "MMD", "SlicedMMD", "KSD", "SlicedKSD", "EppsPulley", "regularizer", "KINDS",
           "REGULARIZER_KEYS"]

SCALES = ("kerjepa", "lejepa")


class Regularizer(nn.Module):
    """Base class: the ``step`` buffer, the slice generator and the output scale."""

    def __init__(self, scale: str = "kerjepa", seed: int = 0):
        super().__init__()
        self.scale = _checks.choice(scale, "scale", SCALES)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        self.seed = seed
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._step = 0  # the value of the buffer, kept on the host: seeding reads no device memory
        self._step_synced = False

    def _generator(self, device: torch.device) -> torch.Generator:
        """A generator seeded with ``seed + step`` on ``device``; advances ``step``."""
        gen = torch.Generator(device=device)
        gen.manual_seed(self.seed + self._step)
        self._step += 1
        self.step.fill_(self._step)
        return gen

    def _scaled(self, value: torch.Tensor, n: int) -> torch.Tensor:
        """``value`` at the module's scale; ``n`` is the number of rows per view (global)."""
        if self.scale == "lejepa":
            return value * (n * math.sqrt(2.0 * math.pi))
        return value

    @property
    def _row_means_only(self) -> bool:
        """Whether the statistic reduces rows only through means (so each rank keeps its shard)."""
        return False

    def statistic(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._step = int(self.step)
        self._step_synced = False

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Regularizer value for embeddings ``z`` of shape (N, D) or (V, N, D); a scalar.

        Under a process group, ``z`` is this rank's shard and the value is that of the global
        batch (module docstring; :mod:`kerjepa.distributed`).
        """
        if not distributed.is_active():
            return self._scaled(self.statistic(z), z.shape[-2])
        z = _checks.embeddings(z)
        if not self._step_synced:
            distributed.sync_max_(self.step)
            self._step = int(self.step)
            self._step_synced = True
        if self._row_means_only:  # finite slicing: all-reduce the (K, U) characteristic functions
            with distributed.local_rows(z):
                return self._scaled(self.statistic(z), distributed.global_rows(z.shape[-2]))
        z = distributed.gather_rows(z)
        with distributed.sharded_pairs():
            value = self.statistic(z)
        return self._scaled(value, z.shape[-2])


class _KernelPriorRegularizer(Regularizer):
    def __init__(self, kernel: kernels.Kernel, prior: priors.Prior, estimator: str,
                 backend: str = "auto", scale: str = "kerjepa", seed: int = 0):
        super().__init__(scale, seed)
        self.kernel = kernels.check_kernel(kernel)
        self.prior = priors.check_prior(prior)
        self.estimator = _checks.choice(estimator, "estimator", ("u", "v"))
        self.backend = backend

    def extra_repr(self):
        return f"kernel={self.kernel!r}, prior={self.prior!r}, estimator={self.estimator!r}, scale={self.scale!r}"


class MMD(_KernelPriorRegularizer):
    """Unsliced MMD² (:func:`kerjepa.functional.mmd2`)."""

    def __init__(self, kernel, prior, estimator="u", prior_samples=None, backend="auto", scale="kerjepa", seed=0):
        super().__init__(kernel, prior, estimator, backend, scale, seed)
        F.check_mmd2_options(kernel, prior, estimator, prior_samples, backend)
        self.prior_samples = prior_samples

    def statistic(self, z):
        # the prior is sampled on the host (SciPy inverse CDFs), from a CPU generator, then moved
        gen = self._generator(torch.device("cpu")) if self.prior_samples else None
        return F.mmd2(z, self.kernel, self.prior, self.estimator, prior_samples=self.prior_samples,
                      generator=gen, backend=self.backend)


class KSD(_KernelPriorRegularizer):
    """Unsliced KSD² (:func:`kerjepa.functional.ksd2`)."""

    def __init__(self, kernel, prior, estimator="u", backend="auto", scale="kerjepa", seed=0):
        super().__init__(kernel, prior, estimator, backend, scale, seed)
        F.check_ksd2_options(kernel, prior, estimator, backend)

    def statistic(self, z):
        return F.ksd2(z, self.kernel, self.prior, self.estimator, backend=self.backend)


class _Sliced(_KernelPriorRegularizer):
    def __init__(self, kernel, prior, num_slices=1024, num_knots=21, estimator="v", approx=None,
                 backend="auto", scale="kerjepa", seed=0):
        super().__init__(kernel, prior, estimator, backend, scale, seed)
        self.num_slices, self.num_knots, self.approx = num_slices, num_knots, approx

    @property
    def _row_means_only(self):
        return self.num_slices is not None and self.kernel.bandwidth != "median"

    def extra_repr(self):
        k = "analytic" if self.num_slices is None else self.num_slices
        return f"{super().extra_repr()}, num_slices={k}"


class SlicedMMD(_Sliced):
    """Sliced MMD² (:func:`kerjepa.functional.sliced_mmd2`); ``num_slices=None`` is analytic."""

    def __init__(self, kernel, prior, num_slices=1024, num_knots=21, estimator="v", approx=None,
                 target_cf="marginal", backend="auto", scale="kerjepa", seed=0):
        super().__init__(kernel, prior, num_slices, num_knots, estimator, approx, backend, scale, seed)
        F.check_sliced_mmd2_options(kernel, prior, num_slices, num_knots, estimator, target_cf, approx, backend)
        self.target_cf = target_cf

    def statistic(self, z):
        gen = None if self.num_slices is None else self._generator(z.device)
        return F.sliced_mmd2(z, self.kernel, self.prior, self.num_slices, self.num_knots, generator=gen,
                             estimator=self.estimator, target_cf=self.target_cf, approx=self.approx,
                             backend=self.backend)


class SlicedKSD(_Sliced):
    """Sliced KSD² (:func:`kerjepa.functional.sliced_ksd2`); ``num_slices=None`` is analytic."""

    def __init__(self, kernel, prior, num_slices=1024, num_knots=21, estimator="v", approx=None,
                 backend="auto", scale="kerjepa", seed=0):
        super().__init__(kernel, prior, num_slices, num_knots, estimator, approx, backend, scale, seed)
        F.check_sliced_ksd2_options(kernel, prior, num_slices, num_knots, estimator, approx, backend)

    def statistic(self, z):
        gen = None if self.num_slices is None else self._generator(z.device)
        return F.sliced_ksd2(z, self.kernel, self.prior, self.num_slices, self.num_knots, generator=gen,
                             estimator=self.estimator, approx=self.approx, backend=self.backend)


class EppsPulley(Regularizer):
    """LeJEPA's SIGReg (:func:`kerjepa.functional.epps_pulley`), already at LeJEPA's scale."""

    def __init__(self, num_slices=1024, t_max=3.0, n_points=17, seed=0):
        super().__init__("kerjepa", seed)
        F.check_epps_pulley_options(num_slices, t_max, n_points)
        self.num_slices, self.t_max, self.n_points = num_slices, t_max, n_points

    _row_means_only = True

    def statistic(self, z):
        return F.epps_pulley(z, self.num_slices, self.t_max, self.n_points, generator=self._generator(z.device))

    def extra_repr(self):
        return f"num_slices={self.num_slices}, t_max={self.t_max}, n_points={self.n_points}"


KINDS = ("mmd", "ksd", "epps_pulley")


def _applicable(kind: str, kernel: str, prior: str, mode: str) -> set:
    """The factory options that act on a regularizer of this kind, kernel, prior and slicing."""
    if kind == "epps_pulley":
        return {"t_max", "n_points"}
    names = {"kernel", "prior", "estimator", "sigma", "scale"}
    names |= {"gamma"} if kernel == "gaussian" else {"alpha", "beta"}
    if prior == "student_t":
        names.add("nu")
    if mode == "finite":
        names.add("num_knots")
        if kind == "mmd":
            names.add("target_cf")
    else:
        names.add("backend")
    if mode == "analytic":
        names.add("approx")
    if kind == "mmd" and mode == "unsliced":
        names.add("prior_samples")
    return names


def regularizer(kind: str, *, kernel: str = "gaussian", prior: str = "gaussian",
                slices: int | str | None = None, estimator: str | None = None,
                gamma: float | str | None = None, alpha: float | str | None = None, beta: float = 0.5,
                sigma: float = 1.0, nu: float | None = None, num_knots: int = 21,
                scale: str = "kerjepa", approx: str | None = None, backend: str = "auto",
                prior_samples: int | None = None, target_cf: str = "marginal",
                t_max: float = 3.0, n_points: int = 17, seed: int = 0) -> Regularizer:
    """Build any regularizer from a short spec (for configs, command lines and widgets).

    Args:
        kind: ``"mmd"``, ``"ksd"`` or ``"epps_pulley"`` (LeJEPA's SIGReg).
        kernel: ``"gaussian"`` (uses ``gamma``) or ``"imq"`` (uses ``alpha``, ``beta``).
        prior: ``"gaussian"``, ``"laplace"`` (``sigma``) or ``"student_t"`` (``nu``, ``sigma``).
        slices: ``None`` unsliced, an int K for finite slicing, ``"analytic"`` for the
            infinite-slice limit (Theorems 7–9). ``epps_pulley`` uses K (default 1024).
        estimator: ``"u"``, ``"v"`` or ``None`` for the estimator's default (U unsliced, V sliced).
        scale: ``"kerjepa"`` (the discrepancy) or ``"lejepa"`` (times N·√(2π)).
        approx, backend, prior_samples, target_cf, num_knots, t_max, n_points: passed to the
            estimator (see :mod:`kerjepa.functional`).
        seed: base seed of the slice directions.

    Returns:
        A :class:`Regularizer`; ``reg(z)`` with ``z`` (N, D) or (V, N, D) gives a scalar.

    Raises:
        ValueError: unknown names (the message lists the valid ones), or an option set away
            from its default that does not apply to the chosen kind, kernel, prior and slicing.

    Example:
        >>> reg = regularizer("ksd", kernel="imq", prior="gaussian")
        >>> reg
        KSD(kernel=IMQ(alpha=None, beta=0.5), prior=Gaussian(sigma=1.0), estimator='u', scale='kerjepa')
    """
    _checks.choice(kind, "kind", KINDS)
    _checks.choice(kernel, "kernel", ("gaussian", "imq"))
    _checks.choice(prior, "prior", ("gaussian", "laplace", "student_t"))
    if slices is not None and slices != "analytic":
        if isinstance(slices, str):
            raise ValueError(f"slices must be None, a positive int or 'analytic', got {slices!r}")
        _checks.positive_int(slices, "slices")
    options = locals()
    given = {name: options[name] for name, default in _SPEC_DEFAULTS.items() if options[name] != default}
    mode = "unsliced" if slices is None else "analytic" if slices == "analytic" else "finite"
    applies = _applicable(kind, kernel, prior, mode)
    unused = sorted(set(given) - applies)
    if unused:
        raise ValueError(f"{', '.join(unused)} do(es) not apply to kind={kind!r}, kernel={kernel!r}, "
                         f"prior={prior!r}, slices={slices!r}; the options that do: {sorted(applies)}")
    if kind == "epps_pulley":
        if slices == "analytic":
            raise ValueError("epps_pulley is finitely sliced; for the infinite-slice limit use "
                             "regularizer('mmd', slices='analytic')")
        return EppsPulley(1024 if slices is None else slices, t_max, n_points, seed)
    kernel_params = {"gamma": gamma} if kernel == "gaussian" else {"alpha": alpha, "beta": beta}
    k = kernels.get(kernel, **kernel_params)
    prior_params = {"sigma": sigma} if prior != "student_t" else {"nu": nu, "sigma": sigma}
    if prior == "student_t" and nu is None:
        raise ValueError("prior='student_t' needs nu (degrees of freedom > 0)")
    q = priors.get(prior, **prior_params)
    if slices is None:
        est = estimator or "u"
        if kind == "mmd":
            return MMD(k, q, est, prior_samples=prior_samples, backend=backend, scale=scale, seed=seed)
        return KSD(k, q, est, backend=backend, scale=scale, seed=seed)
    num_slices = None if slices == "analytic" else slices
    est = estimator or "v"
    if kind == "mmd":
        return SlicedMMD(k, q, num_slices, num_knots, est, approx, target_cf, backend, scale, seed)
    return SlicedKSD(k, q, num_slices, num_knots, est, approx, backend, scale, seed)


#: The regularizer spec, i.e. the factory's arguments in order (a config's ``reg`` mapping uses these keys).
REGULARIZER_KEYS = tuple(inspect.signature(regularizer).parameters)
#: defaults of the factory's options (from its signature); an option set away from its default must apply
_SPEC_DEFAULTS = {name: p.default for name, p in inspect.signature(regularizer).parameters.items()
                  if name not in ("kind", "slices", "seed")}
