r"""Embedding health: is the projector's output still distributed like the prior, or collapsing?

At every evaluation the trainer calls :func:`embedding_health` on the validation images, each
seen through V augmented views (the training augmentation with a fixed seed, so successive
evaluations see the same views). For each view's (N, D) projector outputs it records

* the goodness-of-fit test of the run's regularizer against the run's prior
  (:func:`kerjepa.gof.gof_test`: the KSD wild bootstrap, or the parametric bootstrap for the MMDs
  and Epps–Pulley): the statistic and its p-value;
* the effective rank :math:`\exp H(p)`, :math:`p_i = \sigma_i/\sum_j\sigma_j` over the singular
  values of the centred embeddings (Roy & Vetterli 2007): D for isotropic embeddings, 1 when
  they lie on a line;
* the spread of the per-dimension variances: their minimum, maximum and mean (1 for every prior
  at the unit-variance scale; 0 everywhere when the embeddings collapse to a point).

:func:`collapse_message` turns a record into a clearly worded warning when the embeddings have
collapsed (towards a point: a mean per-dimension variance under 1 % of the prior's; or onto a
subspace of under a quarter of the dimensions) and the test rejects the prior; the trainer then
issues a :class:`CollapseWarning`. A freshly initialised projector, whose outputs are small, is
flagged too: its embeddings are as far from the prior as collapsed ones, and the warning stops
once the regularizer has spread them out.
"""
from __future__ import annotations

import math
import warnings

import torch

from .. import gof
from . import data as kdata

__all__ = ["CollapseWarning", "effective_rank", "variance_spread", "embedding_health", "collapse_message",
           "RANK_FRACTION", "POINT_VARIANCE"]

#: an effective rank below this fraction of D counts as dimensional collapse
RANK_FRACTION = 0.25
#: a mean per-dimension variance below this fraction of the prior's counts as collapse to a point
POINT_VARIANCE = 1e-2
#: seed of the monitor's validation views and bootstrap draws (fixed: every evaluation sees the same views)
_SEED = 0x9E41


class CollapseWarning(UserWarning):
    """The projector's outputs have collapsed (to a point or to a low-dimensional subspace)."""


def effective_rank(z: torch.Tensor) -> float:
    r"""Effective rank :math:`\exp(-\sum_i p_i\log p_i)`, :math:`p = \sigma/\|\sigma\|_1`, of centred ``z`` (N, D).

    Example:
        >>> import torch
        >>> round(effective_rank(torch.randn(4000, 8, generator=torch.Generator().manual_seed(0))), 1)
        8.0
        >>> round(effective_rank(torch.randn(100, 1) * torch.ones(1, 8)), 6)
        1.0
    """
    x = z.double() - z.double().mean(0)
    s = torch.linalg.svdvals(x)
    total = float(s.sum())
    if total <= 0.0:
        return 0.0
    p = s[s > s.max() * torch.finfo(s.dtype).eps * max(x.shape)] / total   # the numerical rank
    return math.exp(float(-(p * p.log()).sum()))


def variance_spread(z: torch.Tensor) -> dict:
    """Minimum, maximum and mean of the per-dimension variances of ``z`` (N, D)."""
    var = z.double().var(0)
    return {"var_min": float(var.min()), "var_max": float(var.max()), "var_mean": float(var.mean())}


def prior_variance(cfg, dim: int) -> float:
    """Per-dimension variance of the run's prior in dimension ``dim`` (``inf`` for a Student-t with nu <= 2)."""
    spec = cfg.reg
    if spec["kind"] == "epps_pulley":
        return 1.0
    sigma = float(spec.get("sigma", 1.0))
    prior = spec.get("prior", "gaussian")
    if prior == "laplace":
        return (dim + 1) * sigma ** 2
    if prior == "student_t":
        nu = float(spec["nu"])
        return nu * sigma ** 2 / (nu - 2) if nu > 2 else math.inf
    return sigma ** 2


def _test_options(cfg) -> tuple:
    """(kind, keyword options) of the run's regularizer, for :func:`kerjepa.gof.gof_test`."""
    spec = dict(cfg.reg)
    kind = spec.pop("kind")
    for key in ("scale", "seed"):
        spec.pop(key, None)
    return kind, spec


@torch.no_grad()
def projected_views(net, base, cfg, device, autocast, rows: int) -> torch.Tensor:
    """Projector outputs (V, N, D), float32 on CPU, of the first ``rows`` images of ``base`` in V views."""
    views = kdata.ViewDataset(base, cfg.replace(seed=_SEED, local_views=0))
    keys = [(i, 0) for i in range(min(rows, len(base)))]
    was_training = net.training
    net.eval()
    out = []
    for start in range(0, len(keys), cfg.eval_batch_size):
        images, _, _ = views.collate([views[k] for k in keys[start:start + cfg.eval_batch_size]])
        n, v = images.shape[:2]
        with autocast():
            z = net.projector(net.backbone(images.to(device).transpose(0, 1).flatten(0, 1)))
        out.append(z.float().view(v, n, -1).cpu())
    net.train(was_training)
    return torch.cat(out, 1)


def embedding_health(net, base, cfg, device, autocast, step: int) -> dict:
    """The health record of one evaluation (a JSON-lines row), issuing a :class:`CollapseWarning` if needed.

    Args:
        net: the model (``backbone`` and ``projector`` attributes).
        base: the validation dataset (images, labels), as :func:`kerjepa.training.data.build_datasets` gives.
        cfg: the run's :class:`~kerjepa.training.config.Config` (``reg``, ``views``,
            ``health_bootstrap`` replicates, ``health_rows`` images at most).
        device: where the model runs.
        autocast: a callable returning the context manager the model runs in (its precision).
        step: the training step, for the record.

    Returns:
        A dict with ``"step"``, ``"event": "health"``, ``"test"`` (the regularizer's kind), lists
        with one value per view for ``"statistic"``, ``"pvalue"``, ``"effective_rank"``,
        ``"var_min"``, ``"var_max"`` and ``"var_mean"``, and ``"dim"``, ``"rows"`` and
        ``"prior_var"`` (the prior's per-dimension variance).
    """
    z = projected_views(net, base, cfg, device, autocast, cfg.health_rows)
    kind, options = _test_options(cfg)
    gen = torch.Generator().manual_seed(_SEED + step)
    record = {"step": step, "event": "health", "test": kind, "rows": z.shape[1], "dim": z.shape[2],
              "prior_var": prior_variance(cfg, z.shape[2]),
              "statistic": [], "pvalue": [], "effective_rank": [], "var_min": [], "var_max": [], "var_mean": []}
    for zv in z.unbind(0):
        zv = zv.to(device)
        if not bool(torch.isfinite(zv).all()):
            raise FloatingPointError(f"step {step}: the validation embeddings contain non-finite values")
        res = gof.gof_test(kind, zv, num_bootstrap=cfg.health_bootstrap, generator=gen, **options)
        record["statistic"].append(res.statistic)
        record["pvalue"].append(res.pvalue)
        record["effective_rank"].append(effective_rank(zv))
        for key, value in variance_spread(zv).items():
            record[key].append(value)
    message = collapse_message(record)
    if message is not None:
        warnings.warn(message, CollapseWarning, stacklevel=2)
    return record


def collapse_message(record: dict, level: float = 0.05) -> str | None:
    """A warning for a health record whose embeddings have collapsed, else ``None``.

    Collapse: in some view the mean per-dimension variance is below :data:`POINT_VARIANCE` times
    the prior's (a point) or the effective rank is below :data:`RANK_FRACTION` of D (a subspace), and the
    test rejects the prior at ``level`` there.

    Example:
        >>> rec = {"step": 40, "test": "ksd", "dim": 32, "prior_var": 1.0, "pvalue": [0.005], "effective_rank": [1.6],
        ...        "var_min": [1e-9], "var_max": [1.2], "var_mean": [0.05]}
        >>> print(collapse_message(rec))  # doctest: +NORMALIZE_WHITESPACE
        step 40: the embeddings have COLLAPSED onto a low-dimensional subspace in 1 of 1 view(s):
        effective rank 1.6 of D = 32, per-dimension variance 1e-09 to 1.2 (the prior's is 1),
        and the ksd test rejects the prior (p = 0.005). The regularizer is not holding them at the
        prior: raise lam, or check that the regularizer is on.
    """
    dim, floor = record["dim"], POINT_VARIANCE * min(record["prior_var"], 1e300)
    bad = [v for v, p in enumerate(record["pvalue"])
           if p <= level and (record["var_mean"][v] < floor or record["effective_rank"][v] < RANK_FRACTION * dim)]
    if not bad:
        return None
    v = min(bad, key=lambda i: record["effective_rank"][i])
    kind = ("to a point (per-dimension variance under 1% of the prior's)" if record["var_mean"][v] < floor
            else "onto a low-dimensional subspace")
    return (f"step {record['step']}: the embeddings have COLLAPSED {kind} in {len(bad)} of "
            f"{len(record['pvalue'])} view(s): effective rank {record['effective_rank'][v]:.2g} of D = {dim}, "
            f"per-dimension variance {record['var_min'][v]:.2g} to {record['var_max'][v]:.2g} (the prior's is "
            f"{record['prior_var']:.2g}), and the {record['test']} test rejects the prior (p = {record['pvalue'][v]:.2g}). The "
            f"regularizer is not holding them at the prior: raise lam, or check that the regularizer is on.")
