"""A run stopped by a configuration error before training leaves no run folder."""

from __future__ import annotations

from segflow.runs.failed import holds_results

from conftest import TINY, run_entry


def test_a_bad_value_leaves_no_run_folder(workdir):
    proc = run_entry("segflow.train", [*TINY, "debug=default", "data.train_bs=0",
                                       "experiment_name=bad"], workdir)
    assert proc.returncode == 2, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert "data.train_bs=0 is not valid" in out and "Traceback" not in out
    runs = workdir / "outputs" / "runs"
    assert not (runs / "bad").exists(), list(runs.rglob("*"))


def test_only_folders_with_nothing_of_value_count_as_unstarted(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("a: 1\n")
    (run / "train.log").write_text("error\n")
    (run / "tensorboard").mkdir()
    assert not holds_results(run)
    (run / "console.log").write_text("a background run's output\n")
    assert holds_results(run)
    (run / "console.log").unlink()
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert holds_results(run)
