"""`python -m segflow.report` / `make report`: runs → CSV + Markdown tables and plots."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser

import cv2
import numpy as np
import pytest
import yaml

from segflow.report import main
from segflow.reports.html import error_map, short_labels
from segflow.reports.tables import write_report
from segflow.runs.layout import find_runs

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
    # report.md names the runs as report.html does (short labels), with the folder key
    assert header in md and "| toy_flow | toy_flow | synthetic_xca | tiny_toy_flow | 0.01 |" in md
    assert "Runs (unet: 0; toy_flow: 1)" in md
    page = _Page()
    page.feed((out / "report.html").read_text())
    assert "unet" in page.cells and "toy_flow" in page.cells and "0" not in page.cells
    assert header in proc.stdout and "report: reading 2 runs" in proc.stdout
    assert "report: training curves of 2 runs" in proc.stdout  # progress while it runs
    with (out / "evals.csv").open() as f:
        evals = list(csv.DictReader(f))
    assert [(e["steps"], e["nfe_per_image"], e["dice"]) for e in evals] == [
        ("1", "2", "0.1"), ("4", "8", "0.4")]
    for png in ("metrics.png", "dice_vs_nfe.png"):
        img = cv2.imread(str(out / png))
        assert img is not None and img.shape[1] > 300, png
        _assert_vector_copies(out / png)


def _assert_vector_copies(png):
    """SVG and PDF beside the PNG: real files of their formats."""
    svg, pdf = png.with_suffix(".svg"), png.with_suffix(".pdf")
    assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text(), svg
    assert pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 1000, pdf


def test_report_of_run_folders_and_errors(tiny_runs, tmp_path, capsys):
    runs = find_runs([tiny_runs.get("unet")])
    assert runs == [tiny_runs.get("unet").resolve()]
    out = write_report([tiny_runs.get("unet")], tmp_path / "r")
    assert "| run | model | data | dice |" in (out / "report.md").read_text()  # no differing keys
    page = (out / "report.html").read_text()
    assert "prediction and error" in page and "uncertainty" not in page  # a supervised run
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no runs"):
        find_runs([tmp_path / "empty"])


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.scripts, self.links, self.cells = [], 0, [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        self.scripts += tag == "script"
        self.links += [v for k, v in attrs.items() if k in ("href", "src") and "//" in str(v)]

    def handle_data(self, data):
        self.cells.append(data.strip())


def test_report_html_with_curves_and_qualitative_panels(tiny_runs, tmp_path):
    runs = [tiny_runs.get("unet"), tiny_runs.get("toy_flow")]
    out = write_report(runs, tmp_path / "r")
    page = _Page()
    page.feed((out / "report.html").read_text())
    # Every image it shows is beside it (relative paths), and nothing comes from the network.
    assert page.images and all((out / src).is_file() for src in page.images), page.images
    assert page.scripts == 0 and page.links == []
    assert "curves.png" in page.images and "metrics.png" in page.images
    panels = sorted(p for p in page.images if p.startswith("panel_"))
    assert len(panels) == 2  # the tiny test split: two images (best and worst)
    assert "unet" in page.cells and "toy_flow" in page.cells  # short labels, not paths
    assert not any(str(tiny_runs.workdir) in c for c in page.cells if c.startswith("unet"))
    panel = cv2.imread(str(out / panels[0]))
    assert panel is not None and panel.shape[0] > 500  # the image row and a row per run
    for png in ("metrics.png", "curves.png", *panels):
        _assert_vector_copies(out / png)
    svgs = " ".join((out / p).with_suffix(".svg").read_text() for p in panels)
    assert "best of 2 by " in svgs and "worst of 2 by " in svgs  # titled panels
    assert "and uncertainty per run" in (out / "report.html").read_text()  # toy_flow samples
    # the rendered panel of a sampling run has a colour bar (its ticks) beside the uncertainty
    assert "uncertainty (std over members)" in svgs
    # Chosen by name: only that image.
    stem = panels[1].removeprefix("panel_").removesuffix(".png")
    out2 = write_report(runs, tmp_path / "r2", names=[f"{stem}.png"])
    assert sorted(p.name for p in out2.glob("panel_*.png")) == [f"panel_{stem}.png"]
    assert write_report(runs, tmp_path / "r3", pictures=False).joinpath("report.md").is_file()
    assert not (tmp_path / "r3" / "report.html").exists()


def test_error_map_colours_and_short_labels(tmp_path):
    pred = np.array([[1, 1], [0, 0]], bool)
    truth = np.array([[1, 0], [1, 0]], bool)
    assert error_map(pred, truth).tolist() == [[[255, 255, 255], [255, 0, 0]],
                                               [[0, 0, 255], [0, 0, 0]]]
    runs = []
    for name, model in (("a", "unet"), ("b", "unet"), ("c", "flow")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(f'{{"model": "{model}"}}')
        runs.append(tmp_path / name)
    over = {runs[0]: {"model.learning_rate": "0.1"}, runs[1]: {"model.learning_rate": "0.2"},
            runs[2]: {}}
    assert list(short_labels(runs, over).values()) == [
        "unet learning_rate=0.1", "unet learning_rate=0.2", "flow"]
    assert list(short_labels(runs).values()) == ["unet a", "unet b", "flow"]


def test_training_curves_from_a_csv_log(tmp_path):
    from segflow.reports.html import plot_curves, read_scalars

    run = tmp_path / "run"
    (run / "csv").mkdir(parents=True)
    (run / "metrics.json").write_text('{"model": "unet"}')
    (run / "csv" / "metrics.csv").write_text(
        "epoch,step,train/loss_step,val/dice\n0,0,1.5,\n0,1,1.2,\n0,1,,0.3\n1,3,0.9,\n1,3,,0.5\n")
    scalars = read_scalars(run)
    assert [(s, v) for s, _, v in scalars["train/loss_step"]] == [(0, 1.5), (1, 1.2), (3, 0.9)]
    assert [(s, v) for s, _, v in scalars["val/dice"]] == [(1, 0.3), (3, 0.5)]
    png = plot_curves(tmp_path / "curves.png", [run], {run: "unet"})
    assert png is not None and cv2.imread(str(png)).shape[1] > 500
    empty = tmp_path / "empty"
    empty.mkdir()
    assert plot_curves(tmp_path / "none.png", [empty], {empty: "x"}) is None
