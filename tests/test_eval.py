"""`python -m segflow.eval` on tiny trained runs: reproduction, grids, overrides, errors."""

from __future__ import annotations

import csv
import json

import cv2
import pytest
import torch
from hydra import compose, initialize_config_dir

from segflow.engine.evaluation import evaluate, grid_combinations
from segflow.infra.commands import open_key_overrides
from segflow.infra.errors import ConfigError
from segflow.runs.checkpoints import load_model

from conftest import CONF, TOY_ENV, assert_learned, run_entry


def _rows(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def test_eval_reproduces_the_best_checkpoints_validation_dice(tiny_runs):
    run = tiny_runs.get("unet")
    proc = run_entry("segflow.eval", [f"run_dir={run}", "split=val", "trainer=cpu"],
                     tiny_runs.workdir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = run / "eval" / "val"
    result = json.loads((out / "metrics.json").read_text())
    best = json.loads((run / "metrics.json").read_text())["best_val_dice"]
    assert result["best_val_score"] == pytest.approx(best)
    assert abs(result["metrics"]["dice"] - best) < 1e-4
    for key in ("cldice", "betti0_error", "betti1_error", "hd95", "ece", "auc", "nfe_per_image",
                "seconds_per_image"):
        assert key in result["metrics"], key
    rows = _rows(out / "per_image.csv")
    assert [r["name"] for r in rows] == ["0006.png", "0007.png"]
    per_image = sum(float(r["dice"]) for r in rows) / 2
    assert per_image == pytest.approx(result["metrics"]["dice_per_image"], abs=1e-6)
    assert {r["nfe_per_image"] for r in rows} == {"1"}
    for stem in ("0006", "0007"):
        prob = cv2.imread(str(out / "images" / f"{stem}_prob.png"), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(out / "images" / f"{stem}_mask.png"), cv2.IMREAD_UNCHANGED)
        assert prob.shape == mask.shape == (64, 64) and set(mask.ravel()) <= {0, 255}
    assert not list((out / "images").glob("*_uncertainty.png"))  # one-pass model
    assert "| images | dice |" in proc.stdout  # the printed table
    assert list((run / "eval" / "logs").glob("*/eval.log"))


def test_quality_cost_grid_over_a_generative_models_settings(tiny_runs):
    run = tiny_runs.get("toy_flow")
    proc = run_entry("segflow.eval", [f"run_dir={run}", "trainer=cpu", "grid.steps=[1,3]",
                                      "grid.n_samples=[1,2]", "grid.solver=[euler,heun]",
                                      "max_images=1"], tiny_runs.workdir, env=TOY_ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    grid = _rows(run / "eval" / "grid_test" / "grid.csv")
    assert len(grid) == 8
    for row in grid:
        steps, n, solver = int(row["steps"]), int(row["n_samples"]), row["solver"]
        per_member = steps * (2 if solver == "heun" else 1)
        assert float(row["nfe"]) == per_member and float(row["nfe_per_image"]) == per_member * n
        assert_learned(row)
        assert float(row["seconds_per_image"]) > 0
        for key in ("cldice", "betti0_error", "betti1_error"):
            assert row[key] != "", key
        # Topology-aware uncertainty exists for ensembles only.
        assert (row["betti0_std"] != "") == (n == 2)
        folder = run / "eval" / f"test_n_samples-{n}_solver-{solver}_steps-{steps}"
        assert (folder / "metrics.json").is_file() and (folder / "per_image.csv").is_file()
        pngs = sorted(p.name for p in (folder / "images").iterdir())
        assert pngs == (["0008_mask.png", "0008_prob.png"]
                        + (["0008_uncertainty.png"] if n == 2 else []))  # max_images=1
    plot = cv2.imread(str(run / "eval" / "grid_test" / "dice_vs_nfe.png"))
    assert plot is not None and plot.shape[1] > 300
    assert "| n_samples | steps | solver | dice |" in (run / "eval" / "grid_test" / "grid.md").read_text()


def test_a_grids_first_row_is_not_charged_for_warm_up(tiny_runs, tmp_path):
    # The network's first call takes 1 s longer (a one-off start-up cost): an untimed
    # warm-up pass takes it, so no row of the grid is charged for it.
    run = tiny_runs.get("toy_flow")
    proc = run_entry("segflow.eval", [f"run_dir={run}", "trainer=cpu", "grid.steps=[1,2]",
                                      "model.net.first_call_delay=1.0", "save_images=false",
                                      f"output_dir={tmp_path}"], tiny_runs.workdir, env=TOY_ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = _rows(tmp_path / "grid_test" / "grid.csv")
    assert [int(r["steps"]) for r in rows] == [1, 2]
    assert all(0 < float(r["seconds_per_image"]) < 0.25 for r in rows), rows
    (first,) = tmp_path.glob("test_*steps-1/metrics.json")
    timing = json.loads(first.read_text())["timing"]
    assert timing["device"].startswith("cpu (") and timing["warmup_passes"] == 1


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("eval", overrides=open_key_overrides(overrides))


def test_eval_on_another_dataset_with_model_overrides(tiny_runs, monkeypatch):
    run = tiny_runs.get("unet")
    monkeypatch.setenv("SEGFLOW_DATA_DIR", str(tiny_runs.workdir / "data"))
    out = tiny_runs.workdir / "octa_eval"
    cfg = _compose([f"run_dir={run}", "data=synthetic_octa", "data.synthetic.image_size=48",
                    "data.synthetic.n_train=1", "data.synthetic.n_val=1", "data.synthetic.n_test=2",
                    "data.num_workers=0", "model.threshold=0.3", "trainer=cpu",
                    f"output_dir={out}",
                    "save_images=false"])
    (summary,) = evaluate(cfg)
    (folder,) = out.glob("synthetic_octa-*_test")  # <data name>-<hash of its folder>_<split>
    result = json.loads((folder / "metrics.json").read_text())
    assert result["data"] == "synthetic_octa" and result["n_images"] == 2
    assert result["metrics"]["dice"] == pytest.approx(summary["dice"])
    assert not (folder / "images").exists()
    # model.threshold reached the rebuilt module: a lower threshold predicts more vessel.
    cfg_default = _compose([f"run_dir={run}", "data=synthetic_octa", "data.synthetic.image_size=48",
                            "data.synthetic.n_train=1", "data.synthetic.n_val=1",
                            "data.synthetic.n_test=2", "data.num_workers=0", "trainer=cpu",
                            f"output_dir={out}/default",
                            "save_images=false"])
    (default,) = evaluate(cfg_default)
    assert summary["sensitivity"] >= default["sensitivity"]
    assert summary["specificity"] <= default["specificity"]


def test_editing_data_root_moves_the_stored_split_folders(tiny_runs, tmp_path):
    """The stored config is resolved (``train_dir: <root>/train``); ``data.root=<new>``
    alone must read the splits under the new root (data moved, run from another machine)."""
    import shutil
    from pathlib import Path

    run = tiny_runs.get("unet")
    common = ["split=val", "trainer=cpu", "save_images=false"]
    (before,) = evaluate(_compose([f"run_dir={run}", *common, f"output_dir={tmp_path / 'a'}"]))
    split_dir = Path(json.loads((tmp_path / "a" / "val" / "metrics.json").read_text())["split_dir"])
    moved = tmp_path / "moved"
    shutil.copytree(split_dir.parent, moved)
    (after,) = evaluate(_compose([f"run_dir={run}", *common, f"data.root={moved}",
                                  f"output_dir={tmp_path / 'b'}"]))
    # other data (the moved copy): a folder of its own, <data name>-<hash>_val
    (folder,) = (tmp_path / "b").glob("*-*_val")
    result = json.loads((folder / "metrics.json").read_text())
    assert Path(result["split_dir"]) == moved / split_dir.name
    assert after["dice"] == pytest.approx(before["dice"])


def test_raw_and_ema_weights(tiny_runs):
    run = tiny_runs.get("toy_flow")  # trained with model.ema_decay
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    cfg = _compose([f"run_dir={run}"])
    ema, _, _ = load_model(cfg.run_dir, cfg.which, cfg.weights)
    cfg.weights = "raw"
    raw, _, meta = load_model(cfg.run_dir, cfg.which, cfg.weights)
    key = "net.body.0.weight"
    assert torch.equal(ema.state_dict()[key], ckpt["state_dict"][key])
    assert torch.equal(raw.state_dict()[key], ckpt["current_model_state"][key])
    assert not torch.equal(raw.state_dict()[key], ema.state_dict()[key])
    assert meta["checkpoint"].endswith("best.ckpt")


def test_grid_keys_are_checked_against_the_methods_settings():
    assert grid_combinations({"steps": [1, 2], "solver": "heun"}, ("n_samples", "steps", "solver")) == [
        {"steps": 1, "solver": "heun"}, {"steps": 2, "solver": "heun"}]
    with pytest.raises(ConfigError, match=r"grid.steps is not a sampling setting.*none \(one-pass"):
        grid_combinations({"steps": [1]}, ())


def test_bad_grid_key_stops_before_evaluating(tiny_runs, tmp_path):
    # The entry point prints a ConfigError as one sentence (exit 2), as segflow.train does.
    cfg = _compose([f"run_dir={tiny_runs.get('unet')}", "grid.steps=[1,2]", f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="grid.steps is not a sampling setting of this model"):
        evaluate(cfg)
    assert not any(p.name != "logs" for p in tmp_path.iterdir())


@pytest.mark.slow
def test_ddp_eval_on_two_cpu_processes_equals_single_process(tiny_runs, tmp_path):
    run = tiny_runs.get("unet")
    results = {}
    for name, extra in (("single", []), ("ddp", ["trainer.devices=2", "trainer.strategy=ddp"])):
        proc = run_entry("segflow.eval", [f"run_dir={run}", "trainer=cpu", f"output_dir={tmp_path / name}",
                                          *extra], tiny_runs.workdir)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        results[name] = json.loads((tmp_path / name / "test" / "metrics.json").read_text())
        assert [r["name"] for r in _rows(tmp_path / name / "test" / "per_image.csv")] == [
            "0008.png", "0009.png"]  # rows of both ranks gathered, each image once
    for key, value in results["single"]["metrics"].items():
        if key != "seconds_per_image":
            assert results["ddp"]["metrics"][key] == pytest.approx(value, abs=1e-6), key
