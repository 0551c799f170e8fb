"""The Python API (segflow.load_run, Run.predict, SegModule.load_from_checkpoint) and the one
preprocessing: predict's probabilities equal eval's for a CLAHE dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import segflow
from segflow.data.preprocess import Preprocess
from segflow.engine.evaluation import build_datamodule
from segflow.engine.module import SegModule
from segflow.inference.prediction import predict_folder
from segflow.runs.checkpoints import load_model
from segflow.runs.results import to_uint8

from conftest import TINY, run_dirs, run_entry


@pytest.fixture(scope="session")
def clahe_run(tmp_path_factory):
    """A tiny U-Net trained on synthetic data with CLAHE (data.intensity.clahe)."""
    work = tmp_path_factory.mktemp("clahe_run")
    (work / "outputs").mkdir()
    (work / "data").mkdir()
    proc = run_entry("segflow.train", [*TINY, "debug=default", "trainer.max_epochs=1",
                                       "+data.intensity.clahe=2.0", "experiment_name=clahe"], work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run,) = run_dirs(work)
    return run


def _eval_probs(run) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Per test image: the probabilities segflow.eval's Trainer computes (same path)."""
    cfg = OmegaConf.create({"run_dir": str(run), "which": "best", "weights": "ema", "model": {}})
    module, stored, _ = load_model(cfg.run_dir, cfg.which, cfg.weights)
    datamodule, _ = build_datamodule(OmegaConf.create({}), stored, "test")
    datamodule.setup("test")
    probs, files = {}, {}
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            pred = module(batch["image"], module.eval_generator(batch))
            for i, name in enumerate(batch["name"]):
                probs[name] = pred.probs[i, 0].numpy()
                files[name] = str(datamodule.split_dirs["test"] / datamodule.image_dir / name)
    return probs, files


def test_predict_equals_eval_on_a_clahe_dataset(clahe_run, tmp_path):
    assert (clahe_run / "preprocess.json").is_file()
    expected, files = _eval_probs(clahe_run)
    run = segflow.load_run(clahe_run)
    assert run.preprocess.intensity == {"clahe": 2.0}
    for name, probs in expected.items():
        got = run.predict(files[name])
        assert got.probabilities.shape == probs.shape
        assert np.abs(got.probabilities - probs).max() <= 1e-6, name
        assert np.array_equal(got.mask, probs > run.threshold)
        assert got.uncertainty is None  # one-pass model
    # Without the run's CLAHE the model would see other pixels (what predict used to do).
    name = next(iter(expected))
    plain = Preprocess(run.preprocess.channels, run.preprocess.gray_from, {}, 0.5, 0.5)
    other = run.predict_tensor(plain(files[name])[None]).probs[0, 0].numpy()
    assert np.abs(other - expected[name]).max() > 1e-3
    # segflow.predict (the command) writes the same probabilities.
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / name).write_bytes(open(files[name], "rb").read())
    cfg = OmegaConf.create({"run_dir": str(clahe_run), "input_dir": str(inp),
                            "output_dir": str(tmp_path / "out"), "which": "best",
                            "weights": "ema", "device": "cpu", "seed": 0, "model": {}})
    predict_folder(cfg)
    import cv2

    png = cv2.imread(str(tmp_path / "out" / f"{name.rsplit('.', 1)[0]}_prob.png"),
                     cv2.IMREAD_UNCHANGED)
    assert np.array_equal(png, to_uint8(torch.from_numpy(expected[name])))


def test_load_run_accepts_arrays_checkpoints_and_segmodule_loads(clahe_run):
    ckpt = next((clahe_run / "checkpoints").glob("*.ckpt"))
    run = segflow.load_run(ckpt, threshold=0.3)
    assert run.threshold == 0.3 and run.checkpoint == ckpt
    rng = np.random.default_rng(0)
    gray = (rng.random((40, 52)) * 255).astype(np.uint8)
    out = run.predict(gray)
    assert out.probabilities.shape == out.mask.shape == (40, 52)
    assert np.array_equal(out.probabilities, run.predict(np.repeat(gray[..., None], 3, 2)
                                                         ).probabilities)  # gray = RGB of it
    assert np.array_equal(out.mask, out.probabilities > 0.3)
    with pytest.raises(ValueError, match="not one of|no sampling setting"):
        run.predict(gray, steps=4)  # a one-pass model has no sampling settings
    module = SegModule.load_from_checkpoint(ckpt)
    assert isinstance(module, SegModule) and not module.training
    ref = run.module.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in module.state_dict().items())


def test_load_run_of_a_generative_model_gives_uncertainty(tiny_runs):
    run = segflow.load_run(tiny_runs.get("toy_flow"))
    before = dict(run.sampling_settings)
    image = (np.random.default_rng(1).random((32, 32)) * 255).astype(np.uint8)
    out = run.predict(image, n_samples=3)
    assert out.samples.shape == (3, 32, 32) and out.uncertainty.shape == (32, 32)
    assert np.isfinite(out.uncertainty).all() and (out.uncertainty >= 0).all()
    again = run.predict(image, n_samples=3)  # seeded: reproducible
    assert np.array_equal(out.probabilities, again.probabilities)
    assert run.sampling_settings == before  # the call's settings do not stick


def test_predict_takes_stacks_lists_and_folders_batched(tiny_runs, tmp_path):
    import cv2

    run = segflow.load_run(tiny_runs.get("unet"))
    rng = np.random.default_rng(2)
    stack = (rng.random((3, 24, 40)) * 255).astype(np.uint8)
    one = [run.predict(img) for img in stack]  # one image per call
    for batch_size in (1, 2, 8):
        many = run.predict(stack, batch_size=batch_size)
        assert isinstance(many, list) and [m.name for m in many] == ["#0", "#1", "#2"]
        for a, b in zip(many, one, strict=True):
            np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-5)
    rgb = run.predict(np.repeat(stack[..., None], 3, axis=3))  # (N, H, W, 3)
    np.testing.assert_allclose(rgb[1].probabilities, one[1].probabilities, atol=1e-5)

    folder = tmp_path / "imgs"
    folder.mkdir()
    # Two sizes: batched by size, returned in input order.
    for i, img in enumerate([stack[0], cv2.resize(stack[1], (32, 32)), stack[2]]):
        cv2.imwrite(str(folder / f"im{i}.png"), img)
    sizes = [(24, 40), (32, 32), (24, 40)]
    (folder / "notes.txt").write_text("not an image")
    from_folder = run.predict(folder, batch_size=4)
    assert [o.name for o in from_folder] == ["im0.png", "im1.png", "im2.png"]
    assert [o.probabilities.shape for o in from_folder] == sizes
    paths = [folder / "im2.png", str(folder / "im0.png")]
    from_list = run.predict(paths)
    assert [o.name for o in from_list] == ["im2.png", "im0.png"]
    np.testing.assert_allclose(from_list[1].probabilities, from_folder[0].probabilities,
                               atol=1e-5)
    np.testing.assert_allclose(from_folder[0].probabilities, one[0].probabilities, atol=1e-5)
    single = run.predict(folder / "im1.png")
    assert not isinstance(single, list) and single.name == "im1.png"
    mixed = run.predict([stack[0], folder / "im1.png"])
    np.testing.assert_allclose(mixed[0].probabilities, one[0].probabilities, atol=1e-5)


def test_predict_of_a_generative_model_batches_with_uncertainty(tiny_runs):
    run = segflow.load_run(tiny_runs.get("toy_flow"))
    stack = np.random.default_rng(3).random((2, 16, 24)).astype(np.float32)
    outs = run.predict(stack, n_samples=3)
    assert [o.samples.shape for o in outs] == [(3, 16, 24)] * 2
    assert all(o.uncertainty.shape == (16, 24) for o in outs)
    first = run.predict(stack[0], n_samples=3)  # the first of a batch: the same noise
    np.testing.assert_allclose(outs[0].probabilities, first.probabilities, atol=1e-5)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((0, 0)), "has no pixels"),
    (np.zeros((2, 3, 4, 5, 6)), "neither an (H, W[, C]) image nor an (N, H, W[, C]) stack"),
    (np.array(["a.png", "b.png"]), "not pixels"),
    (["missing_a.png", "missing_b.png"], "item 0 of the list, missing_a.png, is not an image file"),
    ([], "empty list"),
    ([np.zeros((4, 4)), 3], "item 1 of the list is a int"),
    (42, "Run.predict got a int; it takes an (H, W[, C]) image array"),
    ("no_such_file.png", "no_such_file.png does not exist"),
])
def test_predict_refuses_other_inputs_with_one_sentence(tiny_runs, bad, message):
    from segflow.infra.errors import DataError

    run = segflow.load_run(tiny_runs.get("unet"))
    with pytest.raises(DataError) as err:
        run.predict(bad)
    assert message in str(err.value) and "got shape (2,)" not in str(err.value)


def test_load_run_is_listed_by_dir_and_all():
    assert "load_run" in segflow.__all__ and "load_run" in dir(segflow)
    assert callable(segflow.load_run)


def test_repr_of_a_run_says_what_it_is(tiny_runs):
    run = segflow.load_run(tiny_runs.get("toy_flow"))
    text = repr(run)
    assert text.startswith("Run(toy_flow: ToyDenoiser + ToyFlow, data=synthetic_xca, checkpoint=")
    assert "best.ckpt" in text and "device=cpu" in text and "threshold=0.5" in text
    assert "n_samples=2" in text and "steps=2" in text and " object at 0x" not in text
