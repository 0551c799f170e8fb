"""Time to accuracy (TimeToDice) and data-loader wait (LoaderWait): unit behaviour and a
toy run that writes both into metrics.json."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest
import torch

from segflow.engine.callbacks import LoaderWait, TimeToDice


def _trainer(dice: float, step: int, sanity: bool = False) -> SimpleNamespace:
    return SimpleNamespace(sanity_checking=sanity, callback_metrics={"val/dice": torch.tensor(dice)},
                           global_step=step, current_epoch=step // 10, is_global_zero=True,
                           loggers=[])


def test_levels_are_recorded_once_when_first_reached():
    cb = TimeToDice([0.8, 0.7, 0.82])
    cb.on_train_start(None, None)
    cb.on_validation_epoch_end(_trainer(0.9, 0, sanity=True), None)  # sanity check: ignored
    cb.on_validation_epoch_end(_trainer(0.65, 10), None)
    cb.on_validation_epoch_end(_trainer(0.75, 20), None)
    time.sleep(0.01)
    cb.on_validation_epoch_end(_trainer(0.81, 30), None)
    cb.on_validation_epoch_end(_trainer(0.70, 40), None)  # a dip changes nothing
    got = cb.run_summary()["time_to_dice"]
    assert got["metric"] == "val/dice" and list(got)[1:] == ["0.7", "0.8", "0.82"]
    assert got["0.7"]["step"] == 20 and got["0.8"]["step"] == 30 and got["0.82"] is None
    assert got["0.7"]["value"] == pytest.approx(0.75) and got["0.8"]["seconds"] > got["0.7"]["seconds"]


def test_a_resumed_run_keeps_the_clock_and_the_levels_reached():
    cb = TimeToDice([0.5, 0.6])
    cb.on_train_start(None, None)
    cb.on_validation_epoch_end(_trainer(0.55, 5), None)
    state = cb.state_dict()
    state["seconds"] = 100.0  # the first run trained for 100 s
    resumed = TimeToDice([0.5, 0.6])
    resumed.load_state_dict(state)
    resumed.on_train_start(None, None)
    resumed.on_validation_epoch_end(_trainer(0.61, 9), None)
    got = resumed.run_summary()["time_to_dice"]
    assert got["0.5"]["step"] == 5 and got["0.6"]["step"] == 9 and got["0.6"]["seconds"] >= 100.0


def test_bad_levels_are_refused():
    with pytest.raises(ValueError, match="callbacks.time_to_dice.levels"):
        TimeToDice([0.8, 82])


def test_loader_wait_counts_the_gap_between_batches():
    cb = LoaderWait(skip=1)
    cb.on_train_epoch_start(None, None)
    for i in range(4):
        cb.on_train_batch_start(None, None, None, i)
        time.sleep(0.002)  # the step
        cb.on_train_batch_end(SimpleNamespace(is_global_zero=True), None, None, None, i)
        time.sleep(0.006)  # waiting for the next batch
    got = cb.run_summary()["loader"]
    assert got["batches"] == 3  # the first batch is start-up
    assert 0.5 < got["wait_fraction"] < 0.95 and got["wait_ms"] > got["step_ms"]


def test_toy_run_writes_time_to_dice_and_loader_wait(train):
    _, run = train("model=unet", "trainer.max_epochs=2", "data.synthetic.n_train=8",
                   "trainer.limit_train_batches=4",
                   "callbacks.time_to_dice.levels=[0.01,0.99]")
    m = json.loads((run / "metrics.json").read_text())
    ttd = m["time_to_dice"]
    assert ttd["metric"] == "val/dice" and ttd["0.99"] is None
    first = ttd["0.01"]  # any non-empty prediction of the vessels beats 1 % Dice
    assert m["global_step"] == 8  # 2 epochs of 4 batches (debug's 2 crops per step), validated after each
    assert first is not None and first["step"] in (4, 8) and 0 < first["seconds"] < m["fit_seconds"] + 1
    loader = m["loader"]  # the first 2 batches of each epoch are start-up
    assert loader["batches"] == 4 and 0.0 <= loader["wait_fraction"] < 1.0 and loader["step_ms"] > 0
    assert "val/dice reached 0.01" in (run / "train.log").read_text()
