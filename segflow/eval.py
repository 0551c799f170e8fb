"""``python -m segflow.eval``: see :mod:`segflow.cli.eval`."""

import sys

from segflow.cli.eval import main

if __name__ == "__main__":
    sys.exit(main())
