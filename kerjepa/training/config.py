"""Training configuration: one frozen dataclass, named presets, YAML and ``--key=value`` overrides.

A run is described by a :class:`Config`. It starts from a named preset (:data:`PRESETS`), is
overridden by an optional YAML file, then by ``--key=value`` flags; every value is type-checked
against the field's annotation, and the whole config is validated (``Config.__post_init__``).
The resolved config is a plain ``dict`` of builtins (:meth:`Config.to_dict`), which is what the
trainer writes to ``config.yaml`` in the run folder and into every checkpoint.

Presets:

* ``table1/<row>``: the 11 rows of Table 1 of the paper (ImageNette, ViT-S/8 at 128 px,
  800 epochs, AdamW 5e-4, wd 0.05, batch 256, 4 views, projector dim 128; finite slicing
  uses 1024 slices and 21 knots).
* ``fig2/mmd-d{16,128,1024}-s{16,128,1024,inf}-e{100,300,800}``: the Figure 2 grid (LeJEPA's
  sliced Epps-Pulley with K slices, ``inf`` = analytically sliced MMD), and the same grid for
  KSD as ``fig3/ksd-...`` (Figure 3, App. I).
* ``variants/mmd-sliced-gaussian-laplace-marginal``: the sliced-MMD Laplace row against the exact
  1-D marginal of the multivariate Laplace prior instead of Figure 1's target.
* ``lejepa/minimal``: LeJEPA's MINIMAL ImageNette recipe exactly (its loss weighting and alignment,
  1-epoch warm-up then cosine to an absolute lr of 1e-3, weight decay on every parameter), the
  pipeline check against its published 90.7 %.
* ``digits-cpu``: scikit-learn digits and a micro-ViT; a few minutes on a laptop CPU.
* ``smoke``: a few steps on ImageNette with a tiny ViT (used by the tests).

The paper does not report lambda or the kernel bandwidths. The values here are ours, chosen by two
documented rules (the training chapter shows the evidence):

* **Scale convention.** Every prior is used at unit per-coordinate variance
  (:func:`kerjepa.priors.unit_variance_sigma`: Gaussian sigma = 1, Laplace sigma = 1/sqrt(D+1),
  Student-t sigma = sqrt((nu-2)/nu)), so one bandwidth (1/(2D) unsliced, 1/2 on projections)
  suits every prior and a collapsed batch is penalised against every prior alike. The sliced-MMD
  Laplace row uses the target of the paper's Figure 1 code, the 1-D Laplace CF 1/(1+sigma^2 t^2)
  (``target_cf="paper"``), at unit variance (sigma = 1/sqrt(2), :data:`PAPER_LAPLACE_SIGMA`); the
  exact marginal of the multivariate Laplace prior is the preset
  ``variants/mmd-sliced-gaussian-laplace-marginal``.
* **Calibrated lambda.** :data:`REFERENCE_LAMBDA` is LeJEPA's recommended 0.02 transferred to the
  paper's loss (:func:`kerjepa.calibration.lambda_from_lejepa`, V = 4, D = 128); it is the lambda of
  the ``table1/lejepa`` row. Every other row's lambda (:data:`CALIBRATED_LAMBDA`) is
  :func:`kerjepa.calibration.calibrate_lambda`: the weight at which the row's regularizer pushes
  the embeddings as hard (mean per-row gradient norm, geometric mean over Gaussian and collapsed
  batches at spreads 0.25-2) as SIGReg does at the reference lambda, in the row's own D.
  Regenerate the table with ``python -m kerjepa.training.calibrate`` (a few minutes on a CPU).
  Equal gradients are a starting point, not the optimum: sweep ``--lam`` over the calibrated value
  times :data:`LAMBDA_SWEEP` = (1/4, 1/2, 1, 2, 4), as the paper grid-searched lambda.

The Table 1 LeJEPA row is SIGReg with 1024 slices and 21 points (LeJEPA's trapezoid rule on
[0, 3]). Bandwidths are the library defaults.
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field

from ..calibration import LEJEPA_LAMBDA, lambda_from_lejepa
from ..modules import REGULARIZER_KEYS
from ..priors import unit_variance_sigma

__all__ = ["Config", "ConfigError", "PRESETS", "REFERENCE_LAMBDA", "CALIBRATED_LAMBDA", "LAMBDA_SWEEP",
           "PAPER_LAPLACE_SIGMA", "calibration_rows", "get_preset", "parse_overrides", "load_yaml", "from_args",
           "preset_names"]

#: LeJEPA's recommended lambda (0.02) transferred to the paper's loss for V = 4 views and D = 128
#: (:func:`kerjepa.calibration.lambda_from_lejepa`): the ``table1/lejepa`` row's lambda and the reference
#: that :data:`CALIBRATED_LAMBDA` matches.
REFERENCE_LAMBDA = lambda_from_lejepa(LEJEPA_LAMBDA, views=4, dim=128)


class ConfigError(ValueError):
    """A configuration that cannot run; its message says which key and what is allowed."""


_CHOICES = {
    "dataset": ("imagenette", "imagefolder", "digits", "digits-holdout"),
    "imagenette_size": ("full", "320px", "160px"),
    "augment": ("lejepa", "digits", "none"),
    "reg_views": ("per_view", "pooled"),
    "weighting": ("kerjepa", "lejepa"),
    "alignment": ("pairs", "center_mse"),
    "device": ("auto", "cpu", "cuda"),
    "precision": ("auto", "bf16", "fp32"),
}
_REG_KEYS = REGULARIZER_KEYS  # the arguments of kerjepa.regularizer, read from its signature


@dataclass(frozen=True)
class Config:
    """Everything a training run depends on. Defaults are the paper's ImageNette recipe (§5).

    Field groups: run, data and views, model, loss, optimisation, system, evaluation, output.
    ``batch_size`` is the global batch (all ranks); it must be divisible by the world size.
    """

    # run
    preset: str = "default"
    seed: int = 0
    epochs: int = 800
    max_steps: typing.Optional[int] = None  # stop after this many steps (the schedule still spans `epochs`)

    # data and views
    dataset: str = "imagenette"       # imagenette | imagefolder | digits | digits-holdout (tuning split)
    data_root: str = "data/cache"     # imagenette: folder holding imagenette2-160/; imagefolder: folder with train/ and val/
    imagenette_size: str = "160px"    # full | 320px | 160px
    download: bool = False            # fetch ImageNette (needs internet)
    check_images: bool = True         # decode every train and val image once before training starts
    img_size: int = 128
    views: int = 4                    # global views per image, all the same augmentation (LeJEPA's example)
    local_views: int = 0              # optional extra small crops (multi-crop)
    local_img_size: int = 64
    crop_scale_min: float = 0.08
    local_crop_scale: typing.Tuple[float, float] = (0.05, 0.3)
    augment: str = "lejepa"           # lejepa | digits | none
    batch_size: int = 256
    num_workers: int = 8
    eval_batch_size: int = 256

    # model
    model: str = "vit_small_patch8_224"  # any timm model name, or "micro_vit"
    drop_path: float = 0.1
    emb_dim: int = 512                # backbone head output (LeJEPA's example: num_classes=512); 0 = pooled features
    proj_hidden: int = 2048
    proj_dim: int = 128
    micro_patch: int = 4
    micro_width: int = 96
    micro_depth: int = 4
    micro_heads: int = 4

    # loss
    lam: float = REFERENCE_LAMBDA
    reg: dict = field(default_factory=lambda: {"kind": "epps_pulley", "slices": 1024, "n_points": 17})
    reg_views: str = "per_view"       # per_view (LeJEPA's way, default) | pooled (all V*N rows at once)
    weighting: str = "kerjepa"        # kerjepa: align + lam*reg | lejepa: (1-lam)*align + lam*reg
    alignment: str = "pairs"          # pairs: eq. 16 all pairs of views | center_mse: LeJEPA's MSE to the view mean

    # optimisation
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    warmup_start_factor: float = 0.01
    min_lr_ratio: float = 1e-3        # final lr = min_lr_ratio * each group's peak lr (relative)
    min_lr: typing.Optional[float] = None  # absolute final lr of every group (LeJEPA MINIMAL's eta_min); replaces min_lr_ratio
    weight_decay_all: bool = False    # decay every encoder/projector parameter (MINIMAL); False: not biases, norms, tokens
    grad_clip: float = 0.0            # max global grad norm; 0 = off
    probe_lr: float = 1e-3
    probe_wd: float = 1e-7

    # system
    device: str = "auto"              # auto | cpu | cuda
    precision: str = "auto"           # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    compile: bool = False

    # evaluation
    eval_every: int = 1               # epochs between online-probe evaluations; 0 = only at the end
    eval_init: bool = True            # kNN + linear probe of the random-init encoder before training
    final_eval: bool = True           # frozen-feature kNN + linear probe at the end
    knn_k: int = 20
    knn_temperature: float = 0.07
    probe_steps: int = 300            # full-batch steps of the diagnostic linear probe (standardised head output)
    lejepa_probe_epochs: int = 100    # LeJEPA's linear-probe protocol (the reported number); 0 = off
    lejepa_probe_lr: float = 1e-3     # its AdamW peak lr (1-epoch warm-up, cosine to lr/1000)
    lejepa_probe_wd: float = 1e-6     # its AdamW weight decay
    lejepa_probe_batch_size: int = 256
    health_bootstrap: int = 200       # embedding-health monitor at each evaluation: bootstrap replicates; 0 = off
    health_rows: int = 1024           # validation images (in `views` views) the monitor tests, at most

    # output
    ckpt_every: int = 1000            # steps between checkpoints; 0 = only at the end
    log_every: int = 10
    progress: bool = True             # tqdm bars
    tensorboard: bool = True          # used only if the tensorboard package is installed

    def __post_init__(self):
        for name, value in self.to_dict().items():
            _check_type(name, value, _HINTS[name])
        for name in _FLOAT_FIELDS:  # training runs in float32: an infinity, a NaN or 1e39 cannot take part
            value = getattr(self, name)
            values = value if isinstance(value, tuple) else () if value is None else (value,)  # None: an unset option
            if not all(math.isfinite(v) and abs(v) <= _FLOAT32_MAX for v in values):
                raise ConfigError(f"{name} must be a finite number (within float32 range), got {getattr(self, name)!r}")
        for name, options in _CHOICES.items():
            if getattr(self, name) not in options:
                raise ConfigError(f"{name} must be one of {list(options)}, got {getattr(self, name)!r}")
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise ConfigError(f"lam (the regularizer weight lambda) must be a finite number >= 0, got {self.lam!r}")
        if self.weighting == "lejepa" and self.lam > 1:
            raise ConfigError(f"weighting='lejepa' uses (1-lam)*align + lam*reg, so lam must be in [0, 1], got {self.lam}")
        for name in ("epochs", "img_size", "views", "batch_size", "eval_batch_size", "proj_dim", "proj_hidden",
                     "knn_k", "log_every", "local_img_size", "micro_patch", "micro_width", "micro_depth",
                     "micro_heads", "lejepa_probe_batch_size", "health_rows"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ConfigError(f"batch_size must be >= 2 (the regularizer compares the embeddings of a batch, and "
                              f"the projector's BatchNorm needs two rows), got {self.batch_size}")
        if self.model == "micro_vit" and self.micro_width % self.micro_heads:
            raise ConfigError(f"micro_width must be divisible by micro_heads, got micro_width={self.micro_width}, "
                              f"micro_heads={self.micro_heads}")
        if self.views + self.local_views < 2:
            raise ConfigError(f"the alignment term needs at least 2 views in all, got views={self.views}, "
                              f"local_views={self.local_views}")
        for name in ("local_views", "num_workers", "emb_dim", "eval_every", "ckpt_every", "probe_steps",
                     "lejepa_probe_epochs", "health_bootstrap"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1 or None, got {self.max_steps}")
        for name in ("lr", "probe_lr", "knn_temperature", "lejepa_probe_lr"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "probe_wd", "grad_clip", "warmup_epochs", "drop_path", "lejepa_probe_wd"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not (0 < self.warmup_start_factor <= 1):
            raise ConfigError(f"warmup_start_factor must be in (0, 1], got {self.warmup_start_factor}")
        if not (0 <= self.min_lr_ratio <= 1):
            raise ConfigError(f"min_lr_ratio must be in [0, 1] (relative to the peak lr), got {self.min_lr_ratio}")
        if self.min_lr is not None and not (math.isfinite(self.min_lr) and 0 <= self.min_lr <= min(self.lr, self.probe_lr)):
            raise ConfigError(f"min_lr (an absolute final lr for every parameter group) must be in [0, min(lr, probe_lr)] "
                              f"= [0, {min(self.lr, self.probe_lr)}] so that no group's lr rises, got {self.min_lr}; "
                              f"set min_lr=null to use the relative min_lr_ratio")
        if not (0 < self.crop_scale_min <= 1):
            raise ConfigError(f"crop_scale_min must be in (0, 1], got {self.crop_scale_min}")
        lo, hi = self.local_crop_scale
        if not (0 < lo <= hi <= 1):
            raise ConfigError(f"local_crop_scale must satisfy 0 < min <= max <= 1, got {self.local_crop_scale}")
        if not self.reg or "kind" not in self.reg:
            raise ConfigError("reg must be a mapping with at least a 'kind' key, e.g. {'kind': 'mmd'}")
        unknown = sorted(set(self.reg) - set(_REG_KEYS))
        if unknown:
            raise ConfigError(f"reg has unknown key(s) {unknown}; valid keys are {list(_REG_KEYS)}")

    def to_dict(self) -> dict:
        """The config as a dict of builtins (lists for tuples), safe for YAML, JSON and weights_only loading."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, dict):
                value = dict(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        """Build from a (possibly partial) dict, type-checking every key."""
        return replace(cls(), values)

    def replace(self, **changes) -> "Config":
        """A copy with some fields changed (type-checked and validated)."""
        return replace(self, changes)


_HINTS = typing.get_type_hints(Config)
FIELDS = tuple(f.name for f in dataclasses.fields(Config))
_FLOAT_FIELDS = tuple(name for name, hint in _HINTS.items() if hint is float or float in typing.get_args(hint))
_FLOAT32_MAX = 3.4028234663852886e38


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _check_type(name, value, hint):
    """Raise ConfigError unless `value` matches the annotation `hint` (ints are accepted for floats)."""
    origin = typing.get_origin(hint)
    if origin is typing.Union:
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return
        hint = next(a for a in args if a is not type(None))
        origin = typing.get_origin(hint)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (tuple, list)) or len(value) != len(args):
            raise ConfigError(f"{name} must be a list of {len(args)} numbers, got {value!r}")
        for i, (v, a) in enumerate(zip(value, args)):
            _check_type(f"{name}[{i}]", v, a)
        return
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
        dict: isinstance(value, dict),
    }[hint]
    if not ok:
        raise ConfigError(f"{name} must be of type {_type_name(hint)}, got {type(value).__name__} {value!r}")


def _coerce(name, value, hint):
    """Bring a YAML/JSON-parsed value to the field's type (int -> float, list -> tuple), after checking it.

    YAML reads ``1e-3`` (no dot) as a string, so a string that parses as a number is accepted for a float.
    """
    base = hint
    if typing.get_origin(hint) is typing.Union:
        base = next(a for a in typing.get_args(hint) if a is not type(None))
    if base is float and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    _check_type(name, value, hint)
    if value is None:
        return None
    if typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if hint is float:
        return float(value)
    if typing.get_origin(hint) is tuple:
        return tuple(float(v) for v in value)
    if hint is dict:
        return dict(value)
    return value


def replace(cfg: Config, changes: dict) -> Config:
    """Apply a dict of changes to `cfg`. Keys ``reg.<key>`` update one entry of the regularizer spec."""
    changes = dict(changes)
    reg = dict(cfg.reg)
    reg_changed = False
    if "reg" in changes:
        if not isinstance(changes["reg"], dict):
            raise ConfigError(f"reg must be a mapping of regularizer arguments, got {changes['reg']!r}")
        reg = dict(changes.pop("reg"))
        reg_changed = True
    for key in [k for k in changes if k.startswith("reg.")]:
        sub = key[4:]
        if sub not in _REG_KEYS:
            raise ConfigError(f"unknown regularizer key {sub!r} in {key!r}; valid keys are {list(_REG_KEYS)}")
        reg[sub] = changes.pop(key)
        reg_changed = True
    unknown = sorted(set(changes) - set(FIELDS))
    if unknown:
        import difflib
        hints = [f"{k!r} (did you mean {difflib.get_close_matches(k, FIELDS, 1)[0]!r}?)"
                 if difflib.get_close_matches(k, FIELDS, 1) else repr(k) for k in unknown]
        raise ConfigError(f"unknown config key(s): {', '.join(hints)}; run with --help-config to list them")
    values = {k: _coerce(k, v, _HINTS[k]) for k, v in changes.items()}
    if reg_changed:
        values["reg"] = reg
    return dataclasses.replace(cfg, **values)


# ---------------------------------------------------------------------------------------------
# Presets

#: sigma of Figure 1's 1-D Laplace target 1/(1+sigma^2 t^2) at unit variance (its variance is 2 sigma^2).
PAPER_LAPLACE_SIGMA = 1 / math.sqrt(2)
#: Multiples of a calibrated lambda to sweep (the paper grid-searched lambda and reports none).
LAMBDA_SWEEP = (0.25, 0.5, 1.0, 2.0, 4.0)
#: Former name of :data:`REFERENCE_LAMBDA`.
MMD_LAMBDA = REFERENCE_LAMBDA

#: lambda of every regularizer row, from ``kerjepa.calibration.calibrate_lambda(reg, dim=D)`` (defaults:
#: SIGReg with 1024 slices and 21 points at lambda_from_lejepa(0.02, views=4, dim=D), on
#: ``reference_batches(D)``). Keys are :func:`calibration_rows`'s. Generated by
#: ``python -m kerjepa.training.calibrate``; tests/test_recipe.py recomputes some of them.
CALIBRATED_LAMBDA = {
    "table1/lejepa": 6.96599,
    "table1/mmd-unsliced-gaussian-gaussian": 6.69629,
    "table1/mmd-analytic-gaussian-gaussian": 8.31057,
    "table1/mmd-sliced-gaussian-laplace": 6.67281,
    "table1/ksd-unsliced-gaussian-gaussian": 118.308,
    "table1/ksd-unsliced-gaussian-laplace": 56.6316,
    "table1/ksd-unsliced-imq-gaussian": 75.6518,
    "table1/ksd-unsliced-imq-laplace": 36.351,
    "table1/ksd-analytic-gaussian-gaussian": 1076.08,
    "table1/ksd-sliced-gaussian-gaussian": 922.541,
    "table1/ksd-sliced-gaussian-laplace": 1388.75,
    "variants/mmd-sliced-gaussian-laplace-marginal": 6.78615,
    "fig2/mmd-d16-s16": 0.453417,
    "fig2/mmd-d16-s128": 0.718608,
    "fig2/mmd-d16-s1024": 0.870748,
    "fig2/mmd-d16-sinf": 0.902594,
    "fig2/mmd-d128-s16": 1.88811,
    "fig2/mmd-d128-s128": 4.26317,
    "fig2/mmd-d128-s1024": 6.96599,
    "fig2/mmd-d128-sinf": 8.31057,
    "fig2/mmd-d1024-s16": 8.89644,
    "fig2/mmd-d1024-s128": 23.712,
    "fig2/mmd-d1024-s1024": 55.7279,
    "fig2/mmd-d1024-sinf": 103.84,
    "fig3/ksd-d16-s16": 53.7747,
    "fig3/ksd-d16-s128": 88.443,
    "fig3/ksd-d16-s1024": 112.729,
    "fig3/ksd-d16-sinf": 115.067,
    "fig3/ksd-d128-s16": 229.624,
    "fig3/ksd-d128-s128": 529.783,
    "fig3/ksd-d128-s1024": 922.541,
    "fig3/ksd-d128-sinf": 1076.08,
    "fig3/ksd-d1024-s16": 1070.97,
    "fig3/ksd-d1024-s128": 2887.03,
    "fig3/ksd-d1024-s1024": 6985.84,
    "fig3/ksd-d1024-sinf": 14412,
}


def table1_regularizers(dim: int = 128) -> dict:
    """The regularizer spec of each Table 1 row (and of the marginal-target variant), priors at unit variance."""
    laplace = {"prior": "laplace", "sigma": unit_variance_sigma("laplace", dim)}
    fin = {"slices": 1024, "num_knots": 21}
    return {
        "table1/lejepa": {"kind": "epps_pulley", "slices": 1024, "n_points": 21},
        "table1/mmd-unsliced-gaussian-gaussian": {"kind": "mmd", "kernel": "gaussian", "prior": "gaussian",
                                                  "scale": "lejepa"},
        "table1/mmd-analytic-gaussian-gaussian": {"kind": "mmd", "kernel": "gaussian", "prior": "gaussian",
                                                  "slices": "analytic", "scale": "lejepa"},
        "table1/mmd-sliced-gaussian-laplace": {"kind": "mmd", "kernel": "gaussian", "prior": "laplace",
                                               "sigma": PAPER_LAPLACE_SIGMA, "target_cf": "paper", **fin,
                                               "scale": "lejepa"},
        "table1/ksd-unsliced-gaussian-gaussian": {"kind": "ksd", "kernel": "gaussian", "prior": "gaussian"},
        "table1/ksd-unsliced-gaussian-laplace": {"kind": "ksd", "kernel": "gaussian", **laplace},
        "table1/ksd-unsliced-imq-gaussian": {"kind": "ksd", "kernel": "imq", "prior": "gaussian"},
        "table1/ksd-unsliced-imq-laplace": {"kind": "ksd", "kernel": "imq", **laplace},
        "table1/ksd-analytic-gaussian-gaussian": {"kind": "ksd", "kernel": "gaussian", "prior": "gaussian",
                                                  "slices": "analytic"},
        "table1/ksd-sliced-gaussian-gaussian": {"kind": "ksd", "kernel": "gaussian", "prior": "gaussian", **fin},
        "table1/ksd-sliced-gaussian-laplace": {"kind": "ksd", "kernel": "gaussian", **laplace, **fin},
        "variants/mmd-sliced-gaussian-laplace-marginal": {"kind": "mmd", "kernel": "gaussian", **laplace, **fin,
                                                          "scale": "lejepa"},
    }


def _grid_regularizer(kind: str, slices) -> dict:
    if slices == "inf":
        return {"kind": kind, "slices": "analytic", **({"scale": "lejepa"} if kind == "mmd" else {})}
    if kind == "mmd":
        return {"kind": "epps_pulley", "slices": slices, "n_points": 21}
    return {"kind": "ksd", "slices": slices, "num_knots": 21}


def calibration_rows() -> dict:
    """Every regularizer a preset trains with, as ``{key: (reg spec, D)}``; the keys of :data:`CALIBRATED_LAMBDA`.

    Table 1 rows by preset name; the Figure 2/3 grids as ``fig2/mmd-d{D}-s{K}`` (the epochs do not
    change lambda).
    """
    rows = {name: (reg, 128) for name, reg in table1_regularizers(128).items()}
    for kind, fig in (("mmd", "fig2"), ("ksd", "fig3")):
        for dim in (16, 128, 1024):
            for slices in (16, 128, 1024, "inf"):
                rows[f"{fig}/{kind}-d{dim}-s{slices}"] = (_grid_regularizer(kind, slices), dim)
    return rows


def _table1() -> dict:
    paper = Config(preset="table1")
    return {name: paper.replace(preset=name, reg=reg, lam=CALIBRATED_LAMBDA[name])
            for name, reg in table1_regularizers(128).items()}


def _fig_grid(kind: str, fig: str) -> dict:
    out = {}
    for dim in (16, 128, 1024):
        for slices in (16, 128, 1024, "inf"):
            for epochs in (100, 300, 800):
                name = f"{fig}/{kind}-d{dim}-s{slices}-e{epochs}"
                out[name] = Config(preset=name, proj_dim=dim, epochs=epochs, reg=_grid_regularizer(kind, slices),
                                   lam=CALIBRATED_LAMBDA[f"{fig}/{kind}-d{dim}-s{slices}"])
    return out


def _others() -> dict:
    return {
        # LeJEPA's MINIMAL.md recipe exactly: its loss, lr 2e-3 with a 1-epoch linear warm-up from 1 % then
        # cosine to the absolute eta_min = 1e-3 (so the probe, at 1e-3, stays there), wd 0.05 on every parameter.
        "lejepa/minimal": Config(preset="lejepa/minimal", lam=LEJEPA_LAMBDA, weighting="lejepa",
                                 alignment="center_mse", proj_dim=16, lr=2e-3, weight_decay=0.05, warmup_epochs=1.0,
                                 warmup_start_factor=0.01, min_lr=1e-3, weight_decay_all=True, probe_lr=1e-3,
                                 probe_wd=1e-7, reg={"kind": "epps_pulley", "slices": 256, "n_points": 17}),
        "digits-cpu": Config(
            preset="digits-cpu", dataset="digits", augment="digits", img_size=16, views=4, batch_size=256,
            num_workers=0, eval_batch_size=512, epochs=80, model="micro_vit", drop_path=0.0, emb_dim=0,
            micro_patch=4, micro_width=64, micro_depth=3, micro_heads=4, proj_hidden=256, proj_dim=32,
            lam=2.0, reg={"kind": "mmd", "kernel": "gaussian", "prior": "gaussian", "scale": "lejepa"}, lr=2e-3,
            weight_decay=0.05, warmup_epochs=5.0, ckpt_every=100, log_every=5, eval_every=5, device="cpu"),
        "smoke": Config(
            preset="smoke", dataset="imagenette", imagenette_size="160px", img_size=32, views=2, batch_size=4,
            num_workers=0, eval_batch_size=8, epochs=1, max_steps=2, model="micro_vit", micro_patch=8,
            micro_width=32, micro_depth=2, micro_heads=2, emb_dim=32, proj_hidden=64, proj_dim=16, lam=1.0,
            reg={"kind": "mmd"}, ckpt_every=0, log_every=1, eval_every=0, eval_init=False, probe_steps=10,
            knn_k=3, progress=False, tensorboard=False, device="cpu"),
    }


#: Every named preset by name — ``default``, the eleven ``table1/*`` rows, the ``fig2/*`` (MMD) and
#: ``fig3/*`` (KSD) grids of the paper's Figures 2–3, ``lejepa/minimal``, ``digits-cpu`` and ``smoke``.
PRESETS: dict = {"default": Config(), **_table1(), **_fig_grid("mmd", "fig2"), **_fig_grid("ksd", "fig3"),
                 **_others()}


def preset_names() -> list:
    """All preset names, sorted."""
    return sorted(PRESETS)


def get_preset(name: str) -> Config:
    """The named preset. Raises ConfigError listing the valid names (grouped) when unknown."""
    if name not in PRESETS:
        import difflib
        close = difflib.get_close_matches(name, PRESETS, 3)
        groups = sorted({n.split("/")[0] + ("/..." if "/" in n else "") for n in PRESETS})
        msg = f"unknown preset {name!r}"
        if close:
            msg += f"; did you mean {', '.join(map(repr, close))}?"
        raise ConfigError(f"{msg} Presets: {', '.join(groups)} (run with --list-presets for all names)")
    return PRESETS[name]


# ---------------------------------------------------------------------------------------------
# Parsing

_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def _numbers(value):
    """YAML 1.1 reads ``1e-3`` (no dot) as a string: turn such strings, also inside lists and mappings, into floats."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    return value


def _parse_value(text: str):
    """A command-line value parsed as YAML, so 1e-3, true, null/none, [0.1, 1] and {kind: mmd} work.

    Example:
        >>> _parse_value("1e-3"), _parse_value("{kind: mmd, gamma: 2e-2}"), _parse_value("none")
        (0.001, {'kind': 'mmd', 'gamma': 0.02}, None)
    """
    import yaml
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and value.lower() == "none":
        return None
    return _numbers(value)


def parse_overrides(items) -> dict:
    """Turn ``["--lr=1e-3", "--reg.kind=ksd"]`` (or without dashes) into a dict of parsed values."""
    out = {}
    for item in items:
        text = item[2:] if item.startswith("--") else item
        if "=" not in text:
            raise ConfigError(f"override {item!r} must look like --key=value")
        key, value = text.split("=", 1)
        key = key.strip().replace("-", "_")
        if key == "lambda":
            key = "lam"
        out[key] = _parse_value(value)
    return out


def load_yaml(path) -> dict:
    """Read a YAML mapping of overrides. Raises ConfigError on a missing file or a non-mapping."""
    import yaml
    try:
        with open(path) as fh:
            values = yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of key: value, got {type(values).__name__}")
    if "lambda" in values:
        values["lam"] = values.pop("lambda")
    return _numbers(values)


def from_args(preset: str = "default", config_file=None, overrides=()) -> Config:
    """preset -> YAML file -> ``--key=value`` overrides, each step type-checked.

    Example:
        >>> cfg = from_args("table1/ksd-unsliced-imq-gaussian", None, ["--lam=150", "--reg.beta=0.25"])
        >>> cfg.lam, cfg.reg
        (150.0, {'kind': 'ksd', 'kernel': 'imq', 'prior': 'gaussian', 'beta': 0.25})
    """
    cfg = get_preset(preset)
    if config_file:
        cfg = replace(cfg, load_yaml(config_file))
    if overrides:
        cfg = replace(cfg, parse_overrides(overrides))
    return cfg


def dumps(cfg: Config) -> str:
    """The resolved config as YAML text (keys in field order)."""
    import yaml
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)

