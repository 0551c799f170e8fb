"""The comparison table: one row per test set, model and NFE budget, from evaluations."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from segflow.infra.atomic import write_text
from segflow.metrics.bootstrap import correlation, mean_std, paired_difference
from segflow.metrics.bootstrap import spearman as _spearman
from segflow.metrics.verdicts import (
    DEFAULT_MARGINS,
    REFINEMENT_RULE,
    VERDICT_RULE,
    describe_margins,
    holm,
    running_refinement,
    verdict,
)
from segflow.reports.compare.protocol import Budgeted, Evaluation, describe, run_config
from segflow.runs.layout import EvalFolder
from segflow.runs.records import RunRecord
from segflow.runs.results import markdown_table, write_csv

#: The metrics a row compares with its reference: a paired crossed-bootstrap interval of the
#: per-image difference (model − reference) and a verdict against a margin, each.
COMPARED = ("dice", "cldice", "betti0_error", "betti1_error", "ece")
#: Columns of compare.csv, in order.
COLUMNS = ("test_set", "model", "budget", "budget_unit", "setting", "nfe_per_image",
           "gflops_per_image", "seeds", "val_dice", "dice", "dice_std", "dice_per_image",
           "dice_per_image_std", "cldice", "betti0_error", "betti1_error", "auc", "ece",
           "reference", "design",
           *[f"{k}_{m}" for m in COMPARED for k in ("delta", "low", "high", "verdict", "p", "p_holm")],
           "rho_uncertainty_error", "rho_low", "rho_high", "seconds_per_image", "fit_minutes",
           "params_m", "train_pflops", "commits", "steps", "n_samples", "tta")
MEANS = ("cldice", "betti0_error", "betti1_error", "auc", "ece", "seconds_per_image",
         "gflops_per_image")


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation; None below 3 pairs or when either side is constant."""
    if len(x) < 3 or len(x) != len(y):
        return None
    rho = _spearman(np.asarray(x, float), np.asarray(y, float))
    return None if np.isnan(rho) else rho


def per_image(folder: Path) -> dict[str, dict[str, float]]:
    """``per_image.csv`` of an evaluation: {image name: {column: value}}."""
    path = EvalFolder(folder).per_image
    if not path.is_file():
        return {}
    with path.open() as f:
        return {r["name"]: {k: float(v) for k, v in r.items() if k != "name" and v not in ("", None)}
                for r in csv.DictReader(f)}


def count_params(cfg: dict[str, Any]) -> int:
    """Parameters of the run's network, built from its stored config (no checkpoint read)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    net = instantiate(OmegaConf.create(cfg).model.net)
    return sum(p.numel() for p in net.parameters())


def _grid(evals: dict[int, Evaluation], seeds: list[int], images: list[str], column: str
          ) -> np.ndarray | None:
    """(seeds, images) per-image values of ``column``; None when any is missing."""
    tables = {s: per_image(evals[s].folder) for s in seeds}
    try:
        return np.array([[tables[s][name][column] for name in images] for s in seeds])
    except KeyError:
        return None


def _common_images(evals: list[Evaluation]) -> list[str]:
    names = None
    for ev in evals:
        here = set(per_image(ev.folder))
        names = here if names is None else names & here
    return sorted(names or ())


def training_cost(runs: list[Path]) -> dict[str, Any]:
    """What training the rows' runs cost, a supervised prior's run included (its own fit,
    FLOPs and parameters; a refinement model cannot exist without it): mean fit minutes,
    mean training PFLOPs, parameters (M), and the commits the runs were trained at."""
    fits, pflops, params, commits = [], [], [], set()
    for run in runs:
        record = RunRecord.read(run, strict=False)
        if record is None:
            continue
        commits.add((record.commit or {}).get("sha", "unknown")[:7] or "unknown")
        fit, flops = record.fit_seconds, record.extra.get("train_flops")
        n = record.extra.get("params")
        n = count_params(run_config(run)) if n is None else n + record.extra.get("prior_params", 0)
        prior = (run_config(run).get("model", {}).get("method", {}) or {}).get("prior_run")
        if prior:
            prior_record = RunRecord.read(prior, strict=False) if Path(prior).exists() else None
            if prior_record is not None:
                fit = None if fit is None else fit + (prior_record.fit_seconds or 0)
                p = prior_record.extra.get("train_flops")
                flops = None if flops is None or p is None else flops + p
                commits.add((prior_record.commit or {}).get("sha", "unknown")[:7])
        fits += [fit] if fit is not None else []
        pflops += [flops] if flops is not None else []
        params.append(n)
    return {"fit_minutes": round(float(np.mean(fits)) / 60, 1) if fits else None,
            "train_pflops": float(f"{np.mean(pflops) / 1e15:.4g}") if pflops else None,
            "params_m": round(float(np.mean(params)) / 1e6, 3) if params else None,
            "commits": " ".join(sorted(commits))}


def build_rows(choices: list[Budgeted], tests: list[Evaluation], generative: dict[str, bool],
               n_boot: int = 4000, margins: dict[str, float] | None = None,
               adjust: str | None = None) -> list[dict[str, Any]]:
    """Rows of the table (see :mod:`segflow.reports.compare`): per test set, model and
    budget, the metrics over seeds, and against the reference of the budget (the supervised
    model val ranks first there) a paired **crossed** bootstrap interval and a verdict per
    metric of :data:`COMPARED` (margins: :data:`segflow.metrics.verdicts.DEFAULT_MARGINS`
    unless given). ``adjust="holm"``: Holm-adjusted p-values over every comparison of the
    table, and a better / worse verdict whose adjusted p is not below 0.05 becomes
    inconclusive."""
    margins = {**DEFAULT_MARGINS, **(margins or {})}
    index: dict[tuple[str, str, tuple], dict[int, Evaluation]] = defaultdict(dict)
    for ev in tests:
        index[(ev.test_set, ev.model, ev.key)][ev.seed] = ev
    reference: dict[tuple[str, float], Budgeted] = {}
    for c in choices:
        at = (c.unit, c.budget)
        if not generative.get(c.model) and (at not in reference
                                            or c.val_dice > reference[at].val_dice):
            reference[at] = c
    rows = []
    for label in sorted({ev.test_set for ev in tests}):
        for c in choices:
            evals = index.get((label, c.model, c.key), {})
            if not evals:
                continue
            seeds = sorted(evals)
            dice = mean_std([float(evals[s].metrics["dice"]) for s in seeds])
            dice_img = mean_std([float(evals[s].metrics.get("dice_per_image", np.nan)) for s in seeds])
            row: dict[str, Any] = {
                "test_set": label, "model": c.model, "budget": c.budget, "budget_unit": c.unit,
                "setting": describe(c.key),
                "nfe_per_image": float(np.mean([evals[s].nfe for s in seeds])), "seeds": len(seeds),
                "val_dice": c.val_dice, "dice": dice[0], "dice_std": dice[1],
                "dice_per_image": dice_img[0], "dice_per_image_std": dice_img[1],
                **{k: float(np.mean([float(evals[s].metrics[k]) for s in seeds]))
                   for k in MEANS if all(k in evals[s].metrics for s in seeds)},
                **training_cost([evals[s].run for s in seeds]),
                "steps": c.key[0], "n_samples": c.key[1], "tta": c.key[2]}
            ref = reference.get((c.unit, c.budget))
            if ref is not None and ref.model != c.model:
                ref_evals = index.get((label, ref.model, ref.key), {})
                paired = [s for s in seeds if s in ref_evals]
                images = _common_images([evals[s] for s in paired] + [ref_evals[s] for s in paired])
                for metric in COMPARED:
                    a = _grid(evals, paired, images, metric) if paired and images else None
                    b = _grid(ref_evals, paired, images, metric) if paired and images else None
                    if a is None or b is None:
                        continue
                    ci = paired_difference(a, b, n_boot=n_boot)  # one seed: the same draws per metric
                    row.update({"reference": ref.model, "design": ci.design,
                                f"delta_{metric}": ci.estimate, f"low_{metric}": ci.low,
                                f"high_{metric}": ci.high, f"p_{metric}": ci.p_value(),
                                f"verdict_{metric}": verdict(ci, metric, margins[metric])})
            images = _common_images(list(evals.values()))
            for column in ("uncertainty_per_foreground", "mean_uncertainty"):
                u = _grid(evals, seeds, images, column) if images else None
                if u is None:
                    continue
                err = 1.0 - _grid(evals, seeds, images, "dice")
                rho = correlation(u, err, n_boot=min(n_boot, 2000))
                if rho is not None:
                    row.update(rho_uncertainty_error=rho.estimate, rho_low=rho.low, rho_high=rho.high)
                break
            rows.append(row)
    cells = [(i, m) for i, r in enumerate(rows) for m in COMPARED if f"p_{m}" in r]
    if adjust == "holm" and cells:
        for (i, m), p in zip(cells, holm([rows[i][f"p_{m}"] for i, m in cells]), strict=True):
            rows[i][f"p_holm_{m}"] = float(p)
            if rows[i][f"verdict_{m}"] in ("better", "worse") and p >= 0.05:
                rows[i][f"verdict_{m}"] = "inconclusive"
    return rows


def comparisons(rows: list[dict[str, Any]]) -> int:
    """How many (row, metric) comparisons the table makes."""
    return sum(f"p_{m}" in r for r in rows for m in COMPARED)


def _pm(row: dict[str, Any], key: str, digits: int = 3) -> str:
    if row.get(key) in (None, ""):
        return ""
    std = row.get(f"{key}_std")
    return f"{row[key]:.{digits}f}" + (f" ± {std:.{digits}f}" if row.get("seeds", 1) > 1 else "")


def _ci(row: dict[str, Any], key: str, low: str, high: str, digits: int = 3) -> str:
    if row.get(key) in (None, ""):
        return ""
    return f"{row[key]:+.{digits}f} [{row[low]:+.{digits}f}, {row[high]:+.{digits}f}]"


#: How a metric's difference is shown: (column title, digits).
_SHOWN = {"dice": ("Δ Dice", 3), "cldice": ("Δ clDice", 3), "betti0_error": ("Δ β0 err", 1),
          "betti1_error": ("Δ β1 err", 2), "ece": ("Δ ECE", 3)}


def _delta(row: dict[str, Any], metric: str) -> str:
    if f"delta_{metric}" not in row:
        return ""
    digits = _SHOWN[metric][1]
    cell = _ci(row, f"delta_{metric}", f"low_{metric}", f"high_{metric}", digits)
    held = f", Holm p {row[f'p_holm_{metric}']:.2g}" if f"p_holm_{metric}" in row else ""
    return f"{cell} **{row[f'verdict_{metric}']}**{held}"


def _num(row: dict[str, Any], key: str, fmt: str) -> str:
    return "" if row.get(key) in (None, "") else format(row[key], fmt)


def markdown(rows: list[dict[str, Any]]) -> str:
    """One Markdown table per test set."""
    out = []
    for label in dict.fromkeys(r["test_set"] for r in rows):
        shown = []
        for r in (r for r in rows if r["test_set"] == label):
            shown.append({
                "model": r["model"], "budget": f"{r['budget']:g} {r['budget_unit']}",
                "setting (val)": r["setting"], "NFE": f"{r['nfe_per_image']:g}",
                "GFLOPs / image": _num(r, "gflops_per_image", ".1f"),
                "val Dice": f"{r['val_dice']:.3f}", "Dice": _pm(r, "dice"),
                "clDice": _num(r, "cldice", ".3f"), "β0 err": _num(r, "betti0_error", ".1f"),
                "β1 err": _num(r, "betti1_error", ".2f"), "ECE": _num(r, "ece", ".3f"),
                "reference": r.get("reference", ""),
                **{_SHOWN[m][0]: _delta(r, m) for m in COMPARED},
                "ρ(uncertainty, error) [95 % CI]": _ci(r, "rho_uncertainty_error", "rho_low", "rho_high"),
                "s / image": _num(r, "seconds_per_image", ".3f"),
                "fit (min)": _num(r, "fit_minutes", ".1f"),
                "train PFLOPs": _num(r, "train_pflops", ".3g"),
                "params (M)": _num(r, "params_m", ".2f")})
        out.append(f"**Test set: {label}**\n\n{markdown_table(shown)}")
    return "\n".join(out)


def protocol_notes(rows: list[dict[str, Any]], margins: dict[str, float] | None,
                   adjust: str | None) -> str:
    """What a reader needs to read the verdicts: the rule, the margins, the design, the
    number of comparisons and the adjustment."""
    margins = {**DEFAULT_MARGINS, **(margins or {})}
    designs = sorted({r["design"] for r in rows if r.get("design")})
    n = comparisons(rows)
    return (f"{VERDICT_RULE}. Margins: {describe_margins(margins, COMPARED)}. Intervals: paired "
            f"{' / '.join(designs) or 'crossed'} bootstrap over seeds × images (every seed tested "
            f"on the same images; Owen 2007), per-image values (ECE: each image's own). "
            f"{n} comparisons in this table; "
            + ("p-values Holm-adjusted over all of them (a better / worse verdict needs an "
               "adjusted p < 0.05)." if adjust == "holm" else
               "no adjustment for multiplicity (`--adjust holm` offers one)."))


def write_report(out: Path, rows: list[dict[str, Any]], header: str, tables: str | None = None
                 ) -> Path:
    """``compare.csv`` (every column) and ``compare.md`` (``header`` + ``tables``, by default
    :func:`markdown` of the rows)."""
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "compare.csv", rows, list(COLUMNS))
    write_text(out / "compare.md", f"{header}\n{markdown(rows) if tables is None else tables}")
    return out


def update_section(path: Path, name: str, text: str) -> Path:
    """Write ``text`` into the Markdown file ``path`` between the markers
    ``<!-- segflow.compare NAME -->`` and ``<!-- /segflow.compare NAME -->`` (replacing what
    they held; appended with the markers when absent), so a results page's tables are
    written by the command, never by hand."""
    start, end = f"<!-- segflow.compare {name} -->", f"<!-- /segflow.compare {name} -->"
    old = path.read_text() if path.is_file() else ""
    block = f"{start}\n{text.rstrip()}\n{end}"
    if start in old and end in old:
        new = old[:old.index(start)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip() + ("\n\n" if old.strip() else "") + block + "\n"
    write_text(path, new)
    return path


#: Columns of refinement.csv, in order.
REFINEMENT_COLUMNS = ("test_set", "model", "steps", "nfe_per_image", "seeds", "dice", "dice_std",
                      "dice_per_image", "cldice", "betti0_error", "change_from_fewest_steps",
                      "largest_drop", "refines")
#: A one-sample Dice curve whose values stay within this much of the fewest-steps value
#: refines (the whole curve, not step by step).
REFINE_TOLERANCE = 0.005


def refinement_rows(evals: list[Evaluation], generative: dict[str, bool],
                    tolerance: float = REFINE_TOLERANCE) -> list[dict[str, Any]]:
    """Does sampling improve with steps? One row per generative model, split / test set and
    step count: the **one-sample** Dice (no ensemble, no TTA) as mean ± std over the seeds
    (a step count not evaluated for every seed of the model is left out), its change from
    the fewest-steps value, and whether the whole curve up to that step count stays within
    ``tolerance`` of the fewest-steps value (:func:`segflow.metrics.verdicts.refinement_check`:
    the largest drop from the start, not step by step — a steady fall fails); clDice and the
    β0 error (mean over seeds) show what the steps do to the topology."""
    by: dict[tuple[str, str], dict[int, dict[int, Evaluation]]] = defaultdict(lambda: defaultdict(dict))
    for ev in evals:
        steps, n_samples, tta = ev.key
        if not generative.get(ev.model) or steps is None or (n_samples or 1) != 1 or tta != 1:
            continue
        by[(ev.model, ev.test_set)][int(steps)][ev.seed] = ev
    rows = []
    for (model, label), curve in sorted(by.items(), key=lambda kv: (kv[0][1] != "val", kv[0])):
        seeds = sorted(set().union(*(set(per_seed) for per_seed in curve.values())))
        curve = {steps: per_seed for steps, per_seed in curve.items() if set(per_seed) >= set(seeds)}
        means = {steps: mean_std([float(curve[steps][s].metrics["dice"]) for s in seeds])
                 for steps in sorted(curve)}
        checks = running_refinement({k: v[0] for k, v in means.items()}, "dice", tolerance)
        first = means[min(means)][0] if means else None
        for steps, check in zip(sorted(means), checks, strict=True):
            evs = [curve[steps][s] for s in seeds]
            dice, std = means[steps]
            rows.append({"test_set": label, "model": model, "steps": steps,
                         "nfe_per_image": float(np.mean([e.nfe for e in evs])), "seeds": len(seeds),
                         "dice": dice, "dice_std": std,
                         **{k: float(np.mean([float(e.metrics.get(k, np.nan)) for e in evs]))
                            for k in ("dice_per_image", "cldice", "betti0_error")},
                         "change_from_fewest_steps": None if steps == min(means) else dice - first,
                         "largest_drop": check.largest_drop, "refines": check.refines})
    return rows


def refinement_markdown(rows: list[dict[str, Any]]) -> str:
    """The refinement rows as one Markdown table."""
    if not rows:
        return ""
    shown = [{"split / test set": r["test_set"], "model": r["model"], "steps": r["steps"],
              "NFE": f"{r['nfe_per_image']:g}", "seeds": r["seeds"],
              "1-sample Dice": f"{r['dice']:.3f} ± {r['dice_std']:.3f}",
              "per-image Dice": f"{r['dice_per_image']:.3f}", "clDice": f"{r['cldice']:.3f}",
              "β0 err": f"{r['betti0_error']:.1f}",
              "Δ from fewest steps": ("" if r["change_from_fewest_steps"] is None
                                      else f"{r['change_from_fewest_steps']:+.3f}"),
              f"refines so far (largest drop ≤ {REFINE_TOLERANCE:g})": "yes" if r["refines"] else "no"}
             for r in rows]
    return ("**Refinement: one-sample Dice against sampling steps** (mean ± std over seeds; "
            f"no ensemble, no TTA; {REFINEMENT_RULE})\n\n" + markdown_table(shown))


def write_refinement(out: Path, rows: list[dict[str, Any]]) -> Path | None:
    """``refinement.csv`` beside compare.csv (nothing when no generative curve exists)."""
    if not rows:
        return None
    out.mkdir(parents=True, exist_ok=True)
    return write_csv(out / "refinement.csv", rows, list(REFINEMENT_COLUMNS))
