"""Logging set-up of the entry points: callbacks and loggers built from their config groups,
and Lightning's log records routed to Hydra's handlers (console and ``<entry>.log``)."""

from __future__ import annotations

import logging
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from segflow.infra import quiet


def build_many(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a group holding named ``_target_`` configs (callbacks,
    loggers); entries set to ``null`` are skipped so a user can disable one by name."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if node is not None and "_target_" in node]


def route_lightning_logs_to_file() -> None:
    """Lightning installs its own stream handler when imported before logging is
    configured; let its records propagate to Hydra's handlers instead, so they reach
    ``train.log`` as well as the console."""
    for name in ("lightning.pytorch", "pytorch_lightning", "lightning.fabric", "lightning_fabric"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            lg.removeHandler(h)
        lg.propagate = True
    logging.captureWarnings(True)
    quiet.install()  # the known-harmless messages, each named in segflow.infra.quiet
