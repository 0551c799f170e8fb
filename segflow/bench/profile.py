"""``python -m segflow.bench.profile``: profile one training step of a model preset and
write the breakdown (attention, convolutions, norms, optimiser, data) to a file.

Examples:
    python -m segflow.bench.profile model=flow                       # GPU: 16 x 320 px, bf16
    python -m segflow.bench.profile model=medsegdiff --size 64 --batch 2 --device cpu
    python -m segflow.bench.profile model=flow model.net.use_checkpoint=true --trace

Positional arguments are training-config overrides (``model=<preset>``, ``model.*``).
Writes ``profile.md`` and ``profile.json`` (and on CUDA ``memory_<model>.pickle``, a
snapshot for https://pytorch.org/memory_viz) to ``--out``.
"""

from __future__ import annotations

import argparse
import sys

from segflow.infra.errors import command


@command
def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m segflow.bench.profile",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="training-config overrides, e.g. model=flow")
    p.add_argument("--device", default="auto", help="auto (cuda when present) | cpu | cuda:1")
    p.add_argument("--size", type=int, help="crop side (default 320 on CUDA, 64 on CPU)")
    p.add_argument("--batch", type=int, help="crops per step (default 16 on CUDA, 2 on CPU)")
    p.add_argument("--precision", help="32-true | bf16-mixed | 16-mixed (default bf16-mixed "
                                       "on CUDA, 32-true on CPU)")
    p.add_argument("--steps", type=int, default=3, help="profiled steps (after one warm-up)")
    p.add_argument("--channels-last", action="store_true", help="channels-last weights and batch")
    p.add_argument("--trace", action="store_true", help="also write a Chrome trace")
    p.add_argument("--out", help="output folder (default <output_root>/profile/<time>)")
    args = p.parse_args(argv)
    from segflow.bench.profiling import run_profile  # torch: after --help
    from segflow.conf.resolvers import register_resolvers

    register_resolvers()
    run_profile(args.overrides, args.device, args.size, args.batch, args.precision, args.steps,
                args.channels_last, args.trace, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
