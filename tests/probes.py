"""Callbacks that tests add to real runs with ``+callbacks.<name>._target_=tests.probes.X``:
they record what each rank saw, or deliver a real signal / fault at a chosen point."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback


class RankLossProbe(Callback):
    """Writes ``<run>/probe_rank<r>.json``: this rank's own mean training loss per epoch
    (weighted by batch size, as Lightning weights epoch means) and the epoch value
    Lightning logged as ``train/loss`` (which must be the mean over all ranks' batches)."""

    def __init__(self) -> None:
        self.sum, self.count = 0.0, 0
        self.record: dict[str, list[float]] = {"rank_mean": [], "rank_count": [], "logged": []}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n = int(batch["image"].shape[0])
        self.sum += float(outputs["loss"]) * n
        self.count += n

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.record["rank_mean"].append(self.sum / self.count)
        self.record["rank_count"].append(self.count)
        self.record["logged"].append(float(trainer.callback_metrics["train/loss"]))
        self.sum, self.count = 0.0, 0
        out = Path(trainer.default_root_dir) / f"probe_rank{trainer.global_rank}.json"
        out.write_text(json.dumps({**self.record, "pid": os.getpid(),
                                   "world_size": trainer.world_size}))


class GradNoise(Callback):
    """Adds N(0, scale²) noise from the *global* torch RNG to every gradient, standing in
    for the noise a diffusion or flow-matching loss draws: a resumed run only matches an
    uninterrupted one if the RNG state was restored."""

    def __init__(self, scale: float = 1e-3) -> None:
        self.scale = scale

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        for p in pl_module.parameters():
            if p.grad is not None:
                p.grad.add_(torch.randn_like(p.grad) * self.scale)


class SignalAt(Callback):
    """Sends ``signum`` to this process (a real ``kill``) when ``global_step`` reaches
    ``step`` (after that step), or at the start of ``epoch`` when given — from rank 0, or
    from every rank with ``all_ranks`` (as ``scancel`` or Ctrl+C in a terminal do), or from
    rank ``rank`` only (a rank that dies alone)."""

    def __init__(self, signum: int, step: int | None = None, epoch: int | None = None,
                 all_ranks: bool = False, rank: int = 0) -> None:
        self.signum, self.step, self.epoch, self.all_ranks = signum, step, epoch, all_ranks
        self.rank = rank

    def _fire(self, trainer: pl.Trainer) -> None:
        if self.all_ranks or trainer.global_rank == self.rank:
            os.kill(os.getpid(), self.signum)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.step is not None and trainer.global_step == self.step:
            self._fire(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.epoch is not None and trainer.current_epoch == self.epoch:
            self._fire(trainer)


class WeightDigest(Callback):
    """Writes ``<folder>/rank<global rank>.json`` at the end of fit: the world size, the
    node and a SHA-256 of the network's weights (DDP ranks must hold identical weights)."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import hashlib
        import socket

        digest = hashlib.sha256()
        for name, tensor in sorted(pl_module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps({
            "world_size": trainer.world_size, "global_step": trainer.global_step,
            "node": os.environ.get("SLURMD_NODENAME", socket.gethostname()),
            "weights": digest.hexdigest()}))


class SlurmPace(Callback):
    """Writes ``<folder>/<array task id>.json`` (``<task>_rank<r>.json`` for DDP rank r > 0:
    the SLURM job id, the global step, the restart count, the process id and node) after
    every training step of a SLURM job and, on the job's first run
    only, sleeps ``seconds`` after each step: a test can act on the job mid-training
    (``scontrol requeue``, ``scancel --signal``) at a known step."""

    def __init__(self, folder: str, seconds: float = 1.0) -> None:
        self.folder, self.seconds = Path(folder), seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import time

        env = os.environ
        task = env.get("SLURM_ARRAY_TASK_ID", "0")
        job = f"{env['SLURM_ARRAY_JOB_ID']}_{task}" if "SLURM_ARRAY_JOB_ID" in env else env.get("SLURM_JOB_ID")
        restarts = int(env.get("SLURM_RESTART_COUNT", "0") or 0)
        self.folder.mkdir(parents=True, exist_ok=True)
        rank = trainer.global_rank
        name = f"{task}.json" if rank == 0 else f"{task}_rank{rank}.json"
        tmp = self.folder / f".{name}"
        tmp.write_text(json.dumps({"job": job, "step": trainer.global_step, "restarts": restarts,
                                   "pid": os.getpid(), "node": env.get("SLURMD_NODENAME")}))
        tmp.replace(self.folder / name)
        if restarts == 0:
            time.sleep(self.seconds)
