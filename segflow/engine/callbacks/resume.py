"""Callbacks that make stopping and resuming lossless: RNG state in checkpoints and the
right data order after a resume (:class:`ExactResume`), and ``last.ckpt`` written when the
run is stopped with SIGTERM (``kill``) or Ctrl+C (:class:`InterruptCheckpoint`)."""

from __future__ import annotations

import logging
import random
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.exceptions import SIGTERMException

from segflow.engine.distributed import all_gather_object
from segflow.infra.compat import restart_train_iterator

log = logging.getLogger(__name__)


class ExactResume(Callback):
    """Makes a run resumed from an end-of-epoch checkpoint continue exactly as the
    uninterrupted run would have (bit-exact weights on CPU).

    * Saves the global random generators (torch, CUDA, NumPy, Python) of every rank in
      each checkpoint and restores them when training resumes, so noise drawn after the
      resume (diffusion / flow-matching losses, dropout) continues the same sequence.
      Lightning itself saves no RNG state. Restored only by ``fit``, just before the
      first training epoch (testing a checkpoint leaves the generators alone).
    * Restarts the training iterator when its sampler began an epoch other than the
      current one: Lightning builds that iterator before restoring the epoch counter, and
      with DataLoader workers the epoch-0 order is already being prefetched (see
      :class:`segflow.data.datamodule.EpochSampler`).
    """

    def __init__(self) -> None:
        self._rank = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._rank = trainer.global_rank

    def state_dict(self) -> dict[str, Any]:
        # Tensors and plain Python only: checkpoints must load with torch.load(weights_only=True).
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)),
                      "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": random.getstate(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        # Only rank 0's checkpoint is written: keep every rank's state in it.
        gathered = all_gather_object(state)
        return {"ranks": gathered}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After every restore (some strategies restore after on_fit_start), before epoch 1.
        self._restart_stale_train_iterator(trainer)
        pending = getattr(self, "_pending", None)
        self._pending = None
        if not pending:
            return
        ranks = pending.get("ranks", [])
        if trainer.global_rank >= len(ranks):
            log.warning("checkpoint holds RNG states of %d rank(s); rank %d keeps its seed",
                        len(ranks), trainer.global_rank)
            return
        state = ranks[trainer.global_rank]
        torch.set_rng_state(state["torch"])
        npst = state["numpy"]
        np.random.set_state((npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                             npst["has_gauss"], npst["gauss"]))
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


    @staticmethod
    def _restart_stale_train_iterator(trainer: pl.Trainer) -> None:
        loader = trainer.train_dataloader
        sampler = getattr(loader, "sampler", None)
        started = getattr(sampler, "started_epoch", None)
        if started is None or started == trainer.current_epoch:
            return
        if not restart_train_iterator(trainer):  # a fresh one reads the restored epoch
            log.warning("cannot restart the training iterator after resume: epoch %d will "
                        "see the data order of epoch %d", trainer.current_epoch, started)


class InterruptCheckpoint(Callback):
    """On SIGTERM (``kill PID``, a scheduler) or Ctrl+C, finish the optimiser step in
    flight (and a validation in progress), write ``<checkpoint dir>/last.ckpt`` and stop.

    While fitting, this replaces Lightning's SIGTERM handler: that one broadcasts from
    inside the signal handler and lets each rank stop at its own check, which can leave
    DDP ranks waiting in different collectives when several ranks get the signal (all of
    them do under ``scancel`` or Ctrl+C). Here a handler only records the signal; after
    training batches the ranks agree (one all-reduce of a flag) and all raise Lightning's
    ``SIGTERMException`` after the same step, so the checkpoint save — a collective —
    happens once, consistently. On one device the check is a plain Python test after
    every step; under DDP the flag is all-reduced only every ``check_every`` batches and
    after an epoch's last batch (reading a reduced flag is a device→host sync that would
    stall every step), so a DDP run stops at most ``check_every`` steps late. A second
    Ctrl+C interrupts at once, possibly inside a step, so nothing is saved then (the
    end-of-epoch ``last.ckpt`` is kept).

    Args:
        check_every: under DDP, all-reduce the stop flag every this many batches.

    Attributes:
        signum: the signal that stopped the run (None while running).
        saved: the checkpoint written on the stop (None if none).
    """

    def __init__(self, check_every: int = 16) -> None:
        if check_every < 1:
            raise ValueError(f"check_every must be >= 1, got {check_every}")
        self.check_every = int(check_every)
        self.signum: int | None = None
        self.saved: Path | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After Lightning registered its own handlers (it does so after on_fit_start); its
        # teardown puts back the handlers it found before the run.
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                signal.signal(signum, self._on_signal)
            except ValueError:  # not the main thread (e.g. a thread-based launcher)
                pass

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:  # second Ctrl+C: stop now
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum = signum
            log.warning("%s: finishing this step, writing last.ckpt, then stopping%s",
                        signal.Signals(signum).name,
                        " (Ctrl+C again stops at once)" if signum == signal.SIGINT else "")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.world_size == 1:  # a Python check: no tensor, no device sync
            stop = self.signum is not None
        elif self._due(trainer, batch_idx):  # the same batches on every rank
            flag = torch.tensor(0.0 if self.signum is None else 1.0, device=pl_module.device)
            stop = float(trainer.strategy.reduce(flag, reduce_op="max")) > 0
        else:
            return
        if stop:
            if self.signum is None:  # another rank got the signal
                self.signum = int(signal.SIGTERM)
            raise SIGTERMException()

    def _due(self, trainer: pl.Trainer, batch_idx: int) -> bool:
        """Whether the ranks agree on stopping after this batch: every ``check_every``
        batches and after the epoch's last one (every rank runs the same batches)."""
        last = batch_idx + 1 >= trainer.num_training_batches
        return last or (batch_idx + 1) % self.check_every == 0

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        if trainer.state.fn != "fit":
            return
        if isinstance(exception, KeyboardInterrupt):
            log.warning("interrupted at once: no last.ckpt written (the weights may be half-way "
                        "through a step); the previous last.ckpt is kept")
            return
        if not isinstance(exception, SIGTERMException):
            return
        ckpt_cb = trainer.checkpoint_callback
        dirpath = getattr(ckpt_cb, "dirpath", None) or Path(trainer.default_root_dir, "checkpoints")
        path = Path(dirpath) / "last.ckpt"
        trainer.save_checkpoint(path)
        self.saved = path
        if trainer.is_global_zero:
            log.warning("stopped at epoch %d, step %d: wrote %s", trainer.current_epoch,
                        trainer.global_step, path)
