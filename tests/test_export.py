"""segflow.export: TorchScript (and ONNX where installed) files that reproduce the PyTorch
network to 1e-4 on CPU, export.json beside them, and one-sentence refusals."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import segflow
from segflow.inference.export import export_network, load_torchscript, missing_onnx
from segflow.infra.errors import ConfigError
from segflow.networks import MedSegDiff

from conftest import ROOT, TOY_ENV, run_entry


def _export(run, workdir, *args, env=None):
    # The caller's PYTHONPATH stays visible (where an optional extra may be installed).
    paths = [(env or {}).get("PYTHONPATH", str(ROOT)), os.environ.get("PYTHONPATH", "")]
    env = {**(env or {}), "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    proc = run_entry("segflow.export", [f"run_dir={run}", *args], workdir, env=env)
    return proc, run / "export"


def test_torchscript_of_a_supervised_run_reproduces_run_predict(tiny_runs):
    run = tiny_runs.get("unet")
    proc, root = _export(run, tiny_runs.workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Warning" not in proc.stderr  # torch.jit's deprecation notices are not the user's
    out = root / "torchscript"
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["kind"] == "segmentation" and manifest["input_size"] is None
    assert manifest["max_abs_difference"] <= 1e-4 and manifest["preprocess"]["channels"] == 1
    scripted = load_torchscript(out / manifest["file"])

    # The file alone (no segflow network code) + export.json's preprocessing give the
    # probabilities of the Python API, at a size and batch other than the traced ones.
    loaded = segflow.load_run(run)
    rng = np.random.default_rng(0)
    images = rng.random((2, 40, 48)).astype(np.float32)
    pre = manifest["preprocess"]
    x = torch.from_numpy((images[:, None] - pre["mean"]) / pre["std"]).float()
    with torch.no_grad():
        probs = scripted(x).numpy()
    for i in range(2):
        want = loaded.predict(images[i]).probabilities
        np.testing.assert_allclose(probs[i, 0], want, atol=1e-4)
    with torch.no_grad():  # and the network itself, on unnormalised noise
        z = torch.randn(3, 1, 32, 56)
        np.testing.assert_allclose(scripted(z), torch.sigmoid(loaded.module.net(z)), atol=1e-4)


def test_generative_run_exports_the_denoiser_and_its_sampler_settings(tiny_runs):
    run = tiny_runs.get("toy_flow")
    proc, root = _export(run, tiny_runs.workdir, "model.method.steps=5", env=TOY_ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((root / "torchscript" / "export.json").read_text())
    assert manifest["kind"] == "denoiser" and list(manifest["inputs"]) == ["x_t", "t", "image"]
    assert manifest["method"]["sampling"] == {"n_samples": 2, "steps": 5, "solver": "euler"}
    assert manifest["method"]["target"] == "toy_generative.ToyFlow"
    scripted = load_torchscript(root / "torchscript" / "model.pt")
    net = segflow.load_run(run).module.net
    x_t, t, image = torch.randn(2, 1, 24, 40), torch.tensor([0.1, 0.8]), torch.randn(2, 1, 24, 40)
    with torch.no_grad():
        np.testing.assert_allclose(scripted(x_t, t, image), net(x_t, t, image), atol=1e-4)


def test_a_size_bound_network_is_exported_with_its_fixed_input_size(tmp_path):
    # MedSegDiff's FF-Parser maps are stored at one size: the traced graph keeps it.
    torch.manual_seed(0)
    net = MedSegDiff(in_channels=1, base_channels=4, channel_mult=[1, 2], attention=False,
                     fft_size=16)
    manifest = export_network(net, tmp_path, "torchscript", size=16)
    assert manifest["input_size"] == [16, 16] and manifest["max_abs_difference"] <= 1e-4
    scripted = load_torchscript(tmp_path / "model.pt")
    x_t, t, image = torch.randn(3, 1, 16, 16), torch.rand(3), torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        np.testing.assert_allclose(scripted(x_t, t, image), net(x_t, t, image), atol=1e-4)


@pytest.mark.skipif(not missing_onnx(), reason="onnx and onnxruntime are installed")
def test_onnx_without_the_extra_says_how_to_install_it(tiny_runs):
    run = tiny_runs.get("unet")
    proc, root = _export(run, tiny_runs.workdir, "format=onnx")
    assert proc.returncode == 2
    assert "format=onnx needs the" in proc.stderr
    assert "pip install 'segflow[export]'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (root / "onnx").exists()  # refused before any folder is made


@pytest.mark.skipif(bool(missing_onnx()), reason="needs the export extra (onnx, onnxruntime)")
def test_onnx_reproduces_pytorch(tiny_runs):
    import onnxruntime

    run = tiny_runs.get("unet")
    proc, root = _export(run, tiny_runs.workdir, "format=onnx")
    assert proc.returncode == 0, proc.stderr[-3000:]
    session = onnxruntime.InferenceSession(str(root / "onnx" / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    z = torch.randn(2, 1, 40, 48)
    got = session.run(None, {"image": z.numpy()})[0]
    with torch.no_grad():
        want = torch.sigmoid(segflow.load_run(run).module.net(z))
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_bad_format_and_missing_checkpoint_are_one_sentence(tiny_runs, tmp_path):
    run = tiny_runs.get("unet")
    proc, root = _export(run, tiny_runs.workdir, "format=tflite")
    assert proc.returncode == 2 and "format=tflite is not an export format" in proc.stderr
    assert not (root / "tflite").exists()
    empty = tmp_path / "empty_run"
    empty.mkdir()
    proc = run_entry("segflow.export", [f"run_dir={empty}"], tiny_runs.workdir)
    assert proc.returncode == 2 and "no checkpoint at" in proc.stderr
    assert "Traceback" not in proc.stderr and not (empty / "export").exists()
    # A failure after the folder was made (weights that do not fit) leaves no folder either.
    before = sorted(root.iterdir()) if root.is_dir() else []
    proc, root = _export(run, tiny_runs.workdir, "model.net.base_channels=8")
    assert proc.returncode == 2 and "do not fit" in proc.stdout + proc.stderr
    assert (sorted(root.iterdir()) if root.is_dir() else []) == before
    with pytest.raises(ConfigError, match="format=tflite"):
        export_network(torch.nn.Conv2d(1, 1, 1), tmp_path, "tflite")
