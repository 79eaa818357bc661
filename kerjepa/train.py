"""Command line of the trainer: ``python -m kerjepa.train --preset NAME --out RUN_DIR [--resume]``.

The trainer itself lives in :mod:`kerjepa.training` (``kerjepa.training.train(cfg, out)`` from Python).
"""

import sys

from .training.loop import main

if __name__ == "__main__":
    sys.exit(main())
