"""``python -m segflow.report``: many runs → one comparison table (CSV + Markdown) and plots.

Examples:
    python -m segflow.report outputs/multirun/arch/2026-01-01_12-00-00        # a sweep
    python -m segflow.report outputs/runs/unet_xca/<t1> outputs/runs/flow_xca/<t2> --out cmp/
    make report RUNS="outputs/multirun/arch/<time>"

A *run* is a folder with ``.hydra/config.yaml`` and ``metrics.json`` (what
``segflow.train`` writes); folders given are searched recursively. Written to ``--out``
(default: ``<folder>/report`` for one folder, else ``outputs/reports/<time>``):

* ``report.csv`` / ``report.md`` — a row per run: model, data, the command-line overrides
  whose values differ between the runs, and the test metrics of the best checkpoint;
* ``evals.csv`` / ``evals.md`` — a row per ``segflow.eval`` result found in the runs
  (``<run>/eval/<tag>/metrics.json``): sampling settings and metrics;
* ``metrics.png`` (bars per run) and, when evaluations vary the sampling cost,
  ``dice_vs_nfe.png``.

Torch-free: reading JSON/CSV/YAML and plotting only, so it runs in a second.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from segflow.atomic import write_text
from segflow.errors import SegflowError, disk_error
from segflow.rundirs import claim_dir, writable_error
from segflow.runs.failed import is_failed, print_skipped
from segflow.runs.result_shapes import result_problem
from segflow.runs.results import (
    TABLE_METRICS,
    line_groups,
    markdown_table,
    plot_bars,
    plot_lines,
    write_csv,
)

#: Metrics shown in the Markdown tables and plots (the CSVs hold every metric).
SHOWN = ("dice", "dice_per_image", "cldice", "betti0_error", "betti1_error", "hd95", "auc",
         "ece", "sensitivity", "specificity")


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run folders (``.hydra/config.yaml`` + ``metrics.json``) at or under ``paths``, sorted.

    Raises:
        FileNotFoundError: a path that does not exist, or no run anywhere.
    """
    runs: set[Path] = set()
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist; pass run folders or a multirun folder")
        candidates = [path] if (path / ".hydra").is_dir() else [c.parent.parent for c in path.rglob(".hydra/config.yaml")]
        for c in candidates:
            if is_failed(c):  # by rule: a run marked FAILED is not compared
                print_skipped(c)
            elif (c / "metrics.json").is_file():
                runs.add(c.resolve())
    if not runs:
        raise FileNotFoundError(f"no runs (folders with .hydra/config.yaml and metrics.json) under "
                                f"{', '.join(map(str, paths))}; train first or check the path")
    return sorted(runs)


def _overrides(run: Path) -> dict[str, str]:
    """``key=value`` overrides of a run's command line (``.hydra/overrides.yaml``)."""
    path = run / ".hydra" / "overrides.yaml"
    items = yaml.safe_load(path.read_text()) if path.is_file() else []
    out = {}
    for item in items or []:
        key, _, value = str(item).partition("=")
        out[key.lstrip("+~")] = value
    return out


def _label(run: Path, root: Path) -> str:
    try:
        rel = run.relative_to(root)
        return str(rel) if str(rel) != "." else run.name
    except ValueError:
        return str(run)


def collect(runs: list[Path]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str],
                                       list[str]]:
    """Rows of the run table, rows of the eval table, the override keys that differ
    between runs, and the sampling-setting keys of the evaluations."""
    root = Path(os.path.commonpath([str(r) for r in runs])) if len(runs) > 1 else runs[0].parent
    overrides = {run: _overrides(run) for run in runs}
    keys = sorted({k for o in overrides.values() for k in o})
    # Group choices model=/data= already show as the model and data columns.
    differing = [k for k in keys if len({o.get(k) for o in overrides.values()}) > 1
                 and k not in ("model", "data")]
    run_rows, eval_rows, settings_keys = [], [], {}
    for run in runs:
        summary = read_json(run / "metrics.json", "run")
        if summary is None:
            continue
        label = _label(run, root)
        row: dict[str, Any] = {"run": label, "model": summary.get("model"), "data": summary.get("data")}
        row.update({k: overrides[run].get(k, "") for k in differing})
        row.update(summary.get("test") or {})
        for key in ("best_val_dice", "epochs", "global_step", "fit_seconds"):
            row[key] = summary.get(key)
        row["run_dir"] = str(run)
        run_rows.append(row)
        for result in sorted((run / "eval").glob("*/metrics.json")):
            ev = read_json(result, "eval")
            if ev is None or is_failed(result.parent):
                continue
            settings = ev.get("settings") or {}
            settings_keys.update(dict.fromkeys(settings))
            eval_rows.append({"run": label, "model": ev.get("model"), "data": ev.get("data"),
                              "split": ev.get("split"), "eval": result.parent.name,
                              **ev.get("metrics", {}), **settings})
    return run_rows, eval_rows, differing, list(settings_keys)


def read_json(path: Path, kind: str = "run") -> dict[str, Any] | None:
    """A result file, or None (with a warning naming it) when it is damaged: one bad file
    must not stop the report of all the others."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print(f"warning: skipped {path}: not readable JSON ({exc}); re-run that evaluation or "
              f"delete the file", file=sys.stderr, flush=True)
        return None
    if not isinstance(data, dict):
        print(f"warning: skipped {path}: not a segflow result (a JSON object)", file=sys.stderr)
        return None
    problem = result_problem(data, kind)
    if problem is not None:
        print(f"warning: skipped {path}: {problem}; re-run that {kind} or delete the file",
              file=sys.stderr, flush=True)
        return None
    return data


def _numeric(rows: list[dict[str, Any]], key: str) -> bool:
    return any(isinstance(r.get(key), (int, float)) and r.get(key) is not None for r in rows)


def write_report(paths: list[str | Path], out: Path | None = None) -> Path:
    """Build the tables and plots for the runs at or under ``paths``; returns the folder."""
    runs = find_runs(paths)
    run_rows, eval_rows, differing, settings = collect(runs)
    if not run_rows:  # checked before any folder is made: a failed report leaves none
        raise FileNotFoundError(f"none of the {len(runs)} runs under {', '.join(map(str, paths))} "
                                f"has a readable metrics.json (see the warnings above)")
    if out is None:
        if len(paths) == 1:
            out = Path(paths[0]) / "report"
        else:
            base = Path(os.environ.get("SEGFLOW_OUTPUT_DIR", "outputs"))
            out = base / "reports" / time.strftime("%Y-%m-%d_%H-%M-%S")
        out = claim_dir(out)  # a new folder: an earlier report is never replaced
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise writable_error(out, exc) from None
    ident = ["run", "model", "data", *differing]
    shown = [k for k in SHOWN if _numeric(run_rows, k)]
    metric_cols = [k for k in TABLE_METRICS if _numeric(run_rows, k)]
    rest = [k for r in run_rows for k in r if k not in ident and k not in metric_cols]
    write_csv(out / "report.csv", run_rows, ident + metric_cols + list(dict.fromkeys(rest)))
    table = markdown_table(run_rows, ident + shown + ["best_val_dice"])
    write_text(out / "report.md",
        f"# segflow report: {len(run_rows)} runs\n\nTest metrics of each run's best checkpoint "
        f"(`metrics.json`); full columns in `report.csv`.\n\n{table}")
    plot_bars(out / "metrics.png", [r["run"] for r in run_rows],
              {k: [float(r.get(k) or 0.0) for r in run_rows]
               for k in ("dice", "cldice", "auc") if k in shown},
              title="test metrics per run")
    print(f"\n{table}", flush=True)
    if eval_rows:
        cols = ["run", "model", "data", "split", "eval", *settings,
                *[k for k in TABLE_METRICS if _numeric(eval_rows, k)]]
        write_csv(out / "evals.csv", eval_rows,
                  cols + list(dict.fromkeys(k for r in eval_rows for k in r if k not in cols)))
        write_text(out / "evals.md", f"# segflow evaluations\n\n{markdown_table(eval_rows, cols)}")
        if len({r.get("nfe_per_image") for r in eval_rows}) > 1:
            plot_lines(out / "dice_vs_nfe.png", eval_rows, "nfe_per_image",
                       ["dice", "cldice", "seconds_per_image"],
                       group_by=["run", *line_groups(eval_rows, settings)], log_x=True,
                       title="quality vs sampling cost across runs")
    print(f"report of {len(run_rows)} runs written to {out}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segflow.report", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", help="run folders or folders holding runs (a multirun sweep)")
    parser.add_argument("--out", type=Path, default=None, help="output folder")
    args = parser.parse_args(argv)
    try:
        write_report(args.paths, args.out)
    except (FileNotFoundError, SegflowError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a read-only or full place
        if disk_error(exc) is None:
            raise
        print(f"error: {disk_error(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
