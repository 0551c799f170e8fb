"""One log line per epoch, so ``train.log`` (and ``make logs``) shows how a run is going
even without a progress bar (background runs, SLURM)."""

from __future__ import annotations

import logging
import time

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

log = logging.getLogger("segflow.train")


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class EpochLog(Callback):
    """Logs ``epoch e/E  step s  train/loss …  val/dice …  (s per epoch, ETA …)`` on rank 0
    at the end of every training epoch (after that epoch's validation, when it ran), and
    one line after the first optimiser step (so a run shows progress within seconds).

    An epoch without a validation (``check_val_every_n_epoch`` > 1, ``limit_val_batches=0``)
    says ``no validation this epoch (last: epoch k)`` instead of repeating the last
    validation's values as if they were new. The ETA is the mean epoch time so far times
    the epochs left (``max_epochs``, or ``max_steps`` when that ends the run first).

    Args:
        keys: the logged metrics to show, when present (``val/…`` ones only after a validation).
    """

    def __init__(self, keys: tuple[str, ...] | list[str] = ("train/loss", "val/dice", "val/auc")):
        self.keys = tuple(keys)
        self._start = time.time()
        self._fit_start: float | None = None
        self._epochs_timed = 0
        self._epoch_seconds = 0.0
        self._validated = False
        self._last_val_epoch: int | None = None
        self._first_step_logged = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_start = time.time()
        self._first_step_logged = False

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.time()
        self._validated = False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs, batch, batch_idx: int) -> None:
        if self._first_step_logged or not trainer.is_global_zero:
            return
        self._first_step_logged = True
        total = trainer.num_training_batches
        per_epoch = f" of {total} in epoch {trainer.current_epoch + 1}" if isinstance(total, int) else ""
        log.info("training: first batch done%s after %.1f s", per_epoch,
                 time.time() - (self._fit_start or self._start))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated = True
            self._last_val_epoch = trainer.current_epoch + 1

    def _epochs_left(self, trainer: pl.Trainer) -> int | None:
        done = trainer.current_epoch + 1
        left = [trainer.max_epochs - done] if trainer.max_epochs and trainer.max_epochs > 0 else []
        steps_per_epoch = trainer.global_step / max(done, 1)
        if trainer.max_steps and trainer.max_steps > 0 and steps_per_epoch > 0:
            left.append(int(-(-(trainer.max_steps - trainer.global_step) // steps_per_epoch)))
        return max(min(left), 0) if left else None

    def line(self, trainer: pl.Trainer, seconds: float) -> str:
        """The epoch line (without the log prefix)."""
        metrics = trainer.callback_metrics
        keys = [k for k in self.keys if k in metrics and (self._validated or not k.startswith("val/"))]
        shown = "  ".join(f"{k} {float(metrics[k]):.4f}" for k in keys)
        if not self._validated and any(k.startswith("val/") for k in self.keys):
            last = f"last: epoch {self._last_val_epoch}" if self._last_val_epoch else "none yet"
            shown += f"  no validation this epoch ({last})"
        self._epochs_timed += 1
        self._epoch_seconds += seconds
        left = self._epochs_left(trainer)
        eta = (f", ETA {duration(left * self._epoch_seconds / self._epochs_timed)}"
               if left is not None else "")
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        return (f"epoch {trainer.current_epoch + 1}{total}  step {trainer.global_step}  "
                f"{shown.strip()}  ({seconds:.1f} s{eta})")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        log.info("%s", self.line(trainer, time.time() - self._start))
