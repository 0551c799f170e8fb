"""``python -m segflow.predict``: see :mod:`segflow.cli.predict`."""

import sys

from segflow.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
