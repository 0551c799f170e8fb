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
from segflow.reports.compare.protocol import Budgeted, Evaluation, describe, run_config
from segflow.runs.layout import EvalFolder
from segflow.runs.records import RunRecord
from segflow.runs.results import markdown_table, write_csv

#: Columns of compare.csv, in order.
COLUMNS = ("test_set", "model", "budget", "setting", "nfe_per_image", "seeds", "val_dice",
           "dice", "dice_std", "dice_per_image", "dice_per_image_std", "cldice", "betti0_error",
           "betti1_error", "auc", "ece", "reference", "delta_dice", "delta_low", "delta_high",
           "verdict", "rho_uncertainty_error", "rho_low", "rho_high", "seconds_per_image",
           "fit_minutes", "params_m", "steps", "n_samples", "tta")
MEANS = ("cldice", "betti0_error", "betti1_error", "auc", "ece", "seconds_per_image")


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


def build_rows(choices: list[Budgeted], tests: list[Evaluation], generative: dict[str, bool],
               n_boot: int = 4000) -> list[dict[str, Any]]:
    """Rows of the table (see :mod:`segflow.compare`)."""
    index: dict[tuple[str, str, tuple], dict[int, Evaluation]] = defaultdict(dict)
    for ev in tests:
        index[(ev.test_set, ev.model, ev.key)][ev.seed] = ev
    # The reference at each budget: the supervised model val ranks first there.
    reference: dict[float, Budgeted] = {}
    for c in choices:
        if not generative.get(c.model) and (c.budget not in reference
                                            or c.val_dice > reference[c.budget].val_dice):
            reference[c.budget] = c
    params: dict[str, float] = {}
    rows = []
    for label in sorted({ev.test_set for ev in tests}):
        for c in choices:
            evals = index.get((label, c.model, c.key), {})
            if not evals:
                continue
            seeds = sorted(evals)
            run = evals[seeds[0]].run
            if c.model not in params:
                params[c.model] = round(count_params(run_config(run)) / 1e6, 3)
            dice = mean_std([float(evals[s].metrics["dice"]) for s in seeds])
            dice_img = mean_std([float(evals[s].metrics.get("dice_per_image", np.nan)) for s in seeds])
            records = [RunRecord.read(evals[s].run, strict=False) for s in seeds]
            fits = [r.fit_seconds for r in records if r is not None and r.fit_seconds is not None]
            row: dict[str, Any] = {
                "test_set": label, "model": c.model, "budget": c.budget, "setting": describe(c.key),
                "nfe_per_image": float(np.mean([evals[s].nfe for s in seeds])), "seeds": len(seeds),
                "val_dice": c.val_dice, "dice": dice[0], "dice_std": dice[1],
                "dice_per_image": dice_img[0], "dice_per_image_std": dice_img[1],
                **{k: float(np.mean([float(evals[s].metrics[k]) for s in seeds]))
                   for k in MEANS if all(k in evals[s].metrics for s in seeds)},
                "fit_minutes": round(float(np.mean(fits)) / 60, 1) if fits else None,
                "params_m": params[c.model],
                "steps": c.key[0], "n_samples": c.key[1], "tta": c.key[2]}
            ref = reference.get(c.budget)
            if ref is not None and ref.model != c.model:
                ref_evals = index.get((label, ref.model, ref.key), {})
                paired = [s for s in seeds if s in ref_evals]
                images = _common_images([evals[s] for s in paired] + [ref_evals[s] for s in paired])
                a = _grid(evals, paired, images, "dice") if paired and images else None
                b = _grid(ref_evals, paired, images, "dice") if paired and images else None
                if a is not None and b is not None:
                    ci = paired_difference(a, b, n_boot=n_boot)
                    row.update(reference=ref.model, delta_dice=ci.estimate, delta_low=ci.low,
                               delta_high=ci.high, verdict=ci.verdict())
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
    return rows


def _pm(row: dict[str, Any], key: str, digits: int = 3) -> str:
    if row.get(key) in (None, ""):
        return ""
    std = row.get(f"{key}_std")
    return f"{row[key]:.{digits}f}" + (f" ± {std:.{digits}f}" if row.get("seeds", 1) > 1 else "")


def _ci(row: dict[str, Any], key: str, low: str, high: str) -> str:
    if row.get(key) in (None, ""):
        return ""
    return f"{row[key]:+.3f} [{row[low]:+.3f}, {row[high]:+.3f}]"


def markdown(rows: list[dict[str, Any]]) -> str:
    """One Markdown table per test set."""
    out = []
    for label in dict.fromkeys(r["test_set"] for r in rows):
        shown = []
        for r in (r for r in rows if r["test_set"] == label):
            shown.append({
                "model": r["model"], "NFE budget": f"{r['budget']:g}", "setting (val)": r["setting"],
                "NFE": f"{r['nfe_per_image']:g}", "val Dice": f"{r['val_dice']:.3f}",
                "Dice": _pm(r, "dice"), "per-image Dice": _pm(r, "dice_per_image"),
                "clDice": f"{r['cldice']:.3f}" if "cldice" in r else "",
                "β0 err": f"{r['betti0_error']:.1f}" if "betti0_error" in r else "",
                "β1 err": f"{r['betti1_error']:.1f}" if "betti1_error" in r else "",
                "AUC": f"{r['auc']:.3f}" if "auc" in r else "",
                "ECE": f"{r['ece']:.3f}" if "ece" in r else "",
                "Δ per-image Dice vs ref [95 % CI]": (f"{_ci(r, 'delta_dice', 'delta_low', 'delta_high')}"
                                                      f" vs {r['reference']}" if r.get("reference") else ""),
                "verdict": r.get("verdict", ""),
                "ρ(uncertainty, error) [95 % CI]": _ci(r, "rho_uncertainty_error", "rho_low", "rho_high"),
                "s / image": f"{r['seconds_per_image']:.3f}" if "seconds_per_image" in r else "",
                "fit (min)": "" if r.get("fit_minutes") is None else f"{r['fit_minutes']:.1f}",
                "params (M)": f"{r['params_m']:.2f}"})
        out.append(f"**Test set: {label}**\n\n{markdown_table(shown)}")
    return "\n".join(out)


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
                      "dice_per_image", "cldice", "betti0_error", "change_from_fewer_steps", "refines")
#: A one-sample Dice that falls by at most this much from one step count to the next still
#: counts as non-decreasing.
REFINE_TOLERANCE = 0.005


def refinement_rows(evals: list[Evaluation], generative: dict[str, bool],
                    tolerance: float = REFINE_TOLERANCE) -> list[dict[str, Any]]:
    """Does sampling improve with steps? One row per generative model, split / test set and
    step count: the **one-sample** Dice (no ensemble, no TTA) as mean ± std over the seeds
    (a step count not evaluated for every seed of the model is left out), its change from
    the next-smaller step count, and whether the whole curve up to that step count is
    non-decreasing within ``tolerance``; clDice and the β0 error (mean over seeds) show what
    the steps do to the topology."""
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
        previous, ok = None, True
        for steps in sorted(curve):
            evs = [curve[steps][s] for s in seeds]
            dice, std = mean_std([float(e.metrics["dice"]) for e in evs])
            change = None if previous is None else dice - previous
            ok = ok and (change is None or change >= -tolerance)
            rows.append({"test_set": label, "model": model, "steps": steps,
                         "nfe_per_image": float(np.mean([e.nfe for e in evs])), "seeds": len(seeds),
                         "dice": dice, "dice_std": std,
                         **{k: float(np.mean([float(e.metrics.get(k, np.nan)) for e in evs]))
                            for k in ("dice_per_image", "cldice", "betti0_error")},
                         "change_from_fewer_steps": change, "refines": ok})
            previous = dice
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
              "Δ from fewer steps": ("" if r["change_from_fewer_steps"] is None
                                     else f"{r['change_from_fewer_steps']:+.3f}"),
              f"non-decreasing so far (±{REFINE_TOLERANCE:g})": "yes" if r["refines"] else "no"}
             for r in rows]
    return ("**Refinement: one-sample Dice against sampling steps** (mean ± std over seeds; "
            "no ensemble, no TTA)\n\n" + markdown_table(shown))


def write_refinement(out: Path, rows: list[dict[str, Any]]) -> Path | None:
    """``refinement.csv`` beside compare.csv (nothing when no generative curve exists)."""
    if not rows:
        return None
    out.mkdir(parents=True, exist_ok=True)
    return write_csv(out / "refinement.csv", rows, list(REFINEMENT_COLUMNS))
