"""make compare / segflow.compare: train, grid-evaluate the generative runs, one merged table."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from segflow.reports.compare import spearman

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


def test_compare_selects_on_val_tests_once_over_seeds_and_sites(workdir):
    """Two models × two seeds at toy size: val grids (TTA for U-Net, steps for flow), one
    chosen setting per NFE budget tested once on the own test set and on a second site,
    mean ± std over seeds, the paired bootstrap against U-Net, and the uncertainty column."""
    import shutil

    args = ["--data", "synthetic_xca", "--seeds", "0,1", "--nfe", "1,2", "--steps", "1,2",
            "--samples", "1", "--tta", "1,2"]
    # A second "site": the generated test images, mirrored, in a folder of their own.
    first = run_entry("segflow.train", ["model=unet", *TINY, "debug=default"], workdir)
    assert first.returncode == 0, first.stderr[-2000:]
    site = workdir / "other_site"
    shutil.copytree(workdir / "data" / "synthetic" / "xca_s0_64px" / "test", site / "test")
    for png in (site / "test").rglob("*.png"):
        import cv2

        cv2.imwrite(str(png), cv2.imread(str(png), cv2.IMREAD_UNCHANGED)[:, ::-1])
    also = ["--also-test", f"folder:{site}"]
    # The comparison trains into paths.output_root, not the environment's root, and finds
    # its runs there.
    root = workdir / "elsewhere"
    args += [f"paths.output_root={root}"]
    # The families one invocation each (their tiny nets take different keys), then one table.
    for model, tiny in (("unet", TINY), ("flow_small", FLOW_TINY)):
        done = run_entry("segflow.compare", [*args, "--models", model, *also, *tiny, "debug=default"],
                         workdir, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    assert len(list((root / "multirun" / "compare_synthetic_xca").rglob("metrics.json"))) >= 4
    assert not (workdir / "outputs" / "multirun" / "compare_synthetic_xca").exists()
    out = workdir / "table"
    page = workdir / "results.md"
    page.write_text("# Results\n\nKept by hand.\n")
    done = run_entry("segflow.compare", [*args, *also, "--report-only", "--out", str(out),
                                         "--into", str(page), "--adjust", "holm",
                                         "--margin", "dice=0.02,betti0=2"], workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    report = out / "compare.csv"
    with report.open() as f:
        rows = list(csv.DictReader(f))
    sets = {r["test_set"] for r in rows}
    assert sets == {"synthetic_xca", "folder@other_site"}, sets
    for r in rows:
        assert r["seeds"] == "2" and float(r["budget"]) in (1.0, 2.0) and r["budget_unit"] == "NFE"
        assert float(r["nfe_per_image"]) <= float(r["budget"])
        assert 0 <= float(r["dice"]) <= 1 and 0 <= float(r["dice_per_image"]) <= 1
        assert float(r["dice_std"]) >= 0 and r["val_dice"] != ""
        # cost: counted FLOPs per image, training FLOPs and parameters, the runs' commit
        assert float(r["gflops_per_image"]) > 0 and float(r["train_pflops"]) > 0
        assert float(r["params_m"]) > 0 and float(r["fit_minutes"]) >= 0
        assert re.fullmatch(r"[0-9a-f]{7}|unknown", r["commits"]), r["commits"]
        if r["model"] == "flow_small":  # compared with the reference supervised row
            assert r["reference"] == "unet" and r["design"] == "crossed"
            for m in ("dice", "cldice", "betti0_error", "betti1_error", "ece"):
                assert r[f"verdict_{m}"] in ("better", "equivalent", "worse", "inconclusive")
                assert float(r[f"low_{m}"]) <= float(r[f"delta_{m}"]) <= float(r[f"high_{m}"])
                assert 0 < float(r[f"p_{m}"]) <= float(r[f"p_holm_{m}"]) <= 1
        else:
            assert r["reference"] == "" and r["steps"] == ""
    # flow_small costs more FLOPs per NFE than U-Net: the FLOPs column is not the NFE column
    flow, unet = (next(r for r in rows if r["model"] == m and r["budget"] == "1.0"
                       and r["test_set"] == "synthetic_xca") for m in ("flow_small", "unet"))
    assert float(flow["gflops_per_image"]) != float(unet["gflops_per_image"])
    budget2 = {r["model"]: r for r in rows if r["test_set"] == "synthetic_xca" and r["budget"] == "2.0"}
    assert set(budget2) == {"unet", "flow_small"}
    # Each chosen setting is what val ranked first within the budget (mean over seeds).
    run_dirs = sorted((root / "multirun" / "compare_synthetic_xca").glob("*/*/metrics.json"))
    assert len(run_dirs) == 4
    val_dice: dict[tuple[str, str], list[float]] = {}
    for m in run_dirs:
        for ev in m.parent.glob("eval/*/metrics.json"):
            e = json.loads(ev.read_text())
            if e["split"] == "val":
                key = (e["model"], str(e["settings"].get("steps", e["settings"].get("tta", 1))))
                val_dice.setdefault(key, []).append(e["metrics"]["dice"])
    for model, grid_key in (("unet", "tta"), ("flow_small", "steps")):
        scores = {k[1]: sum(v) / len(v) for k, v in val_dice.items() if k[0] == model}
        assert set(scores) == {"1", "2"} and all(len(val_dice[(model, k)]) == 2 for k in scores)
        best = max(scores, key=lambda k: (scores[k], -int(k)))
        assert str(budget2[model][grid_key] or 1) == best, (model, scores, budget2[model])
    # Test evaluations: one per chosen setting per run per test set, nothing else.
    tests = [json.loads(p.read_text()) for m in run_dirs for p in m.parent.glob("eval/*/metrics.json")
             if json.loads(p.read_text())["split"] == "test"]
    chosen = {(r["model"], r["setting"]) for r in rows}
    assert len(tests) == len(chosen) * 2 * 2  # settings x seeds x test sets
    md = report.with_name("compare.md").read_text()
    assert "Commit `" in md and "--seeds 0,1" in md and "± " in md and "95 % CI" in md
    assert "verdict: equivalent if the 95 % CI" in md and "dice ±0.02" in md and "betti0_error ±2" in md
    assert "comparisons in this table; p-values Holm-adjusted" in md and "(trained at commit)" in md
    text = page.read_text()  # the page's section holds the same tables; the rest is kept
    assert text.startswith("# Results\n\nKept by hand.") and "<!-- segflow.compare compare_synthetic_xca -->" in text
    assert "**Test set: folder@other_site**" in text and "hardware:" in text
    # The one-sample step curve of the generative model on val, for both step counts.
    with (out / "refinement.csv").open() as f:
        curve = list(csv.DictReader(f))
    assert [(r["test_set"], r["model"], r["steps"]) for r in curve if r["test_set"] == "val"] == [
        ("val", "flow_small", "1"), ("val", "flow_small", "2")]
    # Test sets show the one-sample settings tested (here those val chose), never unet.
    assert {r["test_set"] for r in curve} <= {"val", *sets} and {r["model"] for r in curve} == {"flow_small"}
    assert all(r["seeds"] == "2" for r in curve) and "Refinement: one-sample Dice" in text


def test_update_section_replaces_only_its_own_block(tmp_path):
    from segflow.reports.compare.table import update_section

    page = tmp_path / "r.md"
    page.write_text("intro\n")
    update_section(page, "a", "table A v1")
    update_section(page, "b", "table B")
    update_section(page, "a", "table A v2")
    text = page.read_text()
    assert text.startswith("intro\n") and "table A v1" not in text
    assert text.index("table A v2") < text.index("table B") and text.count("segflow.compare a -->") == 2


def test_selection_follows_val_not_test():
    """choose_settings sees only val: a setting that is best on test but not on val loses."""
    from segflow.reports.compare.protocol import Evaluation, choose_settings

    def ev(split, steps, seed, dice, nfe):
        return Evaluation(Path("r"), "flow_small", seed, split, split, (steps, 1, 1),
                          {"dice": dice, "nfe_per_image": nfe}, Path("f"))

    val = [ev("val", 1, s, 0.70, 1) for s in (0, 1)] + [ev("val", 2, s, 0.75, 2) for s in (0, 1)] \
        + [ev("val", 4, 0, 0.90, 4)]  # 4 steps: one seed only, so it may not compete
    test_says_one_step_is_best = [ev("test", 1, s, 0.99, 1) for s in (0, 1)]
    chosen = {c.budget: c for c in choose_settings(val, [1.0, 2.0, 8.0])}
    assert chosen[1.0].key == (1, 1, 1) and chosen[2.0].key == (2, 1, 1)
    assert chosen[8.0].key == (2, 1, 1) and chosen[2.0].val_dice == 0.75
    (with_test,) = choose_settings(val + test_says_one_step_is_best, [2.0])
    assert with_test.key == (2, 1, 1) and with_test.val_dice == 0.75


def test_topology_selection_takes_the_fewest_fragments_within_the_dice_margin():
    from segflow.infra.errors import ConfigError
    from segflow.reports.compare.protocol import Evaluation, choose_settings

    def ev(steps, seed, dice, b0, gflops):
        return Evaluation(Path("r"), "flow_small", seed, "val", "val", (steps, 1, 1),
                          {"dice": dice, "betti0_error": b0, "nfe_per_image": steps,
                           "gflops_per_image": gflops}, Path("f"))

    val = [ev(1, s, 0.720, 17.0, 3.0) for s in (0, 1)]
    val += [ev(4, s, 0.712, 9.0, 12.0) for s in (0, 1)]   # within 0.01 of the best Dice
    val += [ev(8, s, 0.700, 5.0, 24.0) for s in (0, 1)]   # fewer fragments, but 0.02 below
    assert choose_settings(val, [8.0])[0].key == (1, 1, 1)  # --select dice
    (topo,) = choose_settings(val, [8.0], select="topology", dice_margin=0.01)
    assert topo.key == (4, 1, 1) and topo.val_dice == pytest.approx(0.712)
    (wide,) = choose_settings(val, [8.0], select="topology", dice_margin=0.05)
    assert wide.key == (8, 1, 1)
    # budgets in counted GFLOPs: 12 GFLOPs admits 1 and 4 steps, not 8
    (flops,) = choose_settings(val, [12.0], unit="GFLOPs", select="topology")
    assert flops.key == (4, 1, 1) and flops.unit == "GFLOPs"
    with pytest.raises(ConfigError, match="--select fewest: choose one of dice, topology"):
        choose_settings(val, [8.0], select="fewest")


def test_recipe_sweep_script_reports_each_recipe_under_the_grid(workdir):
    """docs/scripts/recipe_sweep.sh at toy size: the flow family's two recipes are trained
    (joblib, two at a time), each sampled under the grid on the val split, and the report
    tells them apart."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "SEGFLOW_OUTPUT_DIR": str(workdir / "outputs"),
           "SEGFLOW_DATA_DIR": str(workdir / "data"), "PYTHONPATH": str(root),
           "PY": sys.executable, "FAMILIES": "flow", "JOBS": "2", "STEPS": "1,2", "SAMPLES": "1"}
    done = subprocess.run(["bash", str(root / "docs" / "scripts" / "recipe_sweep.sh"),
                           "data=synthetic_xca", *FLOW_TINY, "debug=default"],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (report,) = (workdir / "outputs" / "multirun" / "recipe_flow").glob("*/report")
    with (report / "report.csv").open() as f:
        runs = {r["run"]: r for r in csv.DictReader(f)}
    assert sorted(str(r["model.method.recycle"]) for r in runs.values()) == ["0", "0.5"]
    with (report / "evals.csv").open() as f:
        evals = list(csv.DictReader(f))
    assert sorted((e["run"], e["steps"], e["n_samples"]) for e in evals) == sorted(
        (run, steps, "1") for run in runs for steps in ("1", "2"))
    for e in evals:
        assert 0.0 <= float(e["dice"]) <= 1.0 and float(e["nfe_per_image"]) == int(e["steps"])
        assert e["split"] == "val"


def test_refinement_rows_follow_the_one_sample_curve_over_common_seeds():
    from segflow.reports.compare.protocol import Evaluation
    from segflow.reports.compare.table import refinement_rows

    def ev(model, split, steps, n, seed, dice):
        return Evaluation(Path("r"), model, seed, split, split, (steps, n, 1),
                          {"dice": dice, "nfe_per_image": (steps or 1) * (n or 1)}, Path("f"))

    evals = [ev("flow", "val", 1, 1, s, 0.70 + 0.01 * s) for s in (0, 1)]
    evals += [ev("flow", "val", 2, 1, s, 0.696 + 0.01 * s) for s in (0, 1)]  # -0.004: within 0.005
    evals += [ev("flow", "val", 4, 1, s, 0.68 + 0.01 * s) for s in (0, 1)]   # -0.016: falls
    evals += [ev("flow", "val", 8, 1, 0, 0.99)]  # one seed only: not a point of the curve
    evals += [ev("flow", "val", 1, 4, s, 0.95) for s in (0, 1)]  # an ensemble: not one sample
    evals += [ev("unet", "val", None, None, s, 0.9) for s in (0, 1)]  # one-pass
    rows = refinement_rows(evals, {"flow": True, "unet": False})
    assert [r["steps"] for r in rows] == [1, 2, 4]
    assert rows[0]["dice"] == pytest.approx(0.705) and rows[0]["dice_std"] == pytest.approx(0.00707, abs=1e-4)
    assert rows[1]["change_from_fewest_steps"] == pytest.approx(-0.004)
    assert [r["refines"] for r in rows] == [True, True, False]
    # A steady fall of 0.004 per step count passes each step but not the whole curve.
    steady = [ev("flow", "val", k, 1, 0, 0.70 - 0.004 * i) for i, k in enumerate((1, 2, 4, 8))]
    assert [r["refines"] for r in refinement_rows(steady, {"flow": True})] == [True, True, False, False]


def test_side_study_evaluations_are_not_cells_of_the_comparison():
    from segflow.reports.compare.protocol import off_grid

    method = {"steps": 2, "n_samples": 4, "solver": "euler"}
    assert off_grid({"steps": 8, "n_samples": 1, "solver": "euler", "atol": 1e-4}, method) == []
    assert off_grid({"steps": 1, "solver": "euler", "temperature": 1.0}, method) == []
    assert off_grid({"steps": 1, "solver": "euler", "temperature": 0.5}, method) == ["temperature=0.5"]
    assert off_grid({"steps": 1, "solver": "heun"}, method) == ["solver=heun"]
    assert off_grid({"steps": 1, "temperature": 0.5}, {**method, "temperature": 0.5}) == []
