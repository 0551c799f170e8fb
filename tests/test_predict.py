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


def _fundus(folder, masks=None):
    """Two colour 'fundus' images: a bright textured disc on a black surround (+ its masks)."""
    folder.mkdir()
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:48, :56]
    disc = (yy - 24) ** 2 + (xx - 28) ** 2 < 20 ** 2
    for stem in ("01_test", "02_test"):
        img = (rng.random((48, 56, 3)) * 120 + 100).astype(np.uint8) * disc[..., None]
        cv2.imwrite(str(folder / f"{stem}.png"), img)
        if masks is not None:
            masks.mkdir(exist_ok=True)
            cv2.imwrite(str(masks / f"{stem}_mask.png"), disc.astype(np.uint8) * 255)
    return disc


def test_predict_with_a_field_of_view_leaves_no_rim(tiny_runs, tmp_path, caplog):
    import logging

    import segflow

    run = tiny_runs.get("unet")
    disc = _fundus(tmp_path / "in", masks=tmp_path / "fov")
    outside = {}
    for name, extra in (("none", []), ("dir", [f"fov_dir={tmp_path / 'fov'}"]), ("auto", ["fov=auto"])):
        out = tmp_path / f"out_{name}"
        with caplog.at_level(logging.INFO, logger="segflow.predict"):
            caplog.clear()
            rows = predict_folder(_cfg([f"run_dir={run}", f"input_dir={tmp_path / 'in'}",
                                        f"output_dir={out}", "device=cpu", *extra]), out)
        notes = [r.getMessage() for r in caplog.records if "converted to gray" in r.getMessage()]
        assert len(notes) == 1 and "ITU-R 601 luma" in notes[0]  # named once, not per image
        probs = [cv2.imread(str(out / f"{s}_prob.png"), cv2.IMREAD_UNCHANGED) for s in ("01_test", "02_test")]
        outside[name] = max(int(p[~disc].max()) for p in probs)
        assert all(int(p[disc].max()) > 0 for p in probs) and len(rows) == 2
    assert outside["none"] > 0  # the untrained net's probabilities reach beyond the disc
    assert outside["dir"] == outside["auto"] == 0  # no rim: nothing outside the field of view
    # the API: a mask file, or "auto"
    loaded = segflow.load_run(run)
    img = tmp_path / "in" / "01_test.png"
    for fov in (tmp_path / "fov" / "01_test_mask.png", "auto"):
        got = loaded.predict(img, fov=fov)
        assert got.fov is not None and np.array_equal(got.fov, disc)
        assert got.probabilities[~disc].max() == 0 and not got.mask[~disc].any()


def test_a_missing_field_of_view_mask_is_one_sentence(tiny_runs, tmp_path):
    _fundus(tmp_path / "in")
    (tmp_path / "fov").mkdir()
    cv2.imwrite(str(tmp_path / "fov" / "01_test.png"), np.zeros((48, 56), np.uint8))
    with pytest.raises(DataError, match=r"has no mask for 1 of the 2 images \(e.g. 02_test"):
        predict_folder(_cfg([f"run_dir={tiny_runs.get('unet')}", f"input_dir={tmp_path / 'in'}",
                             f"fov_dir={tmp_path / 'fov'}", f"output_dir={tmp_path / 'o'}"]))


def test_predict_help_is_specific_and_imports_no_torch(tmp_path):
    import subprocess
    import sys

    code = ("import sys; sys.argv = ['segflow-predict', '--help']; import segflow.predict as p; "
            "p.main(); print('torch loaded:', 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={**__import__("os").environ, "PYTHONPATH": str(CONF.parents[1])})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "segment a folder of new (unlabelled) images" in out
    for key in ("run_dir:", "input_dir:", "fov_dir:", "fov:", "device:", "model:"):
        assert f"\n  {key}" in out, key
    assert "trainer" not in out.split("Keys")[1].split("debug=default")[0]  # no groups that do not apply
    assert "torch loaded: False" in out  # so it prints at once
