"""Many runs → one comparison table (CSV + Markdown) and plots (``segflow.report``).

A *run* is a folder with ``.hydra/config.yaml`` and ``metrics.json`` (what
``segflow.train`` writes); folders given are searched recursively. Written to ``--out``
(default: ``<folder>/report`` for one folder, else ``outputs/reports/<time>``):

* ``report.csv`` / ``report.md`` — a row per run: model, data, the command-line overrides
  whose values differ between the runs, and the test metrics of the best checkpoint;
* ``evals.csv`` / ``evals.md`` — a row per ``segflow.eval`` result found in the runs
  (``<run>/eval/<tag>/metrics.json``): sampling settings and metrics;
* ``metrics.png`` (bars per run, short labels) and, when evaluations vary the sampling
  cost, ``dice_vs_nfe.png``;
* ``curves.png`` (training curves), ``panel_<image>.png`` (each run's prediction, error
  map and uncertainty on a few test images) and ``report.html``, one page holding the
  tables and figures (:mod:`segflow.reports.html`; ``--no-pictures`` skips them).

The tables and metric plots read JSON/CSV/YAML only; the panels load each run's model.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from segflow.infra.atomic import write_text
from segflow.reports.html import short_labels, write_report_page
from segflow.runs.failed import is_failed
from segflow.runs.layout import NoRuns, RunFolder, find_runs, report_dir, writable_error
from segflow.runs.records import EvalRecord, RunRecord, read_overrides
from segflow.runs.results import (
    TABLE_METRICS,
    line_groups,
    markdown_table,
    plot_bars,
    plot_lines,
    write_csv,
)
from segflow.runs.sweeps import unfinished_jobs

#: Metrics shown in the Markdown tables and plots (the CSVs hold every metric).
SHOWN = ("dice", "dice_per_image", "cldice", "betti0_error", "betti1_error", "hd95", "auc",
         "ece", "sensitivity", "specificity")


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
    overrides = {run: read_overrides(run) for run in runs}
    keys = sorted({k for o in overrides.values() for k in o})
    # Group choices model=/data= already show as the model and data columns.
    differing = [k for k in keys if len({o.get(k) for o in overrides.values()}) > 1
                 and k not in ("model", "data")]
    run_rows, eval_rows, settings_keys = [], [], {}
    for run in runs:
        record = RunRecord.read(run, strict=False)
        if record is None:
            continue
        summary = record.as_dict()
        label = _label(run, root)
        row: dict[str, Any] = {"run": label, "model": summary.get("model"), "data": summary.get("data")}
        row.update({k: overrides[run].get(k, "") for k in differing})
        row.update(summary.get("test") or {})
        for key in ("best_val_dice", "epochs", "global_step", "fit_seconds"):
            row[key] = summary.get(key)
        row["run_dir"] = str(run)
        run_rows.append(row)
        for folder in RunFolder(run).evaluations():
            ev = EvalRecord.read(folder.path, strict=False)
            if ev is None or is_failed(folder.path):
                continue
            settings_keys.update(dict.fromkeys(ev.settings))
            eval_rows.append({"run": label, "model": ev.model, "data": ev.data,
                              "split": ev.split, "eval": folder.path.name,
                              **ev.metrics, **ev.settings,
                              "device": (ev.timing or {}).get("device")})
    return run_rows, eval_rows, differing, list(settings_keys)


def _numeric(rows: list[dict[str, Any]], key: str) -> bool:
    return any(isinstance(r.get(key), (int, float)) and r.get(key) is not None for r in rows)


def write_report(paths: list[str | Path], out: Path | None = None, pictures: bool = True,
                 names: list[str] | None = None, device: str = "cpu") -> Path:
    """Build the tables and plots for the runs at or under ``paths``; returns the folder.

    ``pictures``: also training curves, qualitative panels (of the test images ``names``,
    default the best / median / worst) and ``report.html`` (see :mod:`segflow.reports.html`).
    """
    runs = find_runs(paths)
    print(f"report: reading {len(runs)} runs", flush=True)
    run_rows, eval_rows, differing, settings = collect(runs)
    if not run_rows:  # checked before any folder is made: a failed report leaves none
        raise NoRuns(f"none of the {len(runs)} runs under {', '.join(map(str, paths))} "
                                f"has a readable metrics.json (see the warnings above)")
    if out is None:
        out = report_dir(paths)  # a new folder: an earlier report is never replaced
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise writable_error(out, exc) from None
    ident = ["run", "model", "data", *differing]
    shown = [k for k in SHOWN if _numeric(run_rows, k)]
    metric_cols = [k for k in TABLE_METRICS if _numeric(run_rows, k)]
    rest = [k for r in run_rows for k in r if k not in ident and k not in metric_cols]
    write_csv(out / "report.csv", run_rows, ident + metric_cols + list(dict.fromkeys(rest)))
    labels = short_labels(runs, {run: read_overrides(run) for run in runs})
    # report.md and report.html name each run by the same short label (report.csv: its folder)
    short_rows = [{**r, "run": labels.get(Path(r["run_dir"]), r["run"])} for r in run_rows]
    table = markdown_table(short_rows, ident + shown + ["best_val_dice"])
    key = "; ".join(f"{labels.get(Path(r['run_dir']), r['run'])}: {r['run']}" for r in run_rows)
    gaps = unfinished_jobs(paths)  # sweep jobs without a result: refused, failed, missing
    listed = "".join(f"\n- job #{j['num']} of {j['sweep']} ({' '.join(j.get('overrides', []))}): "
                     f"{j['status']}: {j.get('reason')}" for j in gaps)
    write_text(out / "report.md",
        f"# segflow report: {len(run_rows)} runs\n\nTest metrics of each run's best checkpoint "
        f"(`metrics.json`); full columns in `report.csv`. Runs ({key}).\n\n{table}"
        + (f"\n\n## Sweep jobs without results ({len(gaps)})\n{listed}\n" if gaps else ""))
    for j in gaps:
        print(f"warning: sweep job #{j['num']} of {j['sweep']} {j['status']}: {j.get('reason')}",
              file=sys.stderr, flush=True)
    print("report: metrics figure (PNG, SVG, PDF)", flush=True)
    plot_bars(out / "metrics.png", [r["run"] for r in short_rows],
              {k: [float(r.get(k) or 0.0) for r in run_rows]
               for k in ("dice", "cldice", "auc") if k in shown},
              title="test metrics per run (axes zoomed to the values)")
    print(f"\n{table}", flush=True)
    if eval_rows:
        cols = ["run", "model", "data", "split", "eval", *settings,
                *[k for k in TABLE_METRICS if _numeric(eval_rows, k)],
                *(["device"] if any(r.get("device") for r in eval_rows) else [])]
        write_csv(out / "evals.csv", eval_rows,
                  cols + list(dict.fromkeys(k for r in eval_rows for k in r if k not in cols)))
        short = {r["run"]: labels.get(Path(r["run_dir"]), r["run"]) for r in run_rows}
        short_evals = [{**r, "run": short.get(r["run"], r["run"])} for r in eval_rows]
        write_text(out / "evals.md", f"# segflow evaluations\n\n{markdown_table(short_evals, cols)}")
        if len({r.get("nfe_per_image") for r in eval_rows}) > 1:
            plot_lines(out / "dice_vs_nfe.png",  # legend: the short labels
                       [{**r, "run": short.get(r["run"], r["run"])} for r in eval_rows],
                       "nfe_per_image",
                       ["dice", "cldice", "seconds_per_image"],
                       group_by=["run", *line_groups(eval_rows, settings)], log_x=True,
                       title="quality vs sampling cost across runs")
    if pictures:  # curves, qualitative panels and report.html (segflow.reports.html)
        write_report_page(out, [Path(r["run_dir"]) for r in run_rows], labels, [
            ("runs", run_rows, ident + shown + ["best_val_dice"]),
            *([("evaluations", short_evals, cols)] if eval_rows else [])],
            [("test metrics per run", out / "metrics.png"),
             ("quality vs sampling cost", out / "dice_vs_nfe.png")], names, device)
    print(f"report of {len(run_rows)} runs written to {out}", flush=True)
    return out
