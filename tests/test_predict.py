"""`python -m segflow.predict`: new images of any size → mask, probability, uncertainty PNGs."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from segflow.inference.prediction import predict_folder
from segflow.infra.commands import open_key_overrides
from segflow.infra.errors import DataError

from conftest import CONF, run_entry


def _images(folder, broken: bool = False):
    folder.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(folder / "rgb.png"), (rng.random((50, 70, 3)) * 255).astype(np.uint8))
    cv2.imwrite(str(folder / "gray.jpg"), (rng.random((33, 41)) * 255).astype(np.uint8))
    if broken:
        (folder / "broken.png").write_bytes(b"not an image")
    return folder


def test_predict_folder_of_any_size_images_from_the_command_line(tiny_runs, tmp_path):
    run = tiny_runs.get("unet")
    inp = _images(tmp_path / "new", broken=True)
    out = tmp_path / "masks"
    proc = run_entry("segflow.predict", [f"run_dir={run}/checkpoints/last.ckpt", f"input_dir={inp}",
                                         f"output_dir={out}", "device=cpu"], tiny_runs.workdir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for stem, shape in (("rgb", (50, 70)), ("gray", (33, 41))):
        mask = cv2.imread(str(out / f"{stem}_mask.png"), cv2.IMREAD_UNCHANGED)
        prob = cv2.imread(str(out / f"{stem}_prob.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == prob.shape == shape  # cropped back to the input size
        assert set(np.unique(mask)) <= {0, 255}
        # The mask is the thresholded probability.
        assert np.array_equal(mask == 255, prob > 127.5)
    assert not list(out.glob("*_uncertainty.png"))  # one-pass model
    with (out / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == ["gray.jpg", "rgb.png"]
    assert "skipped 1 unreadable: broken.png" in proc.stdout + proc.stderr
    assert "predicting" in proc.stdout  # the progress bar
    assert (out / "predict.log").is_file()


def _cfg(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("predict", overrides=open_key_overrides(overrides))


def test_predict_ensemble_writes_uncertainty_and_topology_spread(tiny_runs, tmp_path):
    run = tiny_runs.get("toy_flow")
    inp = _images(tmp_path / "new")
    out = tmp_path / "pred"
    rows = predict_folder(_cfg([f"run_dir={run}", f"input_dir={inp}", f"output_dir={out}",
                                "device=cpu", "model.method.n_samples=3",
                                "model.method.solver=heun"]))
    assert [r["name"] for r in rows] == ["gray.jpg", "rgb.png"]
    assert all(r["n_samples"] == 3 and r["nfe"] == 4 for r in rows)  # heun, 2 steps
    assert all(r["betti0_std"] >= 0 and r["mean_uncertainty"] > 0 for r in rows)
    unc = cv2.imread(str(out / "rgb_uncertainty.png"), cv2.IMREAD_UNCHANGED)
    assert unc.shape == (50, 70) and unc.max() > 0


def test_predict_missing_input_folder_is_a_clear_error(tiny_runs, tmp_path):
    with pytest.raises(DataError, match="is not a folder"):
        predict_folder(_cfg([f"run_dir={tiny_runs.get('unet')}", f"input_dir={tmp_path}/nope"]))
