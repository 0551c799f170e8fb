"""A dying or hanging DDP rank ends the whole job in bounded time, and the run says so.

Three parts, used by ``segflow.train``:

* :func:`strategy_with_timeout` — the DDP/FSDP strategy named by ``trainer.strategy``
  with a timeout on its collectives (``ddp_timeout_s``): a rank that stops answering
  (hung, stopped, its node gone) makes the others fail after that many seconds instead of
  waiting for ever (PyTorch's default is 30 minutes).
* :func:`faults_as_errors` — the error a surviving rank gets from its collectives (the
  peer closed the connection, or the timeout passed) becomes one sentence
  (:class:`DistributedFault`, exit status 1): the job stopped, the run folder is marked
  ``FAILED`` (:mod:`segflow.runs.failed`) and ``resume=auto`` continues from the last
  intact checkpoint.
* :func:`mark_on_child_death` — when Lightning's launcher sees a DDP child process die,
  it kills every process of the job at once (``SIGKILL``, so nothing can be written
  after): the run folder is marked ``FAILED`` first.
"""

from __future__ import annotations

import inspect
import logging
import re
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from segflow.infra.compat import ddp_child_watch
from segflow.infra.errors import ConfigError, SegflowError
from segflow.runs.failed import (
    failed_run_guard,
    is_failed,
    is_stop,
    mark_failed,
    newest_checkpoint,
    secondary_rank,
)

log = logging.getLogger(__name__)


class DistributedFault(SegflowError, RuntimeError):
    """Another rank of a DDP job died or stopped answering (not the user's mistake: exit 1)."""

    exit_code = 1


def strategy_with_timeout(trainer_cfg: Any, timeout_s: Any) -> Any | None:
    """The strategy object for ``trainer.strategy`` (a registered name such as ``ddp``,
    ``ddp_spawn``, ``ddp_find_unused_parameters_true``, ``fsdp``) with a collective
    timeout of ``timeout_s`` seconds; None when the strategy takes no timeout (``auto``,
    single device) or ``timeout_s`` is null (PyTorch's default).

    Raises:
        ConfigError: ``ddp_timeout_s`` is not a positive number.
    """
    if timeout_s is None:
        return None
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or timeout_s <= 0:
        raise ConfigError(f"ddp_timeout_s={timeout_s!r} is not valid: give the seconds a DDP rank "
                          f"waits for the others in a collective (a number > 0, e.g. 1800), or "
                          f"null for PyTorch's default")
    name = trainer_cfg.get("strategy", "auto")
    if not isinstance(name, str):
        return None
    from pytorch_lightning.strategies import StrategyRegistry

    if name not in StrategyRegistry:
        return None
    entry = StrategyRegistry[name]
    cls = entry["strategy"]
    if "timeout" not in inspect.signature(cls.__init__).parameters:
        return None
    return cls(**{**entry["init_params"], "timeout": timedelta(seconds=float(timeout_s))})


#: What a collective raises when a peer is gone (gloo, NCCL) or the timeout passed.
_PEER_GONE = re.compile(r"connection (reset|closed) by peer|broken pipe|timed? ?out|timeout|"
                        r"watchdog|NCCL communicator was aborted|socket", re.IGNORECASE)


def distributed_fault(exc: BaseException, run_dir: str | Path | None = None) -> DistributedFault | None:
    """``exc`` as a :class:`DistributedFault` when it is a collective failing because a
    peer died or stopped answering; None otherwise."""
    import torch.distributed as dist

    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        kinds = (RuntimeError, *(k for k in (getattr(dist, "DistError", None),) if k is not None))
        if (isinstance(cur, kinds) and not isinstance(cur, SegflowError)
                and _PEER_GONE.search(str(cur))):
            first = re.sub(r"\[[^\]]*\.(cc|cpp):\d+\]\s*", "", str(cur).strip().splitlines()[0])
            return DistributedFault(_sentence(first.split(". ")[0][:200], run_dir))
        cur = cur.__cause__ or cur.__context__
    return None


def _sentence(detail: str, run_dir: str | Path | None) -> str:
    ckpt = newest_checkpoint(Path(run_dir)) if run_dir is not None and Path(run_dir).is_dir() else None
    then = (f"the same command with resume=auto continues from {ckpt}" if ckpt
            else "no checkpoint was written yet")
    return (f"another DDP rank died or stopped answering within ddp_timeout_s ({detail}): the "
            f"job stopped on every rank; {then}; see train_rank<r>.log for why that rank ended")


@contextmanager
def faults_as_errors(run_dir: str | Path | None = None) -> Iterator[None]:
    """Re-raise a collective's failure caused by a lost peer as a :class:`DistributedFault`."""
    try:
        yield
    except Exception as exc:
        fault = distributed_fault(exc, run_dir)
        if fault is None:
            raise
        raise fault from exc


@contextmanager
def mark_on_child_death(run_dir: str | Path) -> Iterator[None]:
    """While inside, a DDP child process that dies with a non-zero status marks
    ``run_dir`` ``FAILED`` (naming the rank and its status) before Lightning's launcher
    kills the job's other processes."""

    def on_death(local_rank: int, pid: int, returncode: int) -> None:
        how = (f"was killed by {signal.Signals(-returncode).name}" if returncode < 0
               and -returncode in signal.Signals._value2member_map_ else f"exited with status {returncode}")
        reason = (f"DDP rank {local_rank} (pid {pid}) {how}; every process of the job was stopped; "
                  f"the same command with resume=auto continues from the last intact checkpoint")
        try:
            if not is_failed(run_dir):
                mark_failed(run_dir, reason, who="rank 0 launcher")
            log.error("%s", reason)
        except OSError as exc:  # the folder cannot be written: the kill goes ahead
            log.debug("could not mark %s: %s", run_dir, exc)

    with ddp_child_watch(on_death) as children:
        try:
            yield
        except BaseException as exc:
            if not is_stop(exc):  # a hung (or stopped) child would outlive the job
                _kill(children)
            raise


def _kill(children: list) -> None:
    for proc in children:
        if proc.poll() is None:
            log.debug("killing DDP child %d", proc.pid)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)


@contextmanager
def guarded_training(run_dir: str | Path, primary: bool | None = None) -> Iterator[None]:
    """Everything above around one training job: a failure removes or marks the run
    folder (:func:`segflow.runs.failed.failed_run_guard`), a lost peer is one sentence,
    a dead DDP child marks the folder before the job is killed. A removed run's experiment
    folder goes too when nothing else is left in it."""
    primary = not secondary_rank() if primary is None else primary
    with failed_run_guard(run_dir, primary=primary, who="rank 0" if primary else "DDP rank > 0",
                          prune_up_to=Path(run_dir).parent.parent), \
            faults_as_errors(run_dir), mark_on_child_death(run_dir):
        yield
