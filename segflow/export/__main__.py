"""``python -m segflow.export``: see :mod:`segflow.cli.export`."""

from segflow.cli.export import main

if __name__ == "__main__":
    main()
