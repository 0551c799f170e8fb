"""``python -m segflow.bench``: see :mod:`segflow.cli.bench`."""

import sys

from segflow.cli.bench import main

if __name__ == "__main__":
    sys.exit(main())
