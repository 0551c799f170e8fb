"""MedSegDiff end to end: `python -m segflow.train model=medsegdiff`, then one checkpoint
evaluated under several samplers without retraining; the (slow) overfit check."""

import json
import time

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from segflow.data import synth_xca
from segflow.methods import Diffusion
from segflow.networks import MedSegDiff
from segflow.runs.checkpoints import load_checkpoint, load_model

from conftest import assert_learned

# A 2-level MedSegDiff with T = 50 so that even full DDPM is 50 network calls.
SMALL = ["model=medsegdiff", "model.net.channel_mult=[1,2]", "model.net.attention=false",
         "model.method.timesteps=50",
         "model.method.sampler=ddim", "model.method.steps=2", "model.method.n_samples=2",
         "debug.sampling.n_samples=2",  # debug=default caps the ensemble at 1; 2 for the uncertainty
         # 150 optimiser steps with a short EMA so that the averaged weights have learned: the
         # 2 steps of debug=default leave an untrained x0-predictor whose masks are empty.
         "trainer.max_epochs=25", "trainer.limit_train_batches=6", "trainer.check_val_every_n_epoch=25",
         "model.ema_decay=0.9", "model.learning_rate=3e-3", "model.method.dice_weight=1"]
SETTINGS = [("ddpm", None, 50), ("ddim", 10, 10), ("ddim", 50, 50), ("dpm_solver", 10, 10),
            ("dpm_solver", 20, 20)]


def test_medsegdiff_trains_and_one_checkpoint_evaluates_under_every_sampler(train):
    _, run = train(*SMALL, "model.num_log_images=1")
    assert run.parent.name == "medsegdiff_synthetic_xca"
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["model"] == "medsegdiff"
    assert_learned(summary["test"], dice_floor=0.1, auc_floor=0.7)
    ckpt = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert "averaging_state" in ckpt  # EMA on by default for the diffusion preset
    # The validation grid has the uncertainty column: image|truth|pred|uncertainty|error.
    acc = EventAccumulator(str(next((run / "tensorboard").glob("events*"))), size_guidance={"images": 0})
    acc.Reload()
    img = acc.Images(acc.Tags()["images"][0])[-1]
    assert img.width >= 5 * img.height

    # Eval-time settings through the stored config (what `segflow.eval run_dir=...
    # model.method.sampler=ddpm model.method.steps=null` does) ...
    module, cfg, _ = load_model(run, which="last", overrides={"method.sampler": "ddpm", "method.steps": None})
    assert isinstance(module.method, Diffusion) and module.method.grid() == list(range(49, -1, -1))
    for key, value in ckpt["state_dict"].items():  # the EMA weights, untouched
        torch.testing.assert_close(module.state_dict()[key], value)
    # ... and the same checkpoint under each sampler via with_settings, on the test split.
    base = module.method
    datamodule = instantiate(cfg.data)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)
    image = torch.randn(1, 1, 40, 40)
    results = {}
    for sampler, steps, nfe in SETTINGS:
        module.method = base.with_settings(sampler=sampler, steps=steps)
        assert module(image).nfe == nfe
        trainer.test(module, datamodule=datamodule, verbose=False)
        results[(sampler, steps)] = module.test_results
    assert len(results) == 5
    for metrics in results.values():
        assert_learned(metrics, dice_floor=0.1, auc_floor=0.7)


def test_medsegdiff_small_preset_composes_and_runs(train):
    _, run = train("model=medsegdiff_small", "model.method.steps=2")
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["model"] == "medsegdiff_small" and "dice" in summary["test"]


# Not `slow`: ~50 s on 2 idle CPU cores (Dice 0.999 / >= 0.998 when measured), so CI runs it.
def test_medsegdiff_overfits_one_synthetic_batch():
    """Dice >= 0.9 of the sampled masks on the batch it was trained on."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    pairs = [synth_xca(rng, 64) for _ in range(4)]
    image = (torch.tensor(np.stack([p[0] for p in pairs]))[:, None] - 0.5) / 0.5
    mask = torch.tensor(np.stack([p[1] for p in pairs]))[:, None].float()
    net = MedSegDiff(base_channels=8, channel_mult=(1, 2, 4), fft_size=64)
    method = Diffusion(dice_weight=1.0, sampler="ddim", steps=10)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=0.0)
    start = time.time()
    for _ in range(500):
        loss = method.loss(net, image, mask)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    dice = {}
    for sampler, steps in [("ddim", 10), ("dpm_solver", 10), ("ddpm", 50)]:
        pred = method.with_settings(sampler=sampler, steps=steps).predict(
            net, image, generator=torch.Generator().manual_seed(1)).probs > 0.5
        dice[sampler] = (2 * (pred * mask).sum() / (pred.sum() + mask.sum())).item()
    print(f"overfit: {time.time() - start:.0f} s, Dice {dice}")
    assert min(dice.values()) >= 0.9, dice
