"""Known-harmless library messages are silenced at one place (segflow.infra.quiet), by name; a
debug run's logs hold no warning lines, and a real warning still shows."""

from __future__ import annotations

import logging
import warnings

from segflow.infra import quiet

from conftest import TOY_ENV, fake_srun_env, run_entry


def _warning_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if "WARNING" in ln or "Warning:" in ln or "Tip:" in ln]


def test_debug_runs_of_an_ema_model_log_no_warnings(tiny_runs):
    # trained and evaluated with a fake srun on PATH outside a SLURM job (see TinyRuns)
    run = tiny_runs.get("toy_flow")  # ema_decay: 0.9, so the test stage loads an EMA checkpoint
    log = (run / "train.log").read_text()
    assert "test:" in log and _warning_lines(log) == []
    before = set((run / "eval" / "logs").rglob("eval.log"))  # the shared toy run: other tests evaluate it too
    proc = run_entry("segflow.eval", [f"run_dir={run}", "debug=default"], tiny_runs.workdir,
                     env={**TOY_ENV, **fake_srun_env(tiny_runs.workdir / "bin")}, unset=("SLURM_",))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (eval_log,) = set((run / "eval" / "logs").rglob("eval.log")) - before
    assert "dice" in eval_log.read_text() and _warning_lines(eval_log.read_text()) == []
    assert _warning_lines(proc.stdout + proc.stderr) == []


def test_only_the_named_messages_are_silenced(caplog, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    names = quiet.install()
    assert set(names) == {h.name for h in quiet.HARMLESS}
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        quiet._INSTALLED.clear()
        quiet.install()  # on top of "default", as the entry points do
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning,
                      stacklevel=1)
        warnings.warn("You're using the WeightAveraging callback, but loading a checkpoint "
                      "outside the 'fit' stage. ...", UserWarning, stacklevel=1)
        warnings.warn("a real problem: the learning rate is NaN", UserWarning, stacklevel=1)
        warnings.warn("`isinstance(x, Other)` is deprecated", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["a real problem: the learning rate is NaN",
                                              "`isinstance(x, Other)` is deprecated"]
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    with caplog.at_level(logging.INFO):
        rank_zero.info("💡 Tip: try our cloud")
        rank_zero.info("GPU available: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False"]


def test_the_srun_hint_is_silenced_outside_a_slurm_job_only(tmp_path, monkeypatch):
    from lightning_fabric.plugins.environments import SLURMEnvironment

    monkeypatch.setenv("PATH", fake_srun_env(tmp_path)["PATH"])
    for var in ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_JOB_NAME"):
        monkeypatch.delenv(var, raising=False)
    seen = {}
    for where, job in (("outside", None), ("inside", "123")):
        if job:
            monkeypatch.setenv("SLURM_JOB_ID", job)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            quiet._INSTALLED.clear()
            quiet.install()
            SLURMEnvironment._validate_srun_used()
        seen[where] = [str(w.message) for w in caught]
    quiet._INSTALLED.clear()
    assert seen["outside"] == []
    assert len(seen["inside"]) == 1 and "prepend your python command with `srun`" in seen["inside"][0]
