"""SLURM pre-emption: the pre-timeout signal saves a checkpoint and requeues the job.

SLURM sends a signal some time before it stops a job (``sbatch --signal=USR1@90``; the
``launcher=slurm`` preset asks for it). Under SLURM, :func:`slurm_plugins` gives the
Trainer Lightning's ``SLURMEnvironment(auto_requeue=True, requeue_signal=SIGUSR1)``: on
that signal Lightning writes ``<run>/hpc_ckpt_<n>.ckpt`` (through segflow's atomic
checkpoint writer) and runs ``scontrol requeue <job id>``. The requeued job (SLURM sets
``SLURM_RESTART_COUNT``) resumes as with ``resume=auto`` from the newest intact
checkpoint of its experiment and config: that ``hpc_ckpt`` or a newer ``last.ckpt``
(:mod:`segflow.runs.auto_resume`).

Config (``launcher=slurm``): ``slurm.auto_requeue`` (true) and ``slurm.requeue_signal``
(``SIGUSR1``). Outside SLURM nothing changes.
"""

from __future__ import annotations

import signal
from typing import Any

from omegaconf import DictConfig, OmegaConf

from segflow.infra.errors import ConfigError


def requeue_signal(name: Any) -> signal.Signals:
    """``SIGUSR1`` / ``USR1`` / ``10`` as a signal.

    Raises:
        ConfigError: not a signal name or number, naming ``slurm.requeue_signal``.
    """
    text = str(name).strip().upper()
    try:
        return signal.Signals(int(text)) if text.isdigit() else signal.Signals[
            text if text.startswith("SIG") else f"SIG{text}"]
    except (KeyError, ValueError):
        raise ConfigError(f"slurm.requeue_signal={name!r} is not a signal; use SIGUSR1 (what "
                          f"the launcher=slurm preset asks SLURM to send) or SIGUSR2") from None


def slurm_plugins(cfg: DictConfig) -> list[Any]:
    """``[SLURMEnvironment(auto_requeue, requeue_signal)]`` inside a SLURM job (``srun`` /
    ``sbatch`` set ``SLURM_NTASKS``), else ``[]``."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    if not SLURMEnvironment.detect():
        return []
    slurm = OmegaConf.select(cfg, "slurm", default=None) or {}
    auto = slurm.get("auto_requeue", True)
    if not isinstance(auto, bool):
        raise ConfigError(f"slurm.auto_requeue={auto!r} is not valid: give true (save a checkpoint "
                          f"and requeue on slurm.requeue_signal) or false")
    return [SLURMEnvironment(auto_requeue=auto,
                             requeue_signal=requeue_signal(slurm.get("requeue_signal", "SIGUSR1")))]
