"""``python -m segflow.compare``: see :mod:`segflow.cli.compare`."""

from segflow.cli.compare import main

if __name__ == "__main__":
    raise SystemExit(main())
