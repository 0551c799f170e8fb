"""Time to accuracy (TimeToDice) and data-loader wait (LoaderWait): unit behaviour and a
toy run that writes both into metrics.json."""

from __future__ import annotations

import json
import logging
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
    cb.on_validation_end(_trainer(0.9, 0, sanity=True), None)  # sanity check: ignored
    cb.on_validation_end(_trainer(0.65, 10), None)
    cb.on_validation_end(_trainer(0.75, 20), None)
    time.sleep(0.01)
    cb.on_validation_end(_trainer(0.81, 30), None)
    cb.on_validation_end(_trainer(0.70, 40), None)  # a dip changes nothing
    got = cb.run_summary()["time_to_dice"]
    assert got["metric"] == "val/dice" and list(got)[1:] == ["0.7", "0.8", "0.82"]
    assert got["0.7"]["step"] == 20 and got["0.8"]["step"] == 30 and got["0.82"] is None
    assert got["0.7"]["value"] == pytest.approx(0.75) and got["0.8"]["seconds"] > got["0.7"]["seconds"]


def test_a_resumed_run_keeps_the_clock_and_the_levels_reached():
    cb = TimeToDice([0.5, 0.6])
    cb.on_train_start(None, None)
    cb.on_validation_end(_trainer(0.55, 5), None)
    state = cb.state_dict()
    state["seconds"] = 100.0  # the first run trained for 100 s
    resumed = TimeToDice([0.5, 0.6])
    resumed.load_state_dict(state)
    resumed.on_train_start(None, None)
    resumed.on_validation_end(_trainer(0.61, 9), None)
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


class _Scripted:
    """A LightningModule whose validation logs a scripted ``val/dice`` curve, as SegModule
    logs its metrics in ``on_validation_epoch_end`` (after the callbacks' hook of that name)."""

    @staticmethod
    def make(curve: list[float]):
        import pytorch_lightning as pl

        class Module(pl.LightningModule):
            def __init__(self):
                super().__init__()
                self.w = torch.nn.Parameter(torch.zeros(1))
                self.validations = 0

            def training_step(self, batch, batch_idx):
                return (self.w - batch[0]).pow(2).mean()

            def validation_step(self, batch, batch_idx):
                return None

            def on_validation_epoch_end(self):
                if self.trainer.sanity_checking:
                    return
                self.log("val/dice", curve[self.validations])
                self.validations += 1

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.1)

            def _loader(self):
                data = torch.utils.data.TensorDataset(torch.ones(4, 1))
                return torch.utils.data.DataLoader(data, batch_size=1)

            train_dataloader = val_dataloader = _loader

        return Module()


def _fit(module, callbacks, epochs: int, **kw):
    import pytorch_lightning as pl

    trainer = pl.Trainer(max_epochs=epochs, callbacks=callbacks, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         accelerator="cpu", num_sanity_val_steps=0, **{"enable_model_summary": False, **kw})
    trainer.fit(module)


def test_time_to_dice_records_the_validation_that_reached_the_level():
    # 4 steps per epoch, validated after each: val/dice 0.5, 0.75, 0.85, 0.6 at steps 4, 8, 12, 16
    cb = TimeToDice([0.7, 0.8, 0.9])
    _fit(_Scripted.make([0.5, 0.75, 0.85, 0.6]), [cb], epochs=4)
    got = cb.run_summary()["time_to_dice"]
    assert (got["0.7"]["step"], got["0.7"]["epoch"], got["0.7"]["value"]) == (8, 1, 0.75)
    assert (got["0.8"]["step"], got["0.8"]["value"]) == (12, 0.85) and got["0.9"] is None
    assert 0 < got["0.7"]["seconds"] <= got["0.8"]["seconds"]


def test_epoch_lines_mark_epochs_without_a_validation_and_give_an_eta(caplog):
    from segflow.engine.callbacks import EpochLog

    with caplog.at_level(logging.INFO, logger="segflow.train"):
        _fit(_Scripted.make([0.61, 0.72]), [EpochLog()], epochs=4, check_val_every_n_epoch=2)
    lines = [r.getMessage() for r in caplog.records if r.name == "segflow.train"]
    assert lines[0].startswith("training: first batch done of 4 in epoch 1 after")
    epochs = [ln for ln in lines if ln.startswith("epoch ")]
    assert len(epochs) == 4, lines
    assert "no validation this epoch (none yet)" in epochs[0] and "val/dice" not in epochs[0]
    assert "val/dice 0.6100" in epochs[1] and "no validation" not in epochs[1]
    assert "no validation this epoch (last: epoch 2)" in epochs[2] and "0.6100" not in epochs[2]
    assert "val/dice 0.7200" in epochs[3]
    assert all("ETA" in ln for ln in epochs) and epochs[3].endswith("ETA 0 s)")


def test_the_model_summary_has_no_column_of_zero_flops(caplog):
    from segflow.engine.callbacks import ModelSummary

    with caplog.at_level(logging.INFO, logger="pytorch_lightning.callbacks.model_summary"):
        _fit(_Scripted.make([0.5]), [ModelSummary(max_depth=1)], epochs=1,
             enable_model_summary=True, check_val_every_n_epoch=1)
    (table,) = [r.getMessage() for r in caplog.records if "Total params" in r.getMessage()]
    assert "Params" in table and "FLOPs" not in table and "Total Flops" not in table
