"""runs/layout.py and runs/records.py: where outputs go, and the checked records of runs and
evaluations (with the commit they were written at)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from segflow.infra.errors import ConfigError
from segflow.runs.layout import (
    EvalFolder,
    Layout,
    NoRuns,
    RunFolder,
    find_runs,
    log_name,
    prediction_dir,
    run_dir,
    sweep_dir,
)
from segflow.runs.records import (
    EvalRecord,
    RecordError,
    RunRecord,
    commit,
    read_run_config,
    upgrade_targets,
)


def _run(folder: Path, **record) -> Path:
    RunFolder(folder).hydra.mkdir(parents=True)
    RunFolder(folder).config.write_text("model:\n  name: unet\nseed: 3\n")
    RunRecord(model="unet", **record).write(folder)
    return folder


def test_layout_folders_follow_the_output_root_of_the_command_line(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGFLOW_OUTPUT_DIR", str(tmp_path / "env"))
    assert Layout.at().root == tmp_path / "env"
    given = Layout.from_overrides(["model=unet", f"paths.output_root={tmp_path / 'x'}"])
    assert given.root == tmp_path / "x"
    assert given.sweeps("cmp") == tmp_path / "x" / "multirun" / "cmp"
    assert given.comparison("cmp", "t") == tmp_path / "x" / "compare" / "cmp" / "t"
    assert Layout.from_overrides(["seed=1"]).root == tmp_path / "env"
    with pytest.raises(ConfigError, match="experiment_name='a/b' cannot be a folder name"):
        given.run("a/b", "t")


def test_run_and_sweep_folders_are_claimed_once_each(tmp_path):
    first = run_dir(str(tmp_path), "exp", "2026-01-01_00-00-00")
    second = run_dir(str(tmp_path), "exp", "2026-01-01_00-00-00")
    assert Path(first).is_dir() and second == first + "_1"
    assert Path(sweep_dir(str(tmp_path), "sw", "t")) == tmp_path / "multirun" / "sw" / "t"


def test_a_prediction_folder_names_its_input_and_refuses_overwrites(tmp_path):
    run = _run(tmp_path / "run")
    (tmp_path / "in").mkdir()
    import cv2
    import numpy as np

    cv2.imwrite(str(tmp_path / "in" / "a.png"), np.zeros((8, 8), np.uint8))
    out = prediction_dir(None, str(run), str(tmp_path / "in"))
    assert out.parent == run / "predict" and re.fullmatch(r"in-[0-9a-f]{6}", out.name)
    given = tmp_path / "given"
    given.mkdir()
    (given / "a_mask.png").write_text("keep")
    with pytest.raises(ConfigError, match="already holds a_mask.png"):
        prediction_dir(str(given), str(run), str(tmp_path / "in"))
    assert prediction_dir(str(given), str(run), str(tmp_path / "in"), True) == given
    assert log_name("train", 0) == "train.log" and log_name("train", 3) == "train_rank3.log"


def test_a_run_record_round_trips_and_names_its_commit(tmp_path):
    run = _run(tmp_path / "run", global_step=7, test={"dice": 0.5},
               extra={"time_to_dice": {"metric": "val/dice"}})
    data = json.loads(RunFolder(run).metrics.read_text())
    assert data["global_step"] == 7 and data["time_to_dice"] == {"metric": "val/dice"}
    sha = data["commit"]["sha"]
    assert sha == "unknown" or re.fullmatch(r"[0-9a-f]{40}", sha)
    back = RunRecord.read(run)
    assert back.test == {"dice": 0.5} and back.extra["time_to_dice"]["metric"] == "val/dice"
    assert back.commit == data["commit"]


def test_outside_a_checkout_the_commit_is_unknown(tmp_path):
    assert commit(tmp_path) == {"sha": "unknown", "dirty": None}


def test_a_damaged_record_is_one_sentence_or_skipped_with_a_warning(tmp_path, capsys):
    run = _run(tmp_path / "run")
    RunFolder(run).metrics.write_text(json.dumps({"test": {"dice": "high"}}))
    with pytest.raises(RecordError, match=r'metrics.json: "test" is dict .* not an object of metric'):
        RunRecord.read(run)
    assert RunRecord.read(run, strict=False) is None
    assert "warning: skipped" in capsys.readouterr().err
    RunFolder(run).metrics.write_text("{not json")
    with pytest.raises(RecordError, match="not readable JSON"):
        RunRecord.read(run)


def test_an_eval_record_keeps_unknown_keys_and_checks_its_metrics(tmp_path):
    folder = tmp_path / "eval" / "test"
    folder.mkdir(parents=True)
    EvalRecord(split="test", settings={"steps": 2}, metrics={"dice": 0.7},
               extra={"checkpoint": "best.ckpt"}).write(folder)
    back = EvalRecord.read(folder)
    assert back.settings == {"steps": 2} and back.extra == {"checkpoint": "best.ckpt"}
    assert back.nfe == 1.0 and back.commit["sha"]
    EvalFolder(folder).metrics.write_text(json.dumps({"metrics": [1, 2]}))
    with pytest.raises(RecordError, match='"metrics" is list'):
        EvalRecord.read(folder)


def test_find_runs_skips_failed_runs_and_says_when_there_are_none(tmp_path, capsys):
    good = _run(tmp_path / "runs" / "a")
    bad = _run(tmp_path / "runs" / "b")
    RunFolder(bad).failed.write_text("boom\n")
    assert find_runs([tmp_path / "runs"]) == [good.resolve()]
    assert "marked FAILED" in capsys.readouterr().err
    with pytest.raises(NoRuns, match="does not exist"):
        find_runs([tmp_path / "nowhere"])


def test_configs_of_older_runs_load_under_the_moved_module_paths(tmp_path):
    old = {"_target_": "segflow.lit_module.SegModule",
           "optimizer": {"_target_": "segflow.optim.param_groups", "_partial_": True},
           "net": {"_target_": "segflow.networks.UNet"}}
    new = upgrade_targets(old)
    assert new["_target_"] == "segflow.engine.module.SegModule"
    assert new["optimizer"]["_target_"] == "segflow.engine.optim.param_groups"
    assert new["net"]["_target_"] == "segflow.networks.UNet"
    from hydra.utils import get_class, get_method

    assert get_class(new["_target_"]).__name__ == "SegModule"
    assert callable(get_method(new["optimizer"]["_target_"]))
    run = _run(tmp_path / "run")
    RunFolder(run).config.write_text(OmegaConf.to_yaml({"model": old}))
    assert read_run_config(run).model._target_ == "segflow.engine.module.SegModule"
    assert read_run_config(tmp_path / "nowhere") is None


def test_a_comparison_refuses_data_without_a_test_split(tmp_path):
    from segflow.infra.errors import DataError
    from segflow.reports.compare.protocol import check_test_split

    (tmp_path / "d" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match=r"d/test does not exist; a comparison reports a test"):
        check_test_split("folder", [f"data.root={tmp_path / 'd'}"])
    (tmp_path / "d" / "test").mkdir()
    check_test_split("folder", [f"data.root={tmp_path / 'd'}"])
    check_test_split("synthetic_xca", [])  # generated with its own test split
