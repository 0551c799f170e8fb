"""The analysis notebook runs end to end (nbclient) on a tiny run's evaluation and report."""

from __future__ import annotations

import nbformat
from hydra import compose, initialize_config_dir
from nbclient import NotebookClient

from segflow.eval import evaluate
from segflow.report import write_report
from segflow.runs.checkpoints import open_key_overrides

from conftest import CONF, ROOT


def test_analysis_notebook_executes(tiny_runs, tmp_path, monkeypatch):
    run = tiny_runs.get("toy_flow")
    monkeypatch.setenv("SEGFLOW_DATA_DIR", str(tiny_runs.workdir / "data"))
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("eval", overrides=open_key_overrides([
            f"run_dir={run}", "trainer=cpu", f"output_dir={tmp_path / 'eval'}",
            "grid.steps=[1,2]"]))
    evaluate(cfg)
    report = write_report([run], tmp_path / "report")
    monkeypatch.setenv("SEGFLOW_EVAL_DIR", str(tmp_path / "eval" / "test_n_samples-2_solver-euler_steps-2"))
    monkeypatch.setenv("SEGFLOW_REPORT_DIR", str(report))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the kernel imports this checkout's segflow
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(ROOT / "notebooks" / "analysis.ipynb", as_version=4)
    NotebookClient(nb, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()  # raises on error
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 3  # predictions grid, topology scatter, dice-vs-NFE plot
    markdown = "".join(o["data"].get("text/markdown", "") for o in outputs if "data" in o)
    assert "| run | model | data | dice |" in markdown  # the report table
    assert "| name | dice | cldice |" in markdown  # per-image results
    assert "| n_samples | steps | solver | dice |" in markdown  # the grid
    text = "".join(o.get("text", "") for o in outputs)
    assert "toy_flow on synthetic_xca/test" in text
