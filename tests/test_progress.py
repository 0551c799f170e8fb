"""Progress bars on synthetic generation, prepare and long sampling loops (forced on with
SEGFLOW_PROGRESS=1, since tests do not run on a terminal)."""

from __future__ import annotations

import torch

from segflow.data.synthetic import ensure_synthetic
from segflow.infra.progress import sampling_progress
from segflow.methods.flow.solvers import solve


def test_synthetic_generation_shows_a_bar(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("SEGFLOW_PROGRESS", "1")
    ensure_synthetic(tmp_path / "syn", kind="xca", seed=0, image_size=32, n_train=2, n_val=1,
                     n_test=1)
    err = capfd.readouterr().err
    assert "synthetic xca" in err and "4/4" in err


def test_long_sampling_loops_show_a_bar_only_inside_sampling_progress(monkeypatch, capfd):
    monkeypatch.setenv("SEGFLOW_PROGRESS", "1")
    x = torch.zeros(1, 1, 2, 2)
    out, nfe = solve(lambda x, t: torch.ones_like(x), x, solver="euler", steps=60)
    assert capfd.readouterr().err == ""  # not asked for: no bar (e.g. inside a Trainer)
    with sampling_progress(min_steps=50):
        solve(lambda x, t: torch.ones_like(x), x, solver="euler", steps=10)  # short: none
        assert capfd.readouterr().err == ""
        out2, _ = solve(lambda x, t: torch.ones_like(x), x, solver="euler", steps=60)
    err = capfd.readouterr().err
    assert "euler ODE" in err and "/60" in err  # transient: erased when done
    assert torch.equal(out, out2) and nfe == 60


def test_bars_stay_off_when_disabled(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("SEGFLOW_PROGRESS", "0")
    ensure_synthetic(tmp_path / "syn", kind="xca", seed=0, image_size=32, n_train=1, n_val=1,
                     n_test=1)
    assert "synthetic" not in capfd.readouterr().err
