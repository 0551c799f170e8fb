"""Flow matching end to end: a CLI training run, then the same checkpoint sampled under a
grid of solver settings without retraining; the overfit check (slow)."""

from __future__ import annotations

import json
import time

import pytest
import torch
from hydra.utils import instantiate
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from segflow.engine.module import SegModule
from segflow.inference.window import predict_whole
from segflow.methods import FlowMatching
from segflow.metrics import VesselMetrics
from segflow.networks import ADMConcatUNet
from segflow.runs.checkpoints import load_model

from conftest import TINY, assert_learned, run_dirs, run_entry

# TINY without the U-Net's base_channels, plus a tiny ADM U-Net (attention at 1/2 of the
# 32 px crops) and a 2-step sampler with a 2-member ensemble. The preset's learning rate
# (2e-4, for 22 M parameters) leaves the x1 estimate of this tiny net empty after 4 steps;
# 1e-2 makes 4 steps enough for a mask (test Dice ~0.3, AUC ~0.8).
FLOW_TINY = [t for t in TINY if not t.startswith("model.net.")] + [
    "model=flow", "debug=default", "trainer.max_epochs=2", "model.net.model_channels=8",
    "model.net.channel_mult=[1,2]", "model.net.num_blocks=1", "model.net.attn_resolutions=[16]",
    "model.net.image_size=32", "model.net.num_head_channels=8", "model.method.steps=2",
    "model.method.n_samples=2", "model.ema_decay=0.9", "model.learning_rate=1e-2", "model.log_image_names=[0006.png]",
    "debug.sampling.n_samples=2",  # debug=default caps the ensemble at 1; 2 for the uncertainty
]


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("flow")
    (workdir / "outputs").mkdir()
    proc = run_entry("segflow.train", FLOW_TINY, workdir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (run,) = run_dirs(workdir)
    return workdir, run


def test_cli_run_with_a_two_step_sampler(flow_run):
    _, run = flow_run
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["model"] == "flow" and summary["global_step"] == 4
    assert_learned(summary["test"])
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    # EMA weights are what is checkpointed; the raw weights are kept for resuming.
    key = "net.input.weight"
    assert not torch.equal(ckpt["state_dict"][key], ckpt["current_model_state"][key])
    acc = EventAccumulator(str(next((run / "tensorboard").glob("events*"))),
                           size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    assert "train/mse" in acc.Tags()["scalars"] and "val/dice" in acc.Tags()["scalars"]
    grid = acc.Images("val_images/0006.png")[-1]
    # image | truth | prediction | uncertainty | error: five 64 px panels with 2 px gaps.
    assert grid.width == 5 * 64 + 4 * 2 and grid.height == 64


def test_one_checkpoint_sampled_under_a_grid_of_settings(flow_run):
    """Euler steps {1, 2, 5, 10} x ensemble {1, 4} (and other solvers) from one checkpoint,
    through load_module's overrides and through with_settings."""
    _, run = flow_run
    module, cfg, _ = load_model(run, which="last")
    weights = {k: v.clone() for k, v in module.state_dict().items()}
    dm = instantiate(cfg.data)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    for steps in (1, 2, 5, 10):
        for n in (1, 4):
            loaded, _, _ = load_model(run, which="last",
                                      overrides={"method.steps": steps, "method.n_samples": n})
            pred = predict_whole(loaded.method, loaded.net, batch["image"],
                                 generator=SegModule.eval_generator(batch))
            assert pred.nfe == steps and pred.samples.shape[1] == n
            assert (pred.uncertainty is None) == (n == 1)
            metrics = VesselMetrics()
            metrics.update(pred.probs, batch["mask"], batch["valid"])
            assert_learned(metrics.compute())
    # The same through with_settings on the already loaded module, same seeded noise.
    again = predict_whole(module.method.with_settings(steps=10, n_samples=4), module.net,
                          batch["image"], generator=SegModule.eval_generator(batch))
    assert torch.equal(pred.probs, again.probs)
    for solver, nfe in (("heun", 6), ("midpoint", 6)):
        pred = predict_whole(module.method.with_settings(solver=solver, steps=3), module.net,
                             batch["image"])
        assert pred.nfe == nfe
    pred = predict_whole(module.method.with_settings(solver="dopri5"), module.net, batch["image"])
    assert pred.nfe >= 8 and (pred.nfe - 2) % 6 == 0
    assert all(torch.equal(v, weights[k]) for k, v in module.state_dict().items())


# Not `slow`: ~50 s on 2 idle CPU cores (Dice 0.999 / >= 0.998 when measured), so CI runs it.
def test_overfit_one_batch_reaches_dice_0_9_with_10_euler_steps(tmp_path):
    """One synthetic XCA batch (4 crops of 64 px) learnt by a small ADM U-Net."""
    import numpy as np

    from segflow.data.synthetic import synth_xca

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    pairs = [synth_xca(rng, 64) for _ in range(4)]
    image = torch.stack([torch.from_numpy(np.asarray(i, np.float32)) for i, _ in pairs])[:, None]
    mask = torch.stack([torch.from_numpy((np.asarray(m) > 0).astype(np.float32)) for _, m in pairs])[:, None]
    image = (image - 0.5) / 0.5  # the datamodule's default normalisation
    net = ADMConcatUNet(model_channels=16, channel_mult=(1, 2, 2), num_blocks=1, image_size=64,
                        num_head_channels=32)
    fm = FlowMatching(steps=10)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    start = time.time()
    for _ in range(400):
        opt.zero_grad()
        fm.loss(net, image, mask)["loss"].backward()
        opt.step()
    net.eval()
    pred = fm.predict(net, image, generator=torch.Generator().manual_seed(0))
    metrics = VesselMetrics()
    metrics.update(pred.probs, mask)
    dice = float(metrics.compute()["dice"])
    print(f"overfit: dice {dice:.3f} after 400 steps in {time.time() - start:.0f} s, nfe {pred.nfe}")
    assert pred.nfe == 10 and dice >= 0.9
