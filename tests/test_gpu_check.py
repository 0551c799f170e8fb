"""make gpu-check: CI only checks that every step composes (--dry-run) and that the JSON +
Markdown report is written; the real run needs a GPU."""

from __future__ import annotations

import json

from segflow.bench import check_steps as gpu_check
from segflow.bench.gpu_check import main


def test_gpu_check_dry_run_composes_every_step(tmp_path):
    assert main(["--dry-run", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == ["fused_attention", "options_flow", "options_medsegdiff", "flow_attn40",
                           "ddp", "drive_csnet_gpu", "drive_flow_gpu", "flow"]
    assert all(s["status"] == "composed" for s in steps.values()), steps
    assert steps["ddp"]["result"]["trainer"]["strategy"] == "ddp"
    assert steps["ddp"]["result"]["trainer"]["devices"] == -1  # every visible GPU
    assert steps["drive_csnet_gpu"]["result"]["model"] == "csnet"
    assert steps["drive_flow_gpu"]["result"]["model"] == "flow"
    for name in ("drive_csnet_gpu", "drive_flow_gpu"):  # a fixed budget, then the test set
        assert steps[name]["result"]["trainer"]["max_time"] is not None
        assert steps[name]["result"]["trainer"]["precision"] == "bf16-mixed"
    assert steps["flow"]["result"]["trainer"]["precision"] == "bf16-mixed"
    assert "bench=full" in steps["options_flow"]["result"]["command"]
    # each speed option measured alone, then together; compile only where it is worth its time
    assert steps["options_flow"]["result"]["variants"] == gpu_check.OPTION_VARIANTS
    assert not any("compile" in v for v in steps["options_medsegdiff"]["result"]["variants"])
    assert steps["flow_attn40"]["result"]["model_overrides"] == {
        "flow": {"net": {"attn_resolutions": [40]}}}
    assert "--kernels" not in steps["fused_attention"]["result"]["command"]  # flash,efficient
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| drive_flow_gpu | composed |" in md and report["meta"]["dry_run"]


def test_drive_minutes_sets_the_budget_of_the_drive_steps(tmp_path):
    assert main(["--dry-run", "--only", "drive_csnet_gpu,drive_flow_gpu", "--drive-minutes", "6",
                 "--out", str(tmp_path)]) == 0
    steps = json.loads((tmp_path / "gpu_check.json").read_text())["steps"]
    assert [s["result"]["trainer"]["max_time"] for s in steps] == ["00:00:06:00"] * 2
    assert all(s["timeout_s"] == 450 for s in steps)
    # the experiment's own schedule (not the short check's)
    assert steps[0]["result"]["trainer"]["max_epochs"] == 1500


def test_a_bad_option_variant_fails_the_dry_run(tmp_path, monkeypatch):
    bad = gpu_check.Step("options_flow", "segflow.bench",
                         ["bench=full", "train.variants=[bf16-mixed+turbo]"], 10)
    monkeypatch.setattr(gpu_check, "default_steps", lambda: [bad])
    assert main(["--dry-run", "--out", str(tmp_path)]) == 1
    (step,) = json.loads((tmp_path / "gpu_check.json").read_text())["steps"]
    assert step["status"] == "failed to compose" and "turbo" in step["note"]


def test_fused_attention_check_passes_on_an_allowed_kernel_and_fails_loudly_otherwise(tmp_path, capsys):
    """On CPU the flash kernel exists and the memory-efficient one does not: restricting
    SDPA to the latter is what a fallback on a GPU looks like."""
    from segflow.bench.fused_attention import main as fused

    common = ["--device", "cpu", "--size", "16", "--batch", "1", "--models", "flow_small",
              "model.net.model_channels=8", "model.net.channel_mult=[1,2]"]
    assert fused([*common, "--kernels", "flash", "--out", str(tmp_path / "ok")]) == 0
    (row,) = json.loads((tmp_path / "ok" / "fused_attention.json").read_text())
    assert row["ok"] and any("flash" in op for op in row["attention_ops"])
    assert fused([*common, "--kernels", "efficient", "--out", str(tmp_path / "bad")]) == 1
    (row,) = json.loads((tmp_path / "bad" / "fused_attention.json").read_text())
    assert not row["ok"] and row["error"].startswith("RuntimeError")
    assert "FAILED" in capsys.readouterr().err


def test_a_step_that_does_not_compose_fails_the_check(tmp_path, monkeypatch):
    bad = gpu_check.Step("flow", "segflow.train", ["model=nosuchpreset"], 10)
    monkeypatch.setattr(gpu_check, "default_steps", lambda: [bad])
    assert main(["--dry-run", "--out", str(tmp_path)]) == 1
    (step,) = json.loads((tmp_path / "gpu_check.json").read_text())["steps"]
    assert step["status"] == "failed to compose" and "nosuchpreset" in step["note"]


def test_markdown_lists_option_rows_fused_attention_and_time_to_dice():
    steps = [gpu_check.Step("options_flow", "segflow.bench", [], 1, status="ok", seconds=12.0),
             gpu_check.Step("fused_attention", "segflow.bench.fused_attention", [], 1, hydra=False,
                            status="ok", result={"models": [
                                {"model": "flow", "ok": True, "host_syncs": 0,
                                 "attention_ops": ["aten::_scaled_dot_product_flash_attention",
                                                   "aten::scaled_dot_product_attention"]}]}),
             gpu_check.Step("drive_csnet_gpu", "segflow.train", [], 1, status="ok", result={
                 "global_step": 800, "test_dice": 0.8123, "loader_wait_fraction": 0.031,
                 "time_to_dice": {"0.7": 20.5, "0.8": 71.0, "0.82": None}})]
    rows = [{"step": "options_flow", "model": "flow", "variant": "bf16-mixed+channels_last",
             "precision": "bf16-mixed", "batch": 16, "image_size": 320, "step_ms": 51.2,
             "images_per_s": 312.5, "peak_mem_mib": 20480.0, "mfu": 0.215, "error": None}]
    md = gpu_check.markdown(steps, rows, {"time": "t", "device": "1 x GPU", "torch": "2",
                                          "lightning": "2.6", "dry_run": False})
    assert ("| options_flow | flow | bf16-mixed+channels_last | 16 x 320 | 51.2 | 312.5 | 20 "
            "| 21.5% |  |") in md
    assert "| flow | True | aten::_scaled_dot_product_flash_attention | 0 |" in md
    assert "| 0.8123 | 20.5 / 71 / — | 3.1% |" in md


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
