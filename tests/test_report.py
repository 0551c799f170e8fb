"""`python -m segflow.report` / `make report`: runs → CSV + Markdown tables and plots."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys

import cv2
import pytest
import yaml

from segflow.cli.report import main
from segflow.reporting import write_report
from segflow.runs.folders import find_runs

from conftest import ROOT, assert_learned


def _sweep(tiny_runs, tmp_path):
    """A multirun-shaped folder (sweep/0, sweep/1) holding copies of two real tiny runs,
    the toy run with two evaluations of different sampling cost."""
    sweep = tmp_path / "sweep"
    for i, model in enumerate(("unet", "toy_flow")):
        src = tiny_runs.get(model)
        shutil.copytree(src, sweep / str(i), ignore=shutil.ignore_patterns("checkpoints", "eval",
                                                                           "tensorboard"))
    # Make the overrides differ the way a sweep's do, and give the toy run two evaluations.
    over = sweep / "1" / ".hydra" / "overrides.yaml"
    over.write_text(yaml.safe_dump(yaml.safe_load(over.read_text()) + ["model.learning_rate=0.01"]))
    for steps, nfe in ((1, 2), (4, 8)):
        ev = sweep / "1" / "eval" / f"test_n_samples-2_solver-euler_steps-{steps}"
        ev.mkdir(parents=True)
        metrics = {"dice": 0.1 * steps, "cldice": 0.05 * steps, "nfe": steps, "nfe_per_image": nfe,
                   "seconds_per_image": 0.01 * nfe}
        (ev / "metrics.json").write_text(
            '{"model": "toy_flow", "data": "synthetic_xca", "split": "test", "settings": '
            f'{{"n_samples": 2, "solver": "euler", "steps": {steps}}}, "metrics": '
            + str(metrics).replace("'", '"') + "}")
    (sweep / "1" / "eval" / "logs" / "x" / ".hydra").mkdir(parents=True)  # not a run
    return sweep


def test_make_report_on_a_multirun_folder(tiny_runs, tmp_path):
    sweep = _sweep(tiny_runs, tmp_path)
    proc = subprocess.run(["make", "-s", "-C", str(ROOT), "report", f"RUNS={sweep}",
                           f"PY={sys.executable}"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = sweep / "report"
    with (out / "report.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["run"], r["model"]) for r in rows] == [("0", "unet"), ("1", "toy_flow")]
    # The override that differs is a column; those shared by both runs are not.
    assert [r["model.learning_rate"] for r in rows] == ["", "0.01"]
    assert "trainer" not in rows[0] and "model.net.base_channels" not in rows[0]
    for r in rows:
        assert_learned(r)
        assert r["cldice"] != "" and r["betti0_error"] != ""
    md = (out / "report.md").read_text()
    header = "| run | model | data | experiment_name | model.learning_rate | dice |"
    assert header in md and "| 1 | toy_flow | synthetic_xca | tiny_toy_flow | 0.01 |" in md
    assert header in proc.stdout
    with (out / "evals.csv").open() as f:
        evals = list(csv.DictReader(f))
    assert [(e["steps"], e["nfe_per_image"], e["dice"]) for e in evals] == [
        ("1", "2", "0.1"), ("4", "8", "0.4")]
    for png in ("metrics.png", "dice_vs_nfe.png"):
        img = cv2.imread(str(out / png))
        assert img is not None and img.shape[1] > 300, png


def test_report_of_run_folders_and_errors(tiny_runs, tmp_path, capsys):
    runs = find_runs([tiny_runs.get("unet")])
    assert runs == [tiny_runs.get("unet").resolve()]
    out = write_report([tiny_runs.get("unet")], tmp_path / "r")
    assert "| run | model | data | dice |" in (out / "report.md").read_text()  # no differing keys
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no runs"):
        find_runs([tmp_path / "empty"])
