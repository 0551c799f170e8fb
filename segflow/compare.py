"""``python -m segflow.compare``: a comparison of model families a reviewer accepts.

Examples:
    python -m segflow.compare --data synthetic_xca                            # four families, seed 0
    python -m segflow.compare --data dca1 --seeds 0,1,2 --nfe 1,4,8 data.root=data/xca_angios80 \\
        data.val_fraction=0.25 --also-test dca1:data/other_angiograms
    python -m segflow.compare --data dca1 --report-only                        # re-table what exists
    make compare DATA=synthetic_xca SEEDS=0,1,2 [MODELS=unet,flow_small] [ARGS="trainer.max_epochs=20"]

See :mod:`segflow.compare` for the protocol (train, select on val, test once, table).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segflow.conf.resolvers import register_resolvers
from segflow.infra.errors import command
from segflow.metrics.verdicts import parse_margins
from segflow.reports.compare.pipeline import Comparison, run
from segflow.reports.compare.protocol import DEFAULT_MODELS


def _numbers(kind: type) -> callable:
    def parse(text: str) -> list:
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
        if not values or min(values) < 1:
            raise argparse.ArgumentTypeError(f"{text!r}: give numbers >= 1, e.g. 1,4,8")
        return values
    return parse


def _margins(text: str) -> dict[str, float]:
    try:
        return parse_margins(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m segflow.compare", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="a data option (conf/data/<name>.yaml)")
    p.add_argument("--models", default=None, help=f"comma-separated model presets (default {DEFAULT_MODELS}; "
                   "with --report-only: every model found)")
    p.add_argument("--seeds", default=None, help="training seeds, e.g. 0,1,2 (default 0; with "
                   "--report-only: every seed found)")
    p.add_argument("--nfe", type=_numbers(float), default=[1.0, 4.0, 8.0], help="NFE budgets per image: the best val setting "
                   "within each is tested (default 1,4,8)")
    p.add_argument("--gflops", type=_numbers(float), default=[], help="budgets in counted GFLOPs "
                   "per image (every pass, TTA view, tile and prior pass), e.g. 3,12,24")
    p.add_argument("--margin", type=_margins, default={}, help="equivalence margins per metric, e.g. "
                   "dice=0.01,cldice=0.01,betti0=1 (defaults: docs/compare.md)")
    p.add_argument("--adjust", choices=["holm"], default=None, help="Holm-adjust the p-values "
                   "of every comparison in the table")
    p.add_argument("--select", choices=["dice", "topology"], default="dice", help="the val "
                   "selection rule: best Dice, or the lowest β0 error within the Dice margin")
    p.add_argument("--steps", type=_numbers(int), default=[1, 2, 4, 8], help="val grid of sampling steps (generative)")
    p.add_argument("--samples", type=_numbers(int), default=[1, 4], help="val grid of ensemble sizes (generative)")
    p.add_argument("--tta", type=_numbers(int), default=[1, 2, 4, 8], help="val grid of test-time augmentation passes "
                   "(one-pass models)")
    p.add_argument("--also-test", action="append", default=[], metavar="OPTION:ROOT",
                   help="a further prepared test set, e.g. dca1:data/other_site (repeatable)")
    p.add_argument("--name", default=None, help="sweep name (default compare_<data>)")
    p.add_argument("--out", type=Path, default=None, help="report folder")
    p.add_argument("--into", type=Path, default=None, help="also write the tables into this "
                   "Markdown page (a section marked with the sweep name, replaced on re-runs)")
    p.add_argument("--report-only", action="store_true", help="only rebuild the table from the "
                   "evaluations that exist")
    p.add_argument("--skip-train", action="store_true", help="evaluate and table the runs that exist")
    p.add_argument("--refinement", action="store_true", help="also evaluate the generative runs' "
                   "one-sample Dice at every --steps on their test split (a diagnostic table "
                   "beside the comparison; the val curve is always tabled)")
    p.add_argument("overrides", nargs="*", help="training overrides (key=value)")
    return p


@command
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_intermixed_args(argv)
    register_resolvers()  # the data option is composed to check its test split
    comparison = Comparison(
        data=args.data, models=args.models, seeds=args.seeds,
        nfe=args.nfe, steps=args.steps, samples=args.samples, tta=args.tta,
        also_test=args.also_test, name=args.name, out=args.out, into=args.into,
        train=not (args.report_only or args.skip_train),
        evaluate=not args.report_only, overrides=args.overrides, refinement=args.refinement,
        gflops=args.gflops, margins=args.margin,
        adjust=args.adjust, select=args.select)
    run(comparison)
    return 0


if __name__ == "__main__":
    sys.exit(main())
