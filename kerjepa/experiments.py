"""Command line of the experiment runner: ``python -m kerjepa.experiments NAME [--dry-run] [--seeds ...]``.

The grids, the runner and the result tables live in :mod:`kerjepa.training.experiments`.
"""

import sys

from .training.experiments import main

if __name__ == "__main__":
    sys.exit(main())
