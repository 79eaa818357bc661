"""The trainer floor of kerjepa: configs and presets, data, the training loop (and the experiment runner).

The estimator library (``kerjepa.kernels``, ``priors``, ``functional``, ``modules``, ...) never imports
this package; the trainer imports the library. Command line: ``python -m kerjepa.train``.
"""

from . import config, data
from .config import Config, ConfigError, from_args, get_preset, preset_names, replace
from .loop import TrainingError, train

__all__ = ["config", "data", "Config", "ConfigError", "TrainingError", "from_args", "get_preset",
           "preset_names", "replace", "train"]
