"""`debug=default` is a smoke check of every model preset at its own network size: fit,
validation, test, checkpoints and metrics.json, with generative sampling capped; and the
same for `segflow.eval` / `segflow.predict`."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import cv2
import pytest
import torch
from hydra import compose, initialize_config_dir

from segflow.methods import Diffusion, FlowMatching, Supervised

from conftest import CONF, run_dirs, run_entry

PRESETS = sorted(p.stem for p in (CONF / "model").glob("[!_]*.yaml"))  # _segmodule: the base
# The GPU-sized presets (22 M-parameter ADM U-Net, full MedSegDiff) need about a minute
# each on 2 CPU cores: they run with `pytest -m slow`.
SLOW = {"flow", "medsegdiff"}
# Fewer synthetic images than the default (generated once per module); the images keep
# their 256 px, so validation/test use debug's 128 px central crops.
DATA = ["data.synthetic.n_train=4", "data.synthetic.n_val=2", "data.synthetic.n_test=2"]
CAPS = {"steps": 2, "n_samples": 1}  # conf/debug/default.yaml's debug.sampling


def preset_method(name: str) -> dict:
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return dict(compose("train", overrides=[f"model={name}"]).model.method)


@pytest.fixture(scope="module")
def debug_work(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("debug")
    (work / "outputs").mkdir()
    (work / "data").mkdir()
    return work


class DebugRuns:
    def __init__(self, work: Path):
        self.work, self.runs = work, {}

    def get(self, model: str) -> tuple[Path, str]:
        """(run folder, stdout+stderr) of `segflow.train model=<model> debug=default`."""
        if model not in self.runs:
            # A refinement preset starts from a supervised run: the csnet run of this module.
            prior = ([f"model.method.prior_run={self.get('csnet')[0]}"]
                     if "prior_run" in preset_method(model) else [])
            proc = run_entry("segflow.train", [f"model={model}", "debug=default", *DATA, *prior],
                             self.work, timeout=600)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
            (run,) = [r for r in run_dirs(self.work) if r.parent.name == f"{model}_synthetic_xca"]
            self.runs[model] = (run, proc.stdout + proc.stderr)
        return self.runs[model]


@pytest.fixture(scope="module")
def debug_runs(debug_work) -> DebugRuns:
    return DebugRuns(debug_work)


@pytest.mark.parametrize("model", [pytest.param(m, marks=pytest.mark.slow) if m in SLOW else m
                                   for m in PRESETS])
def test_every_preset_runs_end_to_end_under_trainer_debug(debug_runs, model):
    run, output = debug_runs.get(model)
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "train.log").is_file()
    for name in ("best.ckpt", "last.ckpt"):
        assert (run / "checkpoints" / name).is_file()
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["model"] == model and summary["epochs"] == 1 and summary["global_step"] == 2
    assert summary["effective_batch_size"] == 2
    assert summary["best_val_dice"] is not None and math.isfinite(summary["best_val_dice"])
    test = summary["test"]
    for key in ("dice", "cldice", "auc", "seconds_per_image"):
        assert math.isfinite(test[key]), (key, test)
    assert 0.0 <= test["dice"] <= 1.0

    method = preset_method(model)
    lowered = {k: v for k, v in CAPS.items() if k in method and (method[k] is None or method[k] > v)}
    log = (run / "train.log").read_text()
    if "steps" in method:  # generative: sampled with the capped settings (+ a prior's pass)
        prior_pass = 1 if "prior_run" in method else 0
        assert test["nfe"] == min(CAPS["steps"], method["steps"] or math.inf) + prior_pass
        assert test["n_samples"] == 1
    else:
        assert test["nfe"] == 1
    capped = [line for line in log.splitlines() if "debug=default: sampling capped" in line]
    assert len(capped) == (1 if lowered else 0), capped
    if lowered:
        assert all(f"{k}={v}" in capped[0] for k, v in lowered.items()), capped
    # The checkpoint keeps the preset's own settings: evaluating it later samples as configured.
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    stored = ckpt["segflow_config"]["model"]["method"]
    assert {k: stored.get(k) for k in CAPS} == {k: method.get(k) for k in CAPS}
    assert "Traceback" not in output


def test_eval_and_predict_under_trainer_debug(debug_runs, debug_work, tmp_path):
    """A generative run (flow_small: an ensemble of 4) evaluated and used for prediction with
    debug=default: 2 images, central 128 px, one member, at most 2 steps, one log line each."""
    run, _ = debug_runs.get("flow_small")
    proc = run_entry("segflow.eval", [f"run_dir={run}", "debug=default"], debug_work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (out,) = [p for p in (run / "eval").iterdir() if p.name.startswith("test")]
    assert "n_samples-1" in out.name and "steps-2" in out.name  # the capped settings' tag
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == 2 and metrics["settings"]["steps"] == 2
    assert metrics["metrics"]["nfe"] == 2 and math.isfinite(metrics["metrics"]["dice"])
    probs = sorted((out / "images").glob("*_prob.png"))
    assert len(probs) == 2 and cv2.imread(str(probs[0]), cv2.IMREAD_UNCHANGED).shape[:2] == (128, 128)
    eval_log = next((run / "eval" / "logs").rglob("eval.log")).read_text()
    preset = preset_method("flow_small")
    assert preset["n_samples"] > CAPS["n_samples"]  # so the cap has something to lower
    assert (f"debug=default: sampling capped to n_samples={CAPS['n_samples']} "
            f"(was n_samples={preset['n_samples']})") in eval_log

    images = debug_work / "data" / "synthetic" / "xca_s0_256px" / "train" / "image"
    assert len(list(images.iterdir())) == 4
    proc = run_entry("segflow.predict", [f"run_dir={run}", f"input_dir={images}",
                                         f"output_dir={tmp_path / 'pred'}", "debug=default"],
                     debug_work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    with open(tmp_path / "pred" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and {r["nfe"] for r in rows} == {"2"}  # trainer.limit_predict_batches
    assert {(r["height"], r["width"]) for r in rows} == {("128", "128")}
    assert "debug=default: sampling capped" in (tmp_path / "pred" / "predict.log").read_text()


def test_capped_lowers_only_the_settings_a_method_has():
    flow = FlowMatching(steps=10, n_samples=4, solver="heun")
    capped, lowered = flow.capped(steps=2, n_samples=1, eta=0)
    assert (capped.steps, capped.n_samples, capped.solver) == (2, 1, "heun")
    assert lowered == {"steps": (10, 2), "n_samples": (4, 1)} and flow.steps == 10
    same, lowered = FlowMatching(steps=1).capped(steps=2, n_samples=1)
    assert same.steps == 1 and lowered == {}
    full = Diffusion(timesteps=50, sampler="ddpm", steps=None)  # None: the whole chain
    capped, lowered = full.capped(steps=2)
    assert capped.steps == 2 and capped.grid() == [49, 24] and lowered == {"steps": (None, 2)}
    supervised = Supervised()
    assert supervised.capped(steps=2, n_samples=1) == (supervised, {})
