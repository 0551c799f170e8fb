"""Time-to-accuracy and data-loader wait, measured on every run and written to
``metrics.json`` (``time_to_dice``, ``loader``) and to the run's loggers."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytorch_lightning as pl

log = logging.getLogger("segflow.train")


class TimeToDice(pl.Callback):
    """The wall-clock seconds (since training started) and the optimiser step at which a
    validation metric first reaches each of ``levels``.

    Checked once every validation has finished and its epoch metrics are in
    ``trainer.callback_metrics`` (``on_validation_end``: in ``on_validation_epoch_end`` a
    callback runs before the LightningModule logs the validation's metrics, so it would see
    the previous validation's value); not the sanity check. A level reached is logged once
    (train.log line, logger metric ``time_to/<metric>_<level>`` in seconds at that step).
    A resumed run continues the clock of the run it resumes (kept in the checkpoint).

    Args:
        levels: thresholds of the metric, e.g. ``[0.7, 0.8, 0.82]``.
        metric: the logged validation metric (``val/dice``: Dice = F1 of the vessel class).
    """

    def __init__(self, levels: list[float] | tuple[float, ...] = (0.7, 0.8, 0.82),
                 metric: str = "val/dice"):
        levels = sorted(float(v) for v in levels)
        if any(not 0.0 < v <= 1.0 for v in levels):
            raise ValueError(f"callbacks.time_to_dice.levels must be numbers in (0, 1], got {levels}")
        self.levels, self.metric = levels, metric
        self.reached: dict[str, dict[str, Any]] = {}
        self._offset = 0.0  # seconds of the runs this one resumes
        self._start: float | None = None

    @staticmethod
    def key(level: float) -> str:
        return f"{level:g}"

    def elapsed(self) -> float:
        return self._offset + (time.perf_counter() - self._start if self._start is not None else 0.0)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self._start is None or self.metric not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.metric])  # once per validation
        seconds = round(self.elapsed(), 2)
        new = {}
        for level in self.levels:
            k = self.key(level)
            if k not in self.reached and value >= level:
                self.reached[k] = {"seconds": seconds, "step": int(trainer.global_step),
                                   "epoch": int(trainer.current_epoch), "value": round(value, 5)}
                new[f"time_to/{self.metric.replace('/', '_')}_{k}"] = seconds
                if trainer.is_global_zero:
                    log.info("%s reached %s (%.4f) after %.1f s, step %d", self.metric, k, value,
                             seconds, trainer.global_step)
        if new and trainer.is_global_zero:
            for lg in trainer.loggers:
                lg.log_metrics(new, step=trainer.global_step)

    def run_summary(self) -> dict[str, Any]:
        """``metrics.json``'s ``time_to_dice``: per level, when it was reached (None: never)."""
        return {"time_to_dice": {"metric": self.metric,
                                 **{self.key(v): self.reached.get(self.key(v)) for v in self.levels}}}

    def state_dict(self) -> dict[str, Any]:
        return {"reached": dict(self.reached), "seconds": self.elapsed()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.reached = dict(state_dict.get("reached", {}))
        self._offset = float(state_dict.get("seconds", 0.0))


class LoaderWait(pl.Callback):
    """The share of training time spent waiting for the next batch.

    The host's time from one batch's end to the next batch's start (fetching it from the
    data loader, moving it to the device) against the time inside the step. On a GPU the
    host runs ahead of the device until its queue fills, so a loader that keeps up shows
    a small wait; a starved GPU shows the host waiting for data. The first ``skip``
    batches of each epoch (worker start-up) are not counted.

    Writes ``metrics.json``'s ``loader``: ``wait_fraction``, ``wait_ms`` and ``step_ms``
    (means over the counted batches), ``batches``.
    """

    def __init__(self, skip: int = 2):
        self.skip = int(skip)
        self.wait = self.step = 0.0
        self.batches = 0
        self._end: float | None = None
        self._begin: float | None = None
        self._pending = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        self._pending = now - self._end if self._end is not None else 0.0
        self._begin = now if batch_idx >= self.skip and self._end is not None else None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._begin is not None:
            self.wait += self._pending
            self.step += now - self._begin
            self.batches += 1
        self._end = now

    def run_summary(self) -> dict[str, Any]:
        if not self.batches:
            return {"loader": None}
        total = self.wait + self.step
        return {"loader": {"wait_fraction": round(self.wait / total, 4) if total else None,
                           "wait_ms": round(1e3 * self.wait / self.batches, 3),
                           "step_ms": round(1e3 * self.step / self.batches, 3),
                           "batches": self.batches}}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        s = self.run_summary()["loader"]
        if s and trainer.is_global_zero:
            log.info("data loader wait: %.1f %% of the training time (%.2f ms per batch; "
                     "step %.2f ms)", 100 * s["wait_fraction"], s["wait_ms"], s["step_ms"])
