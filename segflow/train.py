"""``python -m segflow.train``: compose the config, fit, test the best checkpoint.

Examples:
    python -m segflow.train                                  # default model on synthetic XCA
    python -m segflow.train model=csnet data=synthetic_octa trainer.max_epochs=1
    python -m segflow.train -m model=unet,csnet debug=default   # one folder per job
    python -m segflow.train ckpt_path=outputs/runs/.../checkpoints/last.ckpt   # resume
    python -m segflow.train resume=auto        # newest last.ckpt of this experiment + config
    python -m segflow.train trainer=ddp trainer.devices=[0,1]          # DDP on two GPUs
    python -m segflow.train -m model=unet,csnet trainer=ddp launcher=joblib   # DDP jobs in parallel
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from segflow.conf.resolvers import register_resolvers
from segflow.engine.faults import guarded_training
from segflow.engine.training import train
from segflow.infra.commands import start_hydra
from segflow.infra.errors import command, exit_on_user_error

log = logging.getLogger("segflow.train")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    """One job; returns the objective for Hydra sweepers (validation Dice, else test Dice)."""
    # A failed start leaves no folder; a failed run is marked FAILED (segflow.runs.failed).
    run_dir = HydraConfig.get().runtime.output_dir
    with exit_on_user_error(log), guarded_training(run_dir):
        summary = train(cfg)
    score = summary.get("best_val_dice")
    if score is None:
        score = summary.get("test", {}).get("dice")
    return score


@command
def main() -> None:
    """Entry point (``segflow-train``)."""
    start_hydra(_hydra_main, register_resolvers)


if __name__ == "__main__":
    sys.exit(main())
