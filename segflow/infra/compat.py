"""Every use of PyTorch Lightning internals, in one place.

segflow relies on a few Lightning names that are not public API. They are reached only
through the functions below, and :func:`lightning_problems` checks that each one still
exists with the shape segflow expects (``tests/test_compat.py`` runs it), so a Lightning
upgrade that moves one fails with a sentence naming it instead of somewhere deep in a run.

The internals used:

* ``pytorch_lightning.strategies.launchers.subprocess_script._hydra_subprocess_cmd`` —
  the command Lightning runs for DDP ranks 1..N-1 under Hydra (``segflow.engine.distributed``
  replaces it for one job);
* ``..._launch_process_observer`` and ``lightning_fabric``'s ``_ChildProcessObserver`` —
  the thread that kills a DDP job whose child died (``segflow.engine.faults`` marks
  the run ``FAILED`` first);
* ``trainer.fit_loop._data_fetcher`` — the training iterator, restarted after a resume
  (:class:`segflow.engine.callbacks.ExactResume`);
* a logger's ``_experiment`` — the writer, ``None`` until the logger first writes
  (``segflow.engine.callbacks.TensorBoardLogger`` flushes it without creating one);
* ``WeightAveraging`` (public since 2.6) and its ``_average_model`` / ``_device`` /
  ``_use_buffers`` attributes (:class:`segflow.engine.callbacks.EMA` installs its own averaged model).

The Lightning versions segflow is tested with are :data:`LIGHTNING_SUPPORTED`
(``pyproject.toml`` pins the same range).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import WeightAveraging
from pytorch_lightning.strategies.launchers import subprocess_script as _subprocess_script

__all__ = ["LIGHTNING_SUPPORTED", "WeightAveraging", "ddp_child_command", "ddp_child_watch",
           "install_average_model", "lightning_problems", "logger_experiment_if_open",
           "restart_train_iterator", "weight_averaging_device"]

#: The Lightning range segflow is tested with (as in pyproject.toml's dependency).
LIGHTNING_SUPPORTED = ">=2.6,<2.7"

_HYDRA_CMD = "_hydra_subprocess_cmd"
_OBSERVER = "_launch_process_observer"


# -- DDP children under Hydra -------------------------------------------------------------
@contextmanager
def ddp_child_command(build: Callable[[int], tuple[list[str], str]]) -> Iterator[None]:
    """While inside, Lightning's DDP launcher starts rank ``local_rank`` with the
    ``(command, working directory)`` that ``build(local_rank)`` returns."""
    previous = getattr(_subprocess_script, _HYDRA_CMD)
    setattr(_subprocess_script, _HYDRA_CMD, build)
    try:
        yield
    finally:
        setattr(_subprocess_script, _HYDRA_CMD, previous)


@contextmanager
def ddp_child_watch(on_death: Callable[[int, int, int], None]) -> Iterator[list]:
    """While inside, when Lightning's launcher finds a DDP child process ended with a
    non-zero status, ``on_death(local_rank, pid, returncode)`` runs before the launcher
    kills the job's other processes (Lightning's behaviour, kept). Yields the list that
    receives the child processes (``subprocess.Popen``) once Lightning started them."""
    from lightning_fabric.strategies.launchers.subprocess_script import _ChildProcessObserver

    class _Observer(_ChildProcessObserver):
        def _terminate_all(self) -> None:
            for i, proc in enumerate(self._child_processes):
                if proc.returncode:
                    on_death(i + 1, proc.pid, proc.returncode)
                    break
            super()._terminate_all()

    children: list = []

    def launch(procs: list) -> None:
        children[:] = procs
        _Observer(main_pid=os.getpid(), child_processes=procs).start()

    previous = getattr(_subprocess_script, _OBSERVER)
    setattr(_subprocess_script, _OBSERVER, launch)
    try:
        yield children
    finally:
        setattr(_subprocess_script, _OBSERVER, previous)


# -- the training iterator ------------------------------------------------------------------
def restart_train_iterator(trainer: pl.Trainer) -> bool:
    """Start a fresh training iterator (the sampler then reads the current epoch).

    Returns False when the trainer has no iterator to restart."""
    fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
    if fetcher is None:
        return False
    iter(fetcher)
    return True


# -- loggers --------------------------------------------------------------------------------
def logger_experiment_if_open(logger: Any) -> Any:
    """The logger's writer if it has been created, else None (``logger.experiment`` would
    create one)."""
    return getattr(logger, "_experiment", None)


# -- weight averaging -----------------------------------------------------------------------
def weight_averaging_device(callback: WeightAveraging) -> Any:
    """The device the callback keeps its averaged copy on (None: the model's)."""
    return callback._device


def install_average_model(callback: WeightAveraging, model: Any) -> None:
    """Make ``model`` (a ``torch.optim.swa_utils.AveragedModel``) the callback's average."""
    callback._average_model = model


# -- the check -------------------------------------------------------------------------------
def lightning_problems() -> list[str]:
    """One sentence per Lightning internal that is missing or changed shape (empty: all fine)."""
    from packaging.specifiers import SpecifierSet
    from torch import nn

    problems: list[str] = []
    version = pl.__version__
    if version.split("+")[0] not in SpecifierSet(LIGHTNING_SUPPORTED):
        problems.append(f"pytorch-lightning {version} is outside the tested range "
                        f"{LIGHTNING_SUPPORTED}; install a version in it or re-check segflow.infra.compat")
    hook = getattr(_subprocess_script, _HYDRA_CMD, None)
    if not callable(hook):
        problems.append(f"pytorch_lightning.strategies.launchers.subprocess_script.{_HYDRA_CMD} "
                        f"is gone: DDP children under Hydra start differently; update "
                        f"segflow.infra.compat.ddp_child_command")
    elif list(inspect.signature(hook).parameters) != ["local_rank"]:
        problems.append(f"{_HYDRA_CMD} now takes {list(inspect.signature(hook).parameters)} "
                        f"instead of (local_rank); update segflow.infra.compat.ddp_child_command")
    if not callable(getattr(_subprocess_script, _OBSERVER, None)):
        problems.append(f"pytorch_lightning.strategies.launchers.subprocess_script.{_OBSERVER} is "
                        f"gone; update segflow.infra.compat.ddp_child_watch")
    from lightning_fabric.strategies.launchers import subprocess_script as _fabric_script

    observer = getattr(_fabric_script, "_ChildProcessObserver", None)
    if observer is None or not all(hasattr(observer, a) for a in ("_terminate_all", "_run")):
        problems.append("lightning_fabric's _ChildProcessObserver (or its _terminate_all) is gone; "
                        "update segflow.infra.compat.ddp_child_watch")
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1)
    if not hasattr(trainer.fit_loop, "_data_fetcher"):
        problems.append("Trainer.fit_loop has no _data_fetcher: the training iterator cannot "
                        "be restarted after a resume; update segflow.infra.compat.restart_train_iterator")
    from pytorch_lightning.loggers import TensorBoardLogger

    tb = TensorBoardLogger(save_dir="/nonexistent-segflow-compat-check")
    if not hasattr(tb, "_experiment"):
        problems.append("TensorBoardLogger has no _experiment attribute; update "
                        "segflow.infra.compat.logger_experiment_if_open")
    try:
        wa = WeightAveraging(device=None)
    except TypeError as exc:
        problems.append(f"WeightAveraging(device=None) fails ({exc}); update segflow.engine.callbacks.EMA")
    else:
        for attr in ("_device", "_average_model", "_use_buffers"):
            if not hasattr(wa, attr):
                problems.append(f"WeightAveraging has no {attr}; update segflow.infra.compat and "
                                f"segflow.engine.callbacks.EMA")
        if not isinstance(getattr(WeightAveraging, "setup", None), Callable):
            problems.append("WeightAveraging.setup is gone; update segflow.engine.callbacks.EMA")
    from torch.optim.swa_utils import AveragedModel

    if "n_averaged" not in dict(AveragedModel(nn.Linear(1, 1)).named_buffers()):
        problems.append("torch.optim.swa_utils.AveragedModel has no n_averaged buffer; "
                        "update segflow.engine.callbacks.EMA")
    return problems


def summary_table_without_flops(summary_data: list[tuple[str, list[str]]], total_parameters: int,
                                trainable_parameters: int, model_size: float,
                                total_training_modes: dict[str, int]) -> str:
    """Lightning's model summary table without its FLOPs column and ``Total Flops`` line
    (Lightning counts FLOPs only with an ``example_input_array``; without one it prints
    0 for every layer)."""
    from pytorch_lightning.utilities.model_summary.model_summary import _format_summary_table

    cols = [c for c in summary_data if c[0] != "FLOPs"]
    table = _format_summary_table(total_parameters, trainable_parameters, model_size,
                                  total_training_modes, 0, *cols)
    return "\n".join(ln for ln in table.splitlines() if not ln.rstrip().endswith("Total Flops"))
