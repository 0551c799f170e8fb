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
from segflow.errors import SegflowError

log = logging.getLogger("segflow.bench")


def _user_error(exc: BaseException) -> SegflowError | None:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, SegflowError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


@hydra.main(version_base="1.3", config_path="../../conf", config_name="bench")
def main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    command = " ".join(["python -m segflow.bench", *map(shlex.quote, hc.overrides.task)])
    try:
        run_bench(cfg, hc.runtime.output_dir, command)
    except Exception as exc:
        user_error = _user_error(exc)
        if user_error is None:
            raise
        log.error("%s", user_error)
        sys.exit(2)


if __name__ == "__main__":
    main()
