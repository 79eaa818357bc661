"""kerjepa: kernel discrepancy regularizers for JEPA-style self-supervised learning.

>>> import kerjepa
>>> reg = kerjepa.regularizer("mmd", kernel="gaussian", prior="gaussian")
"""
from . import calibration, functional, kernels, priors, slicing
from .alignment import alignment_loss
from .modules import EppsPulley, KSD, MMD, Regularizer, SlicedKSD, SlicedMMD, regularizer
from . import gof  # after .modules, which it builds on

__version__ = "0.1.0"

__all__ = ["calibration", "functional", "kernels", "priors", "slicing", "regularizer", "Regularizer",
           "MMD", "KSD", "SlicedMMD", "SlicedKSD", "EppsPulley", "alignment_loss", "__version__"]
