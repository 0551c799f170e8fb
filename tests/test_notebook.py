"""The analysis notebook runs end to end (nbclient) on a tiny run's evaluation and report."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import nbformat
from hydra import compose, initialize_config_dir
from nbclient import NotebookClient
from omegaconf import OmegaConf

from segflow.engine.evaluation import evaluate
from segflow.infra.commands import open_key_overrides
from segflow.reports.tables import write_report

from conftest import CONF, ROOT, run_dirs, run_entry


def _execute_notebook(monkeypatch, eval_dir: Path, report_dir: Path, cwd: Path) -> list:
    """Run notebooks/analysis.ipynb on an evaluation folder and a report (raises on a cell
    error); the outputs of its code cells."""
    monkeypatch.setenv("SEGFLOW_EVAL_DIR", str(eval_dir))
    monkeypatch.setenv("SEGFLOW_REPORT_DIR", str(report_dir))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the kernel imports this checkout's segflow
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(ROOT / "notebooks" / "analysis.ipynb", as_version=4)
    NotebookClient(nb, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(cwd)}}).execute()  # raises on error
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


def test_analysis_notebook_executes(tiny_runs, tmp_path, monkeypatch):
    run = tiny_runs.get("toy_flow")
    monkeypatch.setenv("SEGFLOW_DATA_DIR", str(tiny_runs.workdir / "data"))
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("eval", overrides=open_key_overrides([
            f"run_dir={run}", "trainer=cpu", f"output_dir={tmp_path / 'eval'}",
            "grid.steps=[1,2]"]))
    evaluate(cfg)
    report = write_report([run], tmp_path / "report")
    outputs = _execute_notebook(monkeypatch, tmp_path / "eval" / "test_n_samples-2_solver-euler_steps-2",
                                report, tmp_path)
    assert not [o for o in outputs if o.get("output_type") == "error"]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 3  # predictions grid, topology scatter, dice-vs-NFE plot
    markdown = "".join(o["data"].get("text/markdown", "") for o in outputs if "data" in o)
    assert "| run | model | data | dice |" in markdown  # the report table
    assert "| name | dice | cldice |" in markdown  # per-image results
    assert "| n_samples | steps | solver | dice |" in markdown  # the grid
    text = "".join(o.get("text", "") for o in outputs)
    assert "toy_flow on synthetic_xca/test" in text


def test_a_debug_run_is_evaluated_on_whole_images_and_the_notebook_runs(workdir, monkeypatch):
    """debug=default validates/tests on 128 px crops, but keeps that out of the run's data
    config: a plain segflow.eval of the run scores whole 256 px images (and says so in
    metrics.json), and the notebook, which lays predictions over the labels, runs on it."""
    data = ["data.synthetic.n_train=2", "data.synthetic.n_val=1", "data.synthetic.n_test=2",
            "model.net.base_channels=4", "model.net.depth=2"]
    proc = run_entry("segflow.train", ["model=unet", "debug=default", *data], workdir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (run,) = run_dirs(workdir)
    stored = OmegaConf.load(run / ".hydra" / "config.yaml")
    assert stored.data.get("eval_crop") is None and stored.debug.data.eval_crop == 128
    proc = run_entry("segflow.eval", [f"run_dir={run}", "trainer=cpu"], workdir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (out,) = [p for p in (run / "eval").iterdir() if p.name.startswith("test")]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["crop"] is None and metrics["n_images"] == 2
    prob = cv2.imread(str(next((out / "images").glob("*_prob.png"))), cv2.IMREAD_UNCHANGED)
    assert prob.shape[:2] == (256, 256)  # the whole synthetic image, not the debug crop

    monkeypatch.setenv("SEGFLOW_DATA_DIR", str(workdir / "data"))
    report = write_report([run], workdir / "report")
    outputs = _execute_notebook(monkeypatch, out, report, workdir)
    assert not [o for o in outputs if o.get("output_type") == "error"]
