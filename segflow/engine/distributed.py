"""DDP inside Hydra: every rank of a job writes into that job's folder, and each job of a
sweep leaves the process as it found it.

Lightning's ``ddp`` strategy starts ranks 1..N-1 by re-running the current command
(``_SubprocessScriptLauncher``). Under Hydra it re-runs ``sys.argv`` with
``hydra.run.dir=<hydra.run.dir>``; inside a multirun that is wrong three ways: ``argv``
still holds ``-m`` and the whole sweep (each child would launch the sweep again),
``hydra.run.dir`` is not the job's folder (the job lives under ``hydra.sweep.dir``), and
under the joblib or submitit launchers ``__main__`` / ``argv`` belong to the worker
process (``loky``, ``submitit``), not to ``segflow.train`` at all.

:func:`hydra_ddp_job` replaces only the command Lightning builds for its children, for the
duration of one job: ``python -m <entry> <this job's own overrides> hydra.run.dir=<this
job's folder> hydra.output_subdir=null`` plus per-rank log files — Lightning keeps doing
all the process management (environment, ports, watching and killing the children).
When the job ends it destroys the process group and restores the environment variables
Lightning set (``MASTER_PORT``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``OMP_NUM_THREADS``...),
so the next job of a sequential sweep (or the next task of a re-used joblib worker)
starts its own ranks on a fresh port instead of joining the previous job's dead group.

Used by the entry points only (Hydra + Lightning + ``torch.distributed``).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig

from segflow.infra.compat import ddp_child_command
from segflow.runs.layout import log_name

log = logging.getLogger(__name__)


@dataclass
class ChildCommand:
    """What the DDP children of one job run.

    Attributes:
        module: the entry point (``segflow.train``), run as ``python -m <module>``.
        extra_overrides: appended after the job's own overrides, e.g. the checkpoint the
            job resolved from ``resume=auto`` so that every rank resumes the same file.
        drop_keys: top-level keys whose overrides are not passed on (superseded by
            ``extra_overrides``).
    """

    module: str
    extra_overrides: list[str] = field(default_factory=list)
    drop_keys: tuple[str, ...] = ()


def hydra_quote(value: str) -> str:
    """A value quoted for Hydra's override grammar (paths may hold ``=``, ``,``, spaces)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _override_key(override: str) -> str:
    """``model.lr`` of ``++model.lr=3``; ``model`` of ``model=unet``."""
    return re.split(r"[=@]", override.lstrip("+~"), maxsplit=1)[0]


def child_command(spec: ChildCommand, local_rank: int) -> tuple[list[str], str]:
    """The command and working directory of DDP rank ``local_rank`` of the current Hydra job.

    The child runs the job's own overrides (``hydra.overrides.task``: in a multirun, this
    job's values, never the sweep) in Hydra's single-run mode with the job's output
    folder as ``hydra.run.dir``; it writes no ``.hydra/`` of its own and logs to
    ``train_rank<r>.log`` beside the job's ``train.log`` (console: warnings only, so the
    terminal shows rank 0).
    """
    hc = HydraConfig.get()
    out_dir = str(Path(hc.runtime.output_dir).resolve())
    cmd = [sys.executable, "-m", spec.module]
    for source in hc.runtime.config_sources:
        if source.provider == "command-line":  # --config-dir given to the parent
            cmd += ["--config-dir", re.sub(r"^file://", "", source.path)]
    if hc.job.config_name:
        cmd += ["--config-name", hc.job.config_name]
    drop = set(spec.drop_keys)
    cmd += [o for o in hc.overrides.task if _override_key(o) not in drop]
    cmd += list(spec.extra_overrides)
    log_file = str(Path(out_dir) / log_name("train", local_rank))
    cmd += [
        f"hydra.run.dir={hydra_quote(out_dir)}",
        "hydra.output_subdir=null",  # one .hydra/ per job: the parent's
        f"hydra.job.name=rank{local_rank}",
        f"hydra.job_logging.handlers.file.filename={hydra_quote(log_file)}",
        "++hydra.job_logging.handlers.console.level=WARNING",
    ]
    return cmd, hc.runtime.cwd


# What Lightning's launcher and seed_everything put into os.environ while a job runs.
_JOB_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE",
            "OMP_NUM_THREADS", "PL_GLOBAL_SEED", "PL_SEED_WORKERS")


def is_ddp_child() -> bool:
    """True in a rank that Lightning's launcher started (it has ``LOCAL_RANK`` > 0)."""
    return int(os.environ.get("LOCAL_RANK", "0")) > 0


@contextmanager
def hydra_ddp_job(spec: ChildCommand) -> Iterator[ChildCommand]:
    """Run one Hydra job whose DDP children re-enter this job, then clean up.

    Yields ``spec`` so the job can add ``extra_overrides`` before ``trainer.fit``.
    """
    saved_env = {k: os.environ.get(k) for k in _JOB_ENV}
    saved_threads = torch.get_num_threads()
    try:
        with ddp_child_command(lambda local_rank: child_command(spec, local_rank)):
            yield spec
    finally:
        if not is_ddp_child():
            _end_process_group()
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            torch.set_num_threads(saved_threads)


def _end_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        log.debug("destroying the process group of this job")
        dist.destroy_process_group()


def job_overrides() -> Sequence[str]:
    """The current Hydra job's own overrides (for messages)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def env_global_rank() -> int:
    """This process's global rank as a cluster sets it (``RANK``, SLURM's ``SLURM_PROCID``);
    0 when neither is set."""
    for key in ("RANK", "SLURM_PROCID"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


def all_gather_object(obj: object) -> list:
    """``obj`` from every rank, in rank order (``[obj]`` outside a process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        out: list = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]
