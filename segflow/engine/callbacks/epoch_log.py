"""One log line per epoch, so ``train.log`` (and ``make logs``) shows how a run is going
even without a progress bar (background runs, SLURM)."""

from __future__ import annotations

import logging
import time

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

log = logging.getLogger("segflow.train")


class EpochLog(Callback):
    """Logs ``epoch e/E  train/loss …  val/dice …  (s per epoch)`` on rank 0 at the end of
    every training epoch (after that epoch's validation, when it ran).

    Args:
        keys: the logged metrics to show, when present.
    """

    def __init__(self, keys: tuple[str, ...] | list[str] = ("train/loss", "val/dice", "val/auc")):
        self.keys = tuple(keys)
        self._start = time.time()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.time()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        shown = "  ".join(f"{k} {float(metrics[k]):.4f}" for k in self.keys if k in metrics)
        log.info("epoch %d/%d  step %d  %s  (%.1f s)", trainer.current_epoch + 1,
                 trainer.max_epochs, trainer.global_step, shown, time.time() - self._start)
