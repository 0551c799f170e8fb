"""``python -m segflow.prepare``: see :mod:`segflow.cli.prepare`."""

import sys

from segflow.cli.prepare import main

if __name__ == "__main__":
    sys.exit(main())
