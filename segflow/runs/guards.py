"""The failure handling shared by the commands that write under a trained run (predict,
export)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from segflow.infra.errors import exit_on_user_error
from segflow.runs.failed import failed_run_guard
from segflow.runs.layout import run_folder


@contextmanager
def run_output_guard(cfg: DictConfig, log: logging.Logger) -> Iterator[Path]:
    """Yield Hydra's output folder; a user error becomes its one sentence, and a failure
    removes (or marks ``FAILED``) the folder the command claimed under ``cfg.run_dir`` and
    the parents it leaves empty; a given ``output_dir`` stays as it was."""
    out = Path(HydraConfig.get().runtime.output_dir)
    with exit_on_user_error(log), failed_run_guard(None if cfg.get("output_dir") else out,
                                                   prune_up_to=run_folder(cfg.run_dir)):
        yield out
