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
from hydra.types import RunMode
from omegaconf import DictConfig

from segflow.conf.resolvers import register_resolvers
from segflow.engine.faults import guarded_training
from segflow.engine.training import train
from segflow.infra.config_files import check_config_dirs
from segflow.infra.errors import ConfigError, command, exit_on_user_error
from segflow.infra.precheck import compose_jobs
from segflow.infra.validate import validate_train
from segflow.runs.sweeps import announce, finish, refuse_if_rejected, sweep_job

log = logging.getLogger("segflow.train")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    """One job; returns the objective for Hydra sweepers (validation Dice, else test Dice)."""
    # A failed start leaves no folder; a failed run is marked FAILED (segflow.runs.failed).
    hc = HydraConfig.get()
    run_dir = hc.runtime.output_dir
    multirun = hc.mode == RunMode.MULTIRUN  # a failed job is recorded and the rest go on
    num = hc.job.num if multirun else 0
    summary: dict = {}  # a failed sweep job: recorded, no objective
    with sweep_job(hc.sweep.dir if multirun else None, num, list(hc.overrides.task)), \
            exit_on_user_error(log), guarded_training(run_dir):
        if multirun:
            refuse_if_rejected(num)  # refused before launch: its folder goes
        summary = train(cfg)
    score = summary.get("best_val_dice")
    if score is None:
        score = summary.get("test", {}).get("dice")
    return score


@command
def main() -> int:
    """Entry point (``segflow-train``)."""
    check_config_dirs()  # a YAML syntax error in --config-dir: one sentence
    register_resolvers()
    # Every job's config, interpolations resolved, checked before any folder exists.
    plan = compose_jobs(sys.argv[1:], "segflow.train", "conf", "train", validate_train)
    if not plan.multirun and plan.rejected:
        raise ConfigError(plan.rejected[0].error)
    announce(plan)
    _hydra_main()
    return finish(plan)


if __name__ == "__main__":
    sys.exit(main())
