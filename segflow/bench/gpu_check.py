"""``python -m segflow.bench.gpu_check`` (``make gpu-check``): the prepared GPU check.

Examples:
    python -m segflow.bench.gpu_check                     # every step (about 10 minutes)
    python -m segflow.bench.gpu_check --only ddp,flow     # a subset
    python -m segflow.bench.gpu_check --only drive_csnet_gpu --drive-minutes 6   # time to F1
    python -m segflow.bench.gpu_check --dry-run           # compose every step's config only

See :mod:`segflow.bench.check_steps` for the steps and what is written.
"""

from __future__ import annotations

import argparse
import sys

from segflow.bench import check_steps
from segflow.infra.errors import command


@command
def main(argv: list[str] | None = None) -> int:
    """Entry point (``segflow-gpu-check``); returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m segflow.bench.gpu_check",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="output folder (default <output_root>/gpu_check/<time>)")
    p.add_argument("--dry-run", action="store_true", help="compose every step's config only")
    steps = check_steps.default_steps()
    p.add_argument("--only", help="comma-separated step names (" + ",".join(s.name for s in steps)
                   + ")")
    p.add_argument("--drive-minutes", type=float,
                   help="training minutes of each DRIVE step (default: a short fixed schedule)")
    args = p.parse_args(argv)
    if args.drive_minutes is not None:
        if args.drive_minutes <= 0:
            p.error("--drive-minutes must be > 0")
        check_steps.drive_budget(steps, args.drive_minutes)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {s.name for s in steps}
        if unknown:
            p.error(f"--only: unknown step(s) {sorted(unknown)}")
        steps = [s for s in steps if s.name in wanted]
    return check_steps.run_check(steps, args.out, args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
