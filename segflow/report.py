"""``python -m segflow.report``: many runs → one comparison table (CSV + Markdown) and plots.

Examples:
    python -m segflow.report outputs/multirun/arch/2026-01-01_12-00-00        # a sweep
    python -m segflow.report outputs/runs/unet_xca/<t1> outputs/runs/flow_xca/<t2> --out cmp/
    make report RUNS="outputs/multirun/arch/<time>"

See :mod:`segflow.reports.tables` for what is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segflow.infra.errors import command
from segflow.reports.tables import write_report


@command
def main(argv: list[str] | None = None) -> int:
    """Entry point (``segflow-report``); returns the exit status (2: a user error)."""
    parser = argparse.ArgumentParser(prog="python -m segflow.report",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", help="run folders or folders holding runs (a multirun sweep)")
    parser.add_argument("--out", type=Path, default=None, help="output folder")
    parser.add_argument("--images", nargs="*", default=None,
                        help="test images of the qualitative panel (default: best, median, worst)")
    parser.add_argument("--device", default="cpu", help="where the panel's predictions run")
    parser.add_argument("--no-pictures", action="store_true",
                        help="tables and metric plots only (no model is loaded)")
    args = parser.parse_args(argv)
    write_report(args.paths, args.out, not args.no_pictures, args.images, args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
