"""``python -m segflow.compare``: one fair comparison of model families on one dataset.

Examples:
    python -m segflow.compare --data synthetic_xca                       # the four families
    python -m segflow.compare --data dca1 --models flow_small data.root=data/xca_angios80
    python -m segflow.compare --data synthetic_xca --report-only          # re-table what exists
    make compare DATA=synthetic_xca [MODELS=unet,flow_small] [ARGS="trainer.max_epochs=20"]

Three stages, each a real segflow command:

1. **train** — one multirun ``segflow.train -m model=<models> data=<data>
   sweep_name=compare_<data>`` (plus the given overrides): every model gets the same
   optimiser steps, crops per step and crop size, because those come from the data and
   trainer configs, which the model presets never set.
2. **evaluate** — each generative run (a method with ``steps``/``n_samples`` sampling
   settings) under a small quality × cost grid (``--steps``, ``--samples``) with
   ``segflow.eval``.
3. **report** — every run under ``outputs/multirun/compare_<data>/`` (the newest per
   model, so families trained one at a time with ``--models`` merge into one table):
   a row per model and sampling setting with Dice, clDice, β0/β1 error, AUC, ECE, NFE and
   seconds per image, training wall-clock, parameters and, for ensembles, the Spearman
   correlation between per-image uncertainty and per-image error (1 − Dice). Written to
   ``outputs/compare/compare_<data>/<time>/compare.{csv,md}``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from segflow.runs.results import markdown_table, write_csv

DEFAULT_MODELS = "unet,csnet,medsegdiff_small,flow_small"
#: Columns of the comparison table, in order (missing values are left blank).
COLUMNS = ("model", "steps", "n_samples", "dice", "cldice", "betti0_error", "betti1_error", "auc",
           "ece", "nfe_per_image", "seconds_per_image", "fit_minutes", "params_m",
           "spearman_uncertainty_error", "run")
#: Eval-time settings that make a method "generative" for the grid.
GRID_KEYS = ("steps", "n_samples")


def output_root() -> Path:
    return Path(os.environ.get("SEGFLOW_OUTPUT_DIR", "outputs"))


def sweep_folder(name: str) -> Path:
    return output_root() / "multirun" / name


def find_runs(folder: Path) -> list[Path]:
    """Finished runs (``.hydra/config.yaml`` + ``metrics.json``) under ``folder``."""
    if not folder.is_dir():
        return []
    return sorted(p.parent.parent for p in folder.rglob(".hydra/config.yaml")
                  if (p.parent.parent / "metrics.json").is_file())


def run_config(run: Path) -> dict[str, Any]:
    return yaml.safe_load((run / ".hydra" / "config.yaml").read_text())


def is_generative(cfg: dict[str, Any]) -> bool:
    """Whether the run's method has the grid's sampling settings (its class says so)."""
    from hydra.utils import get_class

    method = get_class(cfg["model"]["method"]["_target_"])
    return all(k in getattr(method, "sampling_keys", ()) for k in GRID_KEYS)


def count_params(cfg: dict[str, Any]) -> int:
    """Parameters of the run's network, built from its stored config (no checkpoint read)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    net = instantiate(OmegaConf.create(cfg).model.net)  # interpolations resolve in the whole
    return sum(p.numel() for p in net.parameters())


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None below 3 pairs or when
    either side is constant."""
    if len(x) < 3 or len(x) != len(y):
        return None
    from scipy.stats import spearmanr

    if len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return float(spearmanr(x, y).statistic)


def uncertainty_error_rho(per_image_csv: Path) -> float | None:
    """ρ between per-image ``mean_uncertainty`` and 1 − per-image Dice (``dice``)."""
    if not per_image_csv.is_file():
        return None
    with per_image_csv.open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("mean_uncertainty") not in (None, "")]
    return spearman([float(r["mean_uncertainty"]) for r in rows],
                    [1.0 - float(r["dice"]) for r in rows])


def newest_per_model(runs: list[Path]) -> dict[str, Path]:
    """The newest finished run of each model (folder names sort by start time)."""
    latest: dict[str, tuple[str, Path]] = {}
    for run in runs:
        name = json.loads((run / "metrics.json").read_text()).get("model") or run.name
        key = str(run.relative_to(run.parents[1]))  # "<time>/<job>"
        if name not in latest or key > latest[name][0]:
            latest[name] = (key, run)
    return {name: run for name, (_, run) in sorted(latest.items())}


def _row(model: str, run: Path, metrics: dict[str, Any], summary: dict[str, Any],
         params: int, settings: dict[str, Any], rho: float | None) -> dict[str, Any]:
    fit = summary.get("fit_seconds")
    return {"model": model, **{k: metrics.get(k) for k in COLUMNS if k in metrics},
            "steps": settings.get("steps", ""), "n_samples": settings.get("n_samples", ""),
            "nfe_per_image": metrics.get("nfe_per_image", 1.0),
            "fit_minutes": round(fit / 60.0, 1) if fit is not None else None,
            "params_m": round(params / 1e6, 3),
            "spearman_uncertainty_error": "" if rho is None else rho,
            "run": str(run)}


def grid_key(settings: dict[str, Any]) -> tuple:
    """The grid cell of sampling settings: (steps, n_samples)."""
    return tuple(settings.get(k) for k in GRID_KEYS)


def tested_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """The sampling settings the training's test ran at: the preset's, lowered to
    ``debug.sampling`` in a ``trainer=debug`` run."""
    method = cfg["model"]["method"]
    caps = (cfg.get("debug") or {}).get("sampling") or {}
    settings = {}
    for k in GRID_KEYS:
        if k in method:
            v, cap = method.get(k), caps.get(k)
            settings[k] = v if cap is None or (v is not None and v <= cap) else cap
    return settings


def collect(runs: dict[str, Path]) -> list[dict[str, Any]]:
    """Rows of the comparison: every evaluation setting (``<run>/eval/*/metrics.json``) of
    each run, and the training's own test metrics (one-pass runs; generative runs at their
    preset's sampling settings when no evaluation repeated them)."""
    rows = []
    for model, run in runs.items():
        cfg, summary = run_config(run), json.loads((run / "metrics.json").read_text())
        params = count_params(cfg)
        evals = sorted((run / "eval").glob("*/metrics.json")) if (run / "eval").is_dir() else []
        seen = set()
        for path in evals:
            ev = json.loads(path.read_text())
            if ev.get("split") != "test":
                continue
            settings = ev.get("settings") or {}
            seen.add(grid_key(settings))
            rows.append(_row(model, run, ev.get("metrics") or {}, summary, params, settings,
                             uncertainty_error_rho(path.parent / "per_image.csv")))
        # The training's own test (at the preset's sampling settings), unless an evaluation
        # already has those settings.
        preset = tested_settings(cfg)
        if summary.get("test") and grid_key(preset) not in seen:
            rows.append(_row(model, run, summary["test"], summary, params, preset, None))
    rows.sort(key=lambda r: (r["model"], _num(r["steps"]), _num(r["n_samples"])))
    return rows


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return -1.0


def _run(cmd: list[str]) -> None:
    print("+ " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        raise SystemExit(f"error: `{' '.join(cmd)}` failed (exit {proc.returncode}); "
                         "see its message above")


def train(models: str, data: str, name: str, overrides: list[str]) -> list[Path]:
    """Stage 1: the multirun; returns the runs it added."""
    before = set(find_runs(sweep_folder(name)))
    _run([sys.executable, "-m", "segflow.train", "-m", f"model={models}", f"data={data}",
          f"sweep_name={name}", *overrides])
    # Only this invocation's models: another comparison may finish runs meanwhile.
    wanted = set(models.split(","))
    return [r for r in find_runs(sweep_folder(name)) if r not in before
            and json.loads((r / "metrics.json").read_text()).get("model") in wanted]


def evaluate(runs: list[Path], steps: str, samples: str, overrides: list[str]) -> None:
    """Stage 2: the quality × cost grid of each generative run."""
    passed = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in ("trainer",)
              or o.lstrip("+~").startswith("trainer.")]
    for run in runs:
        if is_generative(run_config(run)):
            _run([sys.executable, "-m", "segflow.eval", f"run_dir={run}",
                  f"grid.steps=[{steps}]", f"grid.n_samples=[{samples}]", *passed])


def report(name: str, out: Path | None = None) -> Path:
    """Stage 3: the table of the newest run per model under the sweep's folder."""
    runs = newest_per_model(find_runs(sweep_folder(name)))
    if not runs:
        raise SystemExit(f"error: no finished runs under {sweep_folder(name)}; run the "
                         "comparison's training first (without --report-only)")
    rows = collect(runs)
    out = out or output_root() / "compare" / name / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "compare.csv", rows, list(COLUMNS))
    shown = [c for c in COLUMNS if c != "run" and any(r.get(c) not in (None, "") for r in rows)]
    table = markdown_table(rows, shown)
    (out / "compare.md").write_text(
        f"# segflow comparison: {name}\n\nOne row per model and sampling setting (test split). "
        f"Runs:\n\n" + "".join(f"- {m}: `{r}`\n" for m, r in runs.items()) + f"\n{table}")
    print(f"\n{table}\ncomparison of {len(runs)} models written to {out}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segflow.compare",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="a data option (conf/data/<name>.yaml)")
    parser.add_argument("--models", default=DEFAULT_MODELS,
                        help=f"comma-separated model presets (default {DEFAULT_MODELS})")
    parser.add_argument("--steps", default="1,2,4,10", help="grid of sampling steps")
    parser.add_argument("--samples", default="1,4", help="grid of ensemble sizes")
    parser.add_argument("--name", default=None, help="sweep name (default compare_<data>)")
    parser.add_argument("--out", type=Path, default=None, help="report folder")
    parser.add_argument("--report-only", action="store_true",
                        help="only rebuild the table from the runs that exist")
    parser.add_argument("overrides", nargs="*", help="training overrides (key=value)")
    args = parser.parse_args(argv)
    name = args.name or f"compare_{args.data}"
    if not args.report_only:
        new = train(args.models, args.data, name, args.overrides)
        evaluate(new, args.steps, args.samples, args.overrides)
    report(name, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
