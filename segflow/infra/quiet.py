"""The one place where known-harmless library messages are silenced, each by name.

A user reads ``train.log`` / ``eval.log`` for the warnings that concern their run; messages
that are always there and never call for action hide them. Each entry of :data:`HARMLESS`
names one such message, the library that emits it, why it is harmless, and a regular
expression matched against the start of the message: anything else — any other
warning of the same library, the same category, the same module — still shows.

:func:`install` applies them (the entry points call it once, before the Trainer is
built); ``SEGFLOW_SHOW_ALL_WARNINGS=1`` installs nothing.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Harmless:
    """One known-harmless message.

    Attributes:
        name: a short name (listed by :func:`installed`).
        source: the library emitting it.
        why: why it needs no action.
        pattern: a regular expression matched at the start of the message.
        kind: ``warning`` (``warnings.warn``) or ``log`` (a log record of ``logger``).
        logger: for ``log``: the logger name the record comes from.
        applies: when the message is harmless (checked once, by :func:`install`); by
            default always.
    """

    name: str
    source: str
    why: str
    pattern: str
    kind: str = "warning"
    logger: str = ""
    applies: Callable[[], bool] = lambda: True


def outside_slurm() -> bool:
    """True when this process is not inside a SLURM job (no ``SLURM_JOB_ID``)."""
    return not os.environ.get("SLURM_JOB_ID")


HARMLESS: tuple[Harmless, ...] = (
    Harmless(
        "lightning_tips", "pytorch_lightning",
        "advertising of Lightning's cloud products (litlogger, litmodels), printed by every "
        "Trainer",
        r"💡 Tip:", kind="log", logger="pytorch_lightning.utilities.rank_zero"),
    Harmless(
        "pytree_leafspec", "pytorch_lightning (utilities/_pytree.py) on torch >= 2.10",
        "Lightning's own call of a torch API that torch marks deprecated; nothing segflow or "
        "the user calls",
        r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
    Harmless(
        "ema_state_at_test", "pytorch_lightning (callbacks/weight_averaging.py)",
        "an EMA run tested or evaluated from its checkpoint: the checkpoint's weights already "
        "are the average (segflow.engine.callbacks.EMA writes them), only the averaging state for "
        "resuming training is not restored",
        r"You're using the WeightAveraging callback, but loading a checkpoint outside the "
        r"'fit' stage"),
    Harmless(
        "module_batch_hook", "pytorch_lightning (trainer/connectors/data_connector.py)",
        "SegModule.on_after_batch_transfer (model.channels_last) is meant to apply with any "
        "datamodule; segflow's datamodules define no such hook, so nothing is overridden",
        r"You have overridden `on_after_batch_transfer` in `LightningModule` but have passed "
        r"in a `LightningDataModule`"),
    Harmless(
        "srun_hint", "lightning_fabric (plugins/environments/slurm.py)",
        "printed by every Trainer on a machine where SLURM is installed (a cluster's login "
        "node, a workstation with the SLURM client): outside a SLURM job there is nothing to "
        "prepend srun to. Inside a job (SLURM_JOB_ID set) the hint stays: a job step started "
        "without srun is a real mistake there",
        r"The `srun` command is available on your system but is not used",
        applies=outside_slurm),
)


class _DropMatching(logging.Filter):
    def __init__(self, patterns: list[str]):
        super().__init__()
        self.regex = re.compile("|".join(f"(?:{p})" for p in patterns))

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.regex.match(str(record.getMessage()))


_INSTALLED: list[str] = []


def install() -> list[str]:
    """Silence the :data:`HARMLESS` messages that apply here (idempotent); returns their
    names."""
    if os.environ.get("SEGFLOW_SHOW_ALL_WARNINGS", "").strip() in ("1", "true", "yes"):
        return []
    for h in HARMLESS:
        if h.name in _INSTALLED or not h.applies():
            continue
        if h.kind == "warning":
            warnings.filterwarnings("ignore", message=h.pattern)
        else:
            logging.getLogger(h.logger).addFilter(_DropMatching([h.pattern]))
        _INSTALLED.append(h.name)
    return list(_INSTALLED)


def installed() -> list[str]:
    """The names of the filters in effect."""
    return list(_INSTALLED)
