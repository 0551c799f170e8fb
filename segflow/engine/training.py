"""Training one composed configuration (``segflow.train``): build the run, fit, test the
best checkpoint, write ``metrics.json``; CUDA out-of-memory and stop signals as one message.
"""

from __future__ import annotations

import copy
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.utilities.exceptions import MisconfigurationException, SIGTERMException

from segflow.engine.callbacks.logger_media import build_loggers, log_config
from segflow.engine.callbacks.resume import ExactResume, InterruptCheckpoint
from segflow.engine.callbacks.summary import ModelSummary
from segflow.engine.distributed import (
    ChildCommand,
    hydra_ddp_job,
    hydra_quote,
    is_ddp_child,
    job_overrides,
)
from segflow.engine.faults import strategy_with_timeout
from segflow.engine.preemption import slurm_plugins
from segflow.infra.atomic import AtomicCheckpointIO, write_json
from segflow.infra.debug import data_keys, debug_data, debug_sampling
from segflow.infra.errors import ConfigError, OutOfMemoryAdvice, SegflowError
from segflow.infra.machine import set_cpu_threads
from segflow.infra.precheck import check_job
from segflow.infra.validate import validate_train
from segflow.runs.auto_resume import fingerprint, resolve_resume, run_lock
from segflow.runs.checkpoints import check_written_by, load_checkpoint
from segflow.runs.layout import RunFolder
from segflow.runs.logs import build_many, route_lightning_logs_to_file
from segflow.runs.records import RunRecord

log = logging.getLogger("segflow.train")


def effective_batch_size(cfg: DictConfig, trainer: pl.Trainer) -> int:
    """train_bs × num_samples_per_image × world size (devices × nodes) × accumulation."""
    return (int(cfg.data.train_bs) * int(cfg.data.num_samples_per_image) * trainer.world_size
            * trainer.accumulate_grad_batches)


def oom_advice(cfg: DictConfig, trainer: pl.Trainer | None = None) -> str:
    """Advice on CUDA out-of-memory: the keys that reduce memory, with this run's values."""
    world = trainer.world_size if trainer is not None else "?"
    return (
        f"CUDA ran out of memory with data.train_bs={cfg.data.train_bs}, "
        f"data.num_samples_per_image={cfg.data.num_samples_per_image}, "
        f"data.image_size={cfg.data.image_size}, trainer.precision={cfg.trainer.precision}, "
        f"trainer.accumulate_grad_batches={cfg.trainer.accumulate_grad_batches} (world size "
        f"{world}); lower data.train_bs or data.num_samples_per_image (crops per step), raise "
        f"trainer.accumulate_grad_batches by the same factor to keep the effective batch size, "
        f"and/or use trainer.precision=16-mixed (bf16-mixed on Ampere or newer); "
        f"PYTORCH_CUDA_ALLOC_CONF={os.environ.get('PYTORCH_CUDA_ALLOC_CONF', '')}"
    )


def build_trainer(cfg: DictConfig, **kwargs: Any) -> pl.Trainer:
    """The Trainer of ``cfg.trainer``; device/strategy combinations this machine cannot run
    become one :class:`ConfigError` naming the keys (not a stack trace from Lightning)."""
    t = cfg.trainer
    strategy, accelerator = str(t.get("strategy", "auto")), str(t.get("accelerator", "auto"))
    if strategy.startswith("fsdp") and accelerator not in ("gpu", "cuda"):
        raise ConfigError(f"trainer=fsdp needs CUDA GPUs: Lightning runs FSDP on CUDA only "
                          f"(got trainer.accelerator={accelerator}); on CPU use trainer=ddp "
                          f"trainer.accelerator=cpu")
    strategy_obj = strategy_with_timeout(t, cfg.get("ddp_timeout_s"))  # collectives end
    if strategy_obj is not None and "strategy" not in kwargs:
        kwargs["strategy"] = strategy_obj
    if requeue := slurm_plugins(cfg):  # SLURM pre-emption: checkpoint and requeue
        kwargs["plugins"] = [*(kwargs.get("plugins") or []), *requeue]
    if t.get("enable_model_summary", True) and not any(
            isinstance(c, ModelSummary) for c in kwargs.get("callbacks") or []):
        kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), ModelSummary(max_depth=1)]
    if not any(hasattr(p, "save_checkpoint") for p in (t.get("plugins") or [])):
        kwargs["plugins"] = [*(kwargs.get("plugins") or []), AtomicCheckpointIO()]
    try:
        return instantiate(t, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, MisconfigurationException | ValueError | TypeError) and not isinstance(cause, SegflowError):
            first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
            raise ConfigError(f"the trainer settings (trainer.accelerator={accelerator}, "
                              f"trainer.devices={t.get('devices')}, trainer.strategy={strategy}, "
                              f"trainer.precision={t.get('precision')}) cannot run here: {first}") from exc
        raise


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test one configuration; returns the summary written to ``metrics.json``.

    Inside :func:`segflow.engine.distributed.hydra_ddp_job`: DDP children re-enter this job (its
    overrides, its folder), and the job leaves no process group or DDP environment behind.
    """
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    route_lightning_logs_to_file()
    with hydra_ddp_job(ChildCommand("segflow.train", drop_keys=("resume", "ckpt_path"))) as child:
        return _train(cfg, child)


def _train(cfg: DictConfig, child: ChildCommand) -> dict[str, Any]:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    check_job(cfg, validate_train)  # interpolations resolved, every value checked
    threads, why = set_cpu_threads()
    log.info("CPU threads: %d (%s)", threads, why)
    pl.seed_everything(cfg.seed, workers=True)
    ckpt_path = resume_checkpoint(cfg, child)
    fp = fingerprint(cfg)
    run_config = OmegaConf.to_container(cfg, resolve=True)  # what the checkpoint keeps
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):  # debug=...: this run's datamodule limits, not kept in data.*
        cfg.data = debug_data(cfg, cfg.data, data_keys(job_overrides()))
    datamodule, module, trainer, interrupt = build_run(cfg, run_dir, run_config)
    eff = log_setup(cfg, trainer, run_dir, datamodule, module)
    log.info("experiment %s, config fingerprint %s%s", cfg.experiment_name, fp,
             f", resuming {ckpt_path}" if ckpt_path else "")
    start = time.time()
    with run_lock(run_dir, primary=trainer.global_rank == 0 and not is_ddp_child()):
        with _stop_cleanly(cfg, trainer, interrupt):
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        summary = fit_summary(cfg, trainer, run_dir, fp, ckpt_path, time.time() - start, eff)
        if trainer.global_rank == 0:
            summary.update(training_cost(module, datamodule, eff, summary["global_step"]))
        if cfg.get("test_after_fit", True):
            summary.update(run_test(cfg, trainer, module, datamodule, interrupt))
    for lg in trainer.loggers:
        if hasattr(lg, "close"):
            lg.close()
    if trainer.global_rank == 0:
        write_summary(run_dir, summary)
    return summary


def resume_checkpoint(cfg: DictConfig, child: ChildCommand) -> str | None:
    """The checkpoint to resume (``ckpt_path`` or ``resume=auto``), or None; the DDP
    children get it as their ``ckpt_path`` so that every rank resumes the file rank 0 chose."""
    ckpt_path = resolve_resume(cfg, cfg.paths.output_root)
    if ckpt_path and not Path(ckpt_path).is_file():
        raise ConfigError(f"ckpt_path={ckpt_path} does not exist; pass the last.ckpt of an earlier "
                          f"run (outputs/runs/<experiment>/<time>/checkpoints/last.ckpt)")
    if ckpt_path:  # a newer segflow's checkpoint: its unknown keys would be dropped silently
        check_written_by(load_checkpoint(ckpt_path), ckpt_path)
    child.extra_overrides = [f"ckpt_path={hydra_quote(ckpt_path) if ckpt_path else 'null'}"]
    return ckpt_path


def build_run(cfg: DictConfig, run_dir: Path, run_config: dict[str, Any]
              ) -> tuple[Any, Any, pl.Trainer, InterruptCheckpoint]:
    """(datamodule, module, trainer, interrupt callback) of the config; the module carries
    ``run_config`` (the resolved composed config) into every checkpoint."""
    datamodule = instantiate(cfg.data, seed=cfg.seed)
    module = instantiate(cfg.model)
    module.run_config = run_config
    module.method = debug_sampling(module.method, cfg, log)  # debug=... only
    interrupt = InterruptCheckpoint(int(cfg.get("stop_check_every", 16)))
    callbacks = [*build_many(cfg.get("callbacks")), ExactResume(), interrupt]
    loggers = build_loggers(cfg.get("logger"))
    trainer = build_trainer(cfg, callbacks=callbacks, logger=loggers or False,
                            default_root_dir=str(run_dir))
    return datamodule, module, trainer, interrupt


def log_setup(cfg: DictConfig, trainer: pl.Trainer, run_dir: Path, datamodule: Any,
              module: Any) -> int:
    """Log the run folder, the effective batch size (also as logger hyper-parameters) and
    the resolved config; write ``preprocess.json`` (what eval/predict apply too); returns
    the effective batch size."""
    preprocess = getattr(datamodule, "preprocess", None)
    if preprocess is not None and trainer.global_rank == 0:
        write_json(RunFolder(run_dir).preprocess, preprocess.as_dict())
    eff = effective_batch_size(cfg, trainer)
    log.info("run folder: %s", run_dir)
    log.info("effective batch size = train_bs %d x num_samples_per_image %d x world size %d "
             "x accumulate_grad_batches %d = %d crops per optimiser step",
             cfg.data.train_bs, cfg.data.num_samples_per_image, trainer.world_size,
             trainer.accumulate_grad_batches, eff)
    for lg in trainer.loggers:
        lg.log_hyperparams({"effective_batch_size": eff, "model": cfg.model.name,
                            "data": cfg.data.name, "world_size": trainer.world_size,
                            "learning_rate": cfg.model.learning_rate,
                            "train_bs": cfg.data.train_bs,
                            "num_samples_per_image": cfg.data.num_samples_per_image,
                            "image_size": cfg.data.image_size,
                            "precision": str(cfg.trainer.precision)})
    if trainer.global_rank == 0:
        log_config(trainer.loggers, module.run_config)
    return eff


def _checkpoints(trainer: pl.Trainer) -> tuple[str, Path | None]:
    """(best checkpoint or "", last.ckpt or None) of the run."""
    ckpt_cb = trainer.checkpoint_callback
    best = getattr(ckpt_cb, "best_model_path", "") or ""
    last = Path(ckpt_cb.dirpath, "last.ckpt") if ckpt_cb is not None and ckpt_cb.dirpath else None
    return best, last


def fit_summary(cfg: DictConfig, trainer: pl.Trainer, run_dir: Path, fp: str,
                ckpt_path: str | None, fit_seconds: float, eff: int) -> dict[str, Any]:
    """What ``metrics.json`` records of the fit."""
    ckpt_cb = trainer.checkpoint_callback
    best, last = _checkpoints(trainer)
    epochs, step = trainer.current_epoch, trainer.global_step
    if step == 0 and last is not None and last.is_file():
        # ddp_spawn trained in other processes: this trainer's loops never advanced.
        saved = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
        epochs, step = saved["epoch"] + 1, saved["global_step"]
    summary = {
        "experiment": cfg.experiment_name, "fingerprint": fp, "resumed_from": ckpt_path,
        "model": cfg.model.name, "data": cfg.data.name,
        "run_dir": str(run_dir), "epochs": epochs, "global_step": step,
        "fit_seconds": round(fit_seconds, 1), "effective_batch_size": eff,
        "best_checkpoint": best or None,
        "best_val_dice": float(ckpt_cb.best_model_score) if getattr(ckpt_cb, "best_model_score", None) is not None else None,
    }
    for cb in trainer.callbacks:  # time to accuracy, data-loader wait (segflow.engine.callbacks.timing)
        if callable(getattr(cb, "run_summary", None)):
            summary.update(cb.run_summary())
    return summary


def training_cost(module: Any, datamodule: Any, crops_per_step: int, steps: int
                  ) -> dict[str, Any]:
    """Counted training FLOPs (:func:`segflow.metrics.flops.training_step_flops`: forward and
    backward of one optimiser step of ``crops_per_step`` crops, a prior's forward included)
    and their total over the run's optimiser steps; parameters of the network (and of a
    frozen prior the method carries)."""
    from segflow.metrics.flops import training_step_flops

    size, channels = int(datamodule.image_size), int(module.net.in_channels)
    try:
        per_crop = training_step_flops(module.method, module.net, 1, channels, size)
    except Exception as exc:  # noqa: BLE001 - a cost figure must never fail a finished run
        log.warning("training FLOPs not counted: %s", exc)
        return {}
    prior = getattr(module.method, "prior_net", None)
    return {"train_gflops_per_step": round(per_crop * crops_per_step / 1e9, 3),
            "train_flops": float(per_crop * crops_per_step * steps),
            "params": sum(p.numel() for p in module.net.parameters()),
            "prior_params": sum(p.numel() for p in prior.parameters()) if prior is not None else 0}


def run_test(cfg: DictConfig, trainer: pl.Trainer, module: Any, datamodule: Any,
              interrupt: InterruptCheckpoint) -> dict[str, Any]:
    """Test the best checkpoint (last.ckpt when no validation ran); the summary's
    ``test_checkpoint`` and ``test`` entries."""
    best, last = _checkpoints(trainer)
    test_ckpt = best or (str(last) if last is not None and last.is_file() else None)
    if test_ckpt is None:
        log.warning("no checkpoint to test (no validation ran and no last.ckpt); testing current weights")
    with _stop_cleanly(cfg, trainer, interrupt):
        results = trainer.test(module, datamodule=datamodule, ckpt_path=test_ckpt)
    # ddp_spawn tests in other processes: take the logged values it hands back.
    test = module.test_results or {
        k.removeprefix("test/"): float(v) for k, v in (results[0] if results else {}).items()}
    return {"test_checkpoint": test_ckpt, "test": test, "test_timing": module.timing,
            "test_split": datamodule.split_used("test")}  # "val" when there is no test folder


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    """``<run>/metrics.json`` (rank 0)."""
    path = RunRecord.from_dict(summary).write(run_dir)
    if "test" in summary:
        log.info("test: %s", "  ".join(f"{k} {v:.4f}" for k, v in summary["test"].items()))
    log.info("metrics written to %s", path)


@contextmanager
def _stop_cleanly(cfg: DictConfig, trainer: pl.Trainer | None,
                  interrupt: InterruptCheckpoint | None) -> Iterator[None]:
    """CUDA OOM → :func:`oom_advice` as one error; SIGTERM / Ctrl+C (``last.ckpt`` already
    written by :class:`InterruptCheckpoint`) → exit 128 + the signal number on rank 0, as a
    shell reports a killed program, and 0 on other DDP ranks (a non-zero child would make
    Lightning kill rank 0 while it reports)."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as exc:
        raise OutOfMemoryAdvice(oom_advice(cfg, trainer)) from exc
    except SIGTERMException:
        signum = (interrupt.signum if interrupt else None) or signal.SIGTERM
        saved = interrupt.saved if interrupt else None
        if trainer is None or trainer.global_rank == 0:
            where = f"{saved} written" if saved else "no checkpoint written"
            log.warning("stopped by %s: %s; continue with ckpt_path=%s or resume=auto",
                        signal.Signals(signum).name, where, saved or "<last.ckpt>")
        sys.exit(0 if is_ddp_child() else 128 + int(signum))
