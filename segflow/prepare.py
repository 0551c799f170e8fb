"""``python -m segflow.prepare``: public dataset layouts → segflow's folder layout.

Examples:
    python -m segflow.prepare drive <DRIVE folder> data/drive
    python -m segflow.prepare chase ~/Downloads/CHASEDB1 data/chase
    python -m segflow.prepare dca1 <XCA_Angios80 folder> data/xca_angios80
    python -m segflow.prepare dca1 ~/Downloads/Database_134_Angiograms data/dca1
    python -m segflow.prepare xcad ~/Downloads/XCAD data/xcad
    python -m segflow.prepare octa500 <OCTA-500 folder> data/octa500_3m --subset 3M
    python -m segflow.prepare octa500 <OCTA-500 folder> data/octa500_6m --subset 6M \\
        --projection "OCTA(ILM_OPL)" --label Artery
    python -m segflow.prepare drive <DRIVE folder> --check       # validate, write nothing
    python -m segflow.prepare folder data/xca_full --check               # your own layout
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from segflow.data.prepare.adapters import ADAPTERS
from segflow.data.prepare.layout import check, prepare
from segflow.infra.errors import command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m segflow.prepare",
        description="Convert a public vessel dataset (native layout) into segflow's "
                    "<dest>/{train,val,test}/{image,label[,fov]}/ layout, or --check one.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("Examples:")[1])
    p.add_argument("kind", choices=sorted(ADAPTERS), help="the source layout")
    p.add_argument("source", help="the dataset as downloaded (unpacked)")
    p.add_argument("dest", nargs="?", help="output folder (not needed with --check)")
    p.add_argument("--check", action="store_true", help="validate every pair; write nothing")
    p.add_argument("--force", action="store_true",
                   help="rebuild even if dest is up to date, replacing outputs edited since "
                        "(refused while dest holds files segflow did not write)")
    g = p.add_argument_group("dataset options")
    g.add_argument("--subset", help="octa500: 3M (default) or 6M")
    g.add_argument("--projection", help="octa500: ProjectionMaps folder (default 'OCTA(FULL)')")
    g.add_argument("--label", help="octa500: LargeVessel (default), Artery, Vein, Capillary, FAZ")
    g.add_argument("--n-train", type=int, dest="n_train",
                   help="dca1, flat folder: images 1..N are train, the rest test (default 100)")
    g.add_argument("--test-fraction", type=float, dest="test_fraction",
                   help="xcad without a train/test split: seeded test fraction (default 0.2)")
    return p


@command
def main(argv: list[str] | None = None) -> int:
    """Entry point (``segflow-prepare``); returns the exit status (2: a user error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.check and not args.dest:
        parser.error("give a destination folder (or --check to validate only)")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    options = {k: getattr(args, k) for k in ("subset", "projection", "label", "n_train",
                                             "test_fraction")}
    if args.check:
        report = check(args.kind, args.source, **options)
        print(json.dumps(report, indent=1))
        print(f"OK: {args.source} is a valid {args.kind} dataset "
              f"({', '.join(f'{n} {s}' for s, n in report['counts'].items())})")
        return 0
    manifest = prepare(args.kind, args.source, args.dest, force=args.force, **options)
    state = "already up to date" if manifest["up_to_date"] else "written"
    print(f"{args.dest}: {state} — {', '.join(f'{n} {s}' for s, n in manifest['counts'].items())}; "
          f"sizes {manifest['sizes']}; skipped {manifest['skipped'] or 'nothing'}; "
          f"manifest {args.dest}/manifest.json"
          + (f"; kept {len(manifest['kept_edited'])} edited file(s) (--force replaces them)"
             if manifest.get("kept_edited") else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
