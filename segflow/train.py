"""``python -m segflow.train``: compose the config, fit, test the best checkpoint.

Examples:
    python -m segflow.train                                  # default model on synthetic XCA
    python -m segflow.train model=csnet data=synthetic_octa trainer.max_epochs=1
    python -m segflow.train -m model=unet,csnet trainer=debug   # one folder per job
    python -m segflow.train ckpt_path=outputs/runs/.../checkpoints/last.ckpt   # resume
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from segflow.config import build_many
from segflow.errors import ConfigError, SegflowError

log = logging.getLogger("segflow.train")


def _route_lightning_logs_to_file() -> None:
    """Lightning installs its own stream handler when imported before logging is
    configured; let its records propagate to Hydra's handlers instead, so they reach
    ``train.log`` as well as the console."""
    for name in ("lightning.pytorch", "pytorch_lightning", "lightning.fabric", "lightning_fabric"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            lg.removeHandler(h)
        lg.propagate = True
    logging.captureWarnings(True)


def effective_batch_size(cfg: DictConfig, trainer: pl.Trainer) -> int:
    """train_bs × num_samples_per_image × world size (devices × nodes) × accumulation."""
    return (int(cfg.data.train_bs) * int(cfg.data.num_samples_per_image) * trainer.world_size
            * trainer.accumulate_grad_batches)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test one configuration; returns the summary written to ``metrics.json``."""
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    _route_lightning_logs_to_file()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    pl.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.model)
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    callbacks = build_many(cfg.get("callbacks"))
    loggers = build_many(cfg.get("logger"))
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                      default_root_dir=str(run_dir))

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

    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path and not Path(ckpt_path).is_file():
        raise ConfigError(f"ckpt_path={ckpt_path} does not exist; pass the last.ckpt of an earlier "
                          f"run (outputs/runs/<experiment>/<time>/checkpoints/last.ckpt)")
    start = time.time()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    fit_seconds = time.time() - start

    ckpt_cb = trainer.checkpoint_callback
    best = getattr(ckpt_cb, "best_model_path", "") or ""
    last = Path(ckpt_cb.dirpath, "last.ckpt") if ckpt_cb is not None and ckpt_cb.dirpath else None
    test_ckpt = best or (str(last) if last is not None and last.is_file() else None)
    summary: dict[str, Any] = {
        "experiment": cfg.experiment_name, "model": cfg.model.name, "data": cfg.data.name,
        "run_dir": str(run_dir), "epochs": trainer.current_epoch, "global_step": trainer.global_step,
        "fit_seconds": round(fit_seconds, 1), "effective_batch_size": eff,
        "best_checkpoint": best or None,
        "best_val_dice": float(ckpt_cb.best_model_score) if getattr(ckpt_cb, "best_model_score", None) is not None else None,
    }
    if cfg.get("test_after_fit", True):
        if test_ckpt is None:
            log.warning("no checkpoint to test (no validation ran and no last.ckpt); testing current weights")
        trainer.test(module, datamodule=datamodule, ckpt_path=test_ckpt)
        summary["test_checkpoint"] = test_ckpt
        summary["test"] = module.test_results
    for lg in trainer.loggers:
        if hasattr(lg, "close"):
            lg.close()
    if trainer.global_rank == 0:
        (run_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
        if "test" in summary:
            log.info("test: %s", "  ".join(f"{k} {v:.4f}" for k, v in summary["test"].items()))
        log.info("metrics written to %s", run_dir / "metrics.json")
    return summary


def find_user_error(exc: BaseException) -> SegflowError | None:
    """The user-facing error behind ``exc``, looking through wrappers such as Hydra's
    ``InstantiationException`` (which chains the original as ``__cause__``)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, SegflowError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Entry point; returns the objective for Hydra sweepers (validation Dice, else test Dice)."""
    try:
        summary = train(cfg)
    except Exception as exc:
        user_error = find_user_error(exc)
        if user_error is None:
            raise
        log.error("%s", user_error)
        sys.exit(2)
    score = summary.get("best_val_dice")
    if score is None:
        score = summary.get("test", {}).get("dice")
    return score


if __name__ == "__main__":
    main()
