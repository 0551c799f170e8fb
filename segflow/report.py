"""``python -m segflow.report``: see :mod:`segflow.cli.report`."""

import sys

from segflow.cli.report import main

if __name__ == "__main__":
    sys.exit(main())
