"""make gpu-check: CI only checks that every step composes (--dry-run) and that the JSON +
Markdown report is written; the real run needs a GPU."""

from __future__ import annotations

import json

from segflow.bench import check_steps as gpu_check
from segflow.cli.gpu_check import main


def test_gpu_check_dry_run_composes_every_step(tmp_path):
    assert main(["--dry-run", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == ["bench", "ddp", "drive_csnet_gpu", "flow", "medsegdiff"]
    assert all(s["status"] == "composed" for s in steps.values()), steps
    assert steps["ddp"]["result"]["trainer"]["strategy"] == "ddp"
    assert steps["ddp"]["result"]["trainer"]["devices"] == -1  # every visible GPU
    assert steps["drive_csnet_gpu"]["result"]["model"] == "csnet"
    assert steps["flow"]["result"]["trainer"]["precision"] == "bf16-mixed"
    assert "bench=full" in steps["bench"]["result"]["command"]
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| medsegdiff | composed |" in md and report["meta"]["dry_run"]


def test_a_step_that_does_not_compose_fails_the_check(tmp_path, monkeypatch):
    bad = gpu_check.Step("flow", "segflow.train", ["model=nosuchpreset"], 10)
    monkeypatch.setattr(gpu_check, "default_steps", lambda: [bad])
    assert main(["--dry-run", "--out", str(tmp_path)]) == 1
    (step,) = json.loads((tmp_path / "gpu_check.json").read_text())["steps"]
    assert step["status"] == "failed to compose" and "nosuchpreset" in step["note"]


def test_markdown_lists_bench_rows_with_mfu():
    steps = [gpu_check.Step("bench", "segflow.bench", [], 1, status="ok", seconds=12.0)]
    rows = [{"model": "flow", "precision": "bf16-mixed", "ema": True, "batch": 16,
             "image_size": 320, "step_ms": 51.2, "images_per_s": 312.5, "mfu": 0.215,
             "error": None}]
    md = gpu_check.markdown(steps, rows, {"time": "t", "device": "1 x GPU", "torch": "2",
                                          "lightning": "2.6", "dry_run": False})
    assert "| flow | bf16-mixed | True | 16 x 320 | 51.2 | 312.5 | 21.5% |  |" in md


def test_a_failed_step_is_noted_by_its_error_and_its_output_kept(tmp_path):
    from segflow.bench.check_steps import error_line, write_output

    out = ("Traceback (most recent call last):\n  File \"x.py\", line 1\n"
           "RuntimeError: Expected both inputs to be Half, Float or Double tensors\n\n"
           "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.\n"
           "[segflow][INFO] - shutting down\n")
    assert error_line(out).startswith("RuntimeError: Expected both inputs")
    assert error_line("just a line\n\n") == "just a line"
    write_output(tmp_path / "ddp.log", b"out", "err")
    assert (tmp_path / "ddp.log").read_text() == "out\n--- stderr ---\nerr"
