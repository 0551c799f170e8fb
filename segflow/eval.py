"""``python -m segflow.eval``: metrics of a trained run, under one or many sampling settings.

Examples:
    python -m segflow.eval run_dir=outputs/runs/unet_synthetic_xca/<time>          # test split
    python -m segflow.eval run_dir=<run> split=val which=last trainer=cpu
    python -m segflow.eval run_dir=<run> data=synthetic_octa                         # another dataset
    python -m segflow.eval run_dir=<run> model.method.steps=10 model.method.n_samples=5
    python -m segflow.eval run_dir=<run> grid.steps=[1,2,4,10,50] grid.n_samples=[1,5] \\
        grid.solver=[euler,heun]                                                    # quality × cost

Each setting writes ``<run>/eval/<tag>/`` with ``metrics.json``, ``per_image.csv`` and
``images/`` (probability, binary, uncertainty PNGs); a grid also writes
``<run>/eval/grid_<tag>/`` with ``grid.csv``, ``grid.md`` and ``dice_vs_nfe.png``.
A folder is never reused: evaluating the same setting again writes ``<tag>_1/``, and data
other than the run's own (another dataset, or the same kind elsewhere) is tagged
``<data name>-<6 hex of its folder>``. See :mod:`segflow.engine.evaluation`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from segflow.conf.resolvers import register_resolvers
from segflow.engine.evaluation import evaluate
from segflow.infra.commands import start_hydra
from segflow.infra.errors import command, exit_on_user_error
from segflow.runs.failed import failed_claims, failed_run_guard
from segflow.runs.layout import eval_root

log = logging.getLogger("segflow.eval")


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def _hydra_main(cfg: DictConfig) -> None:
    logs = Path(HydraConfig.get().runtime.output_dir)  # <eval root>/logs/<time>
    with exit_on_user_error(log), failed_run_guard(
            logs, prune_up_to=eval_root(cfg.get("output_dir"), cfg.run_dir).parent), \
            failed_claims("eval"):
        evaluate(cfg)


@command
def main() -> None:
    """Entry point (``segflow-eval``): open the ``model.*`` / ``data.*`` / ``grid.*`` keys,
    then run Hydra."""
    start_hydra(_hydra_main, register_resolvers, open_keys=True)


if __name__ == "__main__":
    sys.exit(main())
