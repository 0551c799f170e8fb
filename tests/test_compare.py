"""make compare / segflow.compare: train, grid-evaluate the generative runs, one merged table."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from segflow.compare import spearman

from conftest import TINY, run_entry

FLOW_TINY = [t for t in TINY if not t.startswith("model.net.")] + [
    "model.net.model_channels=8", "model.net.channel_mult=[1,2]", "model.net.num_blocks=1",
    "model.net.attn_resolutions=[]", "model.net.image_size=32", "model.net.num_head_channels=8"]


def test_spearman_matches_closed_forms():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # d = (0, 0, 1, -1): rho = 1 - 6*2 / (4*15) = 0.8
    assert spearman([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(0.8)
    assert spearman([1, 1, 1], [1, 2, 3]) is None and spearman([1, 2], [2, 1]) is None


def test_compare_merges_families_trained_separately(workdir):
    grid = ["--steps", "1,2", "--samples", "1,2"]
    first = run_entry("segflow.compare", ["--data", "synthetic_xca", "--models", "unet,medsegdiff_small",
                                          *grid, *TINY, "trainer=debug"], workdir, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    # flow_small's own test (2 steps x 4 members, capped by trainer=debug to 2 x 1) is not
    # in this grid: it joins the table.
    second = run_entry("segflow.compare", ["--data", "synthetic_xca", "--models", "flow_small",
                                           "--steps", "1", "--samples", "1,2", *FLOW_TINY,
                                           "trainer=debug"], workdir, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    reports = sorted((workdir / "outputs" / "compare" / "compare_synthetic_xca").glob("*/compare.csv"))
    assert reports, second.stdout[-2000:]
    with reports[-1].open() as f:
        rows = list(csv.DictReader(f))
    by_model: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_model.setdefault(row["model"], []).append(row)
    # The second invocation's table holds the first one's runs too.
    assert set(by_model) == {"unet", "medsegdiff_small", "flow_small"}
    assert len(by_model["unet"]) == 1 and by_model["unet"][0]["nfe_per_image"] in ("1", "1.0")
    expected = {"medsegdiff_small": {("1", "1"), ("1", "2"), ("2", "1"), ("2", "2")},
                "flow_small": {("1", "1"), ("1", "2"), ("2", "1")}}
    for model in ("medsegdiff_small", "flow_small"):
        settings = [(r["steps"], r["n_samples"]) for r in by_model[model]]
        assert sorted(settings) == sorted(expected[model]), settings
        for r in by_model[model]:
            assert float(r["nfe_per_image"]) == int(r["steps"]) * int(r["n_samples"])
            # trainer=debug tests two images: too few for a rank correlation (it needs 3)
            assert r["spearman_uncertainty_error"] == ""
    for r in rows:
        assert 0.0 <= float(r["dice"]) <= 1.0 and not math.isnan(float(r["auc"]))
        assert float(r["params_m"]) > 0 and float(r["fit_minutes"]) >= 0
    assert (reports[-1].parent / "compare.md").read_text().count("| flow_small |") == 3
    # ensembles record the per-image uncertainty the correlation is computed from
    flow_run = Path(by_model["flow_small"][0]["run"])
    per_image = sorted(flow_run.glob("eval/*/per_image.csv"))
    assert per_image and any("mean_uncertainty" in p.read_text().splitlines()[0] for p in per_image)


def test_recipe_sweep_script_reports_each_recipe_under_the_grid(workdir):
    """docs/scripts/recipe_sweep.sh at toy size: the flow family's two recipes are trained
    (joblib, two at a time), each sampled under the grid, and the report tells them apart."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "SEGFLOW_OUTPUT_DIR": str(workdir / "outputs"),
           "SEGFLOW_DATA_DIR": str(workdir / "data"), "PYTHONPATH": str(root),
           "PY": sys.executable, "FAMILIES": "flow", "JOBS": "2", "STEPS": "1,2", "SAMPLES": "1"}
    done = subprocess.run(["bash", str(root / "docs" / "scripts" / "recipe_sweep.sh"),
                           "data=synthetic_xca", *FLOW_TINY, "trainer=debug"],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (report,) = (workdir / "outputs" / "multirun" / "recipe_flow").glob("*/report")
    with (report / "report.csv").open() as f:
        runs = {r["run"]: r for r in csv.DictReader(f)}
    assert sorted(r["model.method.time_sampling"] for r in runs.values()) == ["logit_normal", "uniform"]
    with (report / "evals.csv").open() as f:
        evals = list(csv.DictReader(f))
    assert sorted((e["run"], e["steps"], e["n_samples"]) for e in evals) == sorted(
        (run, steps, "1") for run in runs for steps in ("1", "2"))
    for e in evals:
        assert 0.0 <= float(e["dice"]) <= 1.0 and float(e["nfe_per_image"]) == int(e["steps"])
