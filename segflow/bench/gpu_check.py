"""``python -m segflow.bench.gpu_check``: see :mod:`segflow.cli.gpu_check`."""

import sys

from segflow.cli.gpu_check import main

if __name__ == "__main__":
    sys.exit(main())
