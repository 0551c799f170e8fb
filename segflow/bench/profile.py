"""``python -m segflow.bench.profile``: see :mod:`segflow.cli.profile`."""

import sys

from segflow.cli.profile import main

if __name__ == "__main__":
    sys.exit(main())
