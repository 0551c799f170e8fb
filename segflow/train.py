"""``python -m segflow.train``: see :mod:`segflow.cli.train`."""

import sys

from segflow.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
