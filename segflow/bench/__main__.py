"""``python -m segflow.bench``: training throughput / MFU, sampling cost vs NFE, data-loader
throughput → ``outputs/bench/<time>/bench.{json,md}``.

Examples:
    python -m segflow.bench                                 # quick mode (CPU, a few minutes)
    python -m segflow.bench bench=full                      # GPU sizes
    python -m segflow.bench bench=full models=[flow] train.compile=[false,true]
    python -m segflow.bench train.enabled=false sampling.enabled=false   # loader only
"""

from __future__ import annotations

import logging
import shlex
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from segflow.bench.runner import run_bench
from segflow.conf.resolvers import register_resolvers
from segflow.infra.errors import command, exit_on_user_error

log = logging.getLogger("segflow.bench")


@hydra.main(version_base="1.3", config_path="../conf", config_name="bench")
def _hydra_main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    # hydra.mode is Hydra's own bookkeeping; user hydra.* overrides (searchpath) are kept.
    hydra_args = [o for o in hc.overrides.hydra if not o.startswith("hydra.mode=")]
    command = " ".join(["python -m segflow.bench",
                        *map(shlex.quote, [*hydra_args, *hc.overrides.task])])
    with exit_on_user_error(log):
        run_bench(cfg, hc.runtime.output_dir, command)


@command
def main() -> None:
    """Entry point (``segflow-bench``)."""
    register_resolvers()
    _hydra_main()


if __name__ == "__main__":
    sys.exit(main())
