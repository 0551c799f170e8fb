"""Failed runs leave nothing behind, or say so.

A command that fails after its folder was created either removes that folder — when the
failure is the user's mistake (a bad value, file or place: exit status 2) and the folder
holds nothing but what the failed start itself wrote (Hydra's ``.hydra/``, the log files,
``preprocess.json``, logger folders): a configuration error leaves no dead run — or marks
it with a ``FAILED`` file (results of its own such as checkpoints, files it did not write,
or a crash whose log must stay): the error in one line, then when it happened and the
newest checkpoint, if any.

By rule, ``segflow.report`` skips runs marked ``FAILED``, and ``resume=auto`` considers
such a run only through a checkpoint that was written whole before the failure (a run
whose rank died mid-epoch continues from its ``last.ckpt``); one that failed before
writing any is never a candidate.

No torch, no Hydra here.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from segflow.infra.atomic import write_text
from segflow.infra.errors import disk_error, find_user_error

log = logging.getLogger(__name__)

#: The marker file of a failed run.
FAILED = "FAILED"

#: What a start writes before any result: a folder holding only these is removed on failure.
_BOOKKEEPING = (".hydra", "*.log", "preprocess.json", "tensorboard", "csv", "checkpoints", FAILED,
                "wandb", "mlruns", "lightning_logs", "RUNNING")
#: Files that are results: their presence keeps the folder (marked FAILED instead).
_RESULTS = ("*.ckpt", "metrics.json", "console.log")


def failure_reason(exc: BaseException) -> str:
    """One line saying why a command failed: the user error's sentence, or the exception's
    type and first line."""
    user = find_user_error(exc) or disk_error(exc)
    if user is not None:
        return str(user)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() or p.is_symlink()]


def holds_results(folder: Path) -> bool:
    """Whether ``folder`` holds anything beyond a failed start's bookkeeping."""
    for entry in folder.iterdir():
        if not any(fnmatch.fnmatch(entry.name, pat) for pat in _BOOKKEEPING) or entry.name == "console.log":
            return True
    return any(any(fnmatch.fnmatch(p.name, pat) for pat in _RESULTS) for p in _files(folder))


def newest_checkpoint(folder: Path) -> Path | None:
    """The newest ``*.ckpt`` under ``folder`` (None if none)."""
    ckpts = [p for p in folder.rglob("*.ckpt") if p.is_file()]
    return max(ckpts, key=lambda p: p.stat().st_mtime) if ckpts else None


def mark_failed(folder: str | Path, reason: str, who: str = "") -> Path:
    """Write ``<folder>/FAILED``: the reason on its first line, then the time, the process
    and the newest checkpoint (what ``resume=auto`` may continue from)."""
    folder = Path(folder)
    ckpt = newest_checkpoint(folder)
    lines = [reason.replace("\n", " "),
             f"time: {time.strftime('%Y-%m-%d %H:%M:%S')}",
             f"process: {who or 'pid'} {os.getpid()}",
             f"newest checkpoint: {ckpt if ckpt else 'none'}"]
    path = folder / FAILED
    write_text(path, "\n".join(lines) + "\n")
    return path


def failed_reason(folder: str | Path) -> str | None:
    """The first line of ``<folder>/FAILED``, or None when the run is not marked."""
    path = Path(folder) / FAILED
    if not path.is_file():
        return None
    try:
        return (path.read_text(errors="replace").splitlines() or ["(no reason recorded)"])[0]
    except OSError:
        return "(FAILED is unreadable)"


def is_failed(folder: str | Path) -> bool:
    """Whether the run folder is marked ``FAILED``."""
    return (Path(folder) / FAILED).is_file()


def is_stop(exc: BaseException) -> bool:
    """A deliberate stop, not a failure: exit status 0, or 128 + SIGTERM / SIGINT after
    ``last.ckpt`` was written (``segflow.train``'s clean stop)."""
    if not isinstance(exc, SystemExit):
        return False
    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code == 0 or code in (128 + signal.SIGTERM, 128 + signal.SIGINT)


def settle_failed_folder(folder: str | Path, reason: str, *, may_remove: bool = True,
                         who: str = "", prune_up_to: str | Path | None = None) -> str:
    """Remove ``folder`` when it holds only a failed start's bookkeeping (and
    ``may_remove``), else mark it ``FAILED``; returns "removed", "marked" or "gone".
    After a removal, parents left empty are removed too, up to (not including)
    ``prune_up_to`` when it is one of them (``<run>/eval/logs/`` of a failed evaluation)."""
    folder = Path(folder)
    if not folder.is_dir():
        return "gone"
    try:
        if may_remove and not holds_results(folder):
            shutil.rmtree(folder)
            _prune(folder.parent, prune_up_to)
            return "removed"
        if not is_failed(folder) or may_remove:  # the primary process's reason wins
            mark_failed(folder, reason, who)
        return "marked"
    except OSError as exc:  # a read-only or vanished folder: nothing more can be done
        log.debug("could not settle %s: %s", folder, exc)
        return "gone"


def secondary_rank() -> bool:
    """A DDP / SLURM process other than the job's first (it never removes folders)."""
    return any(os.environ.get(k, "0") not in ("", "0")
               for k in ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID"))


def users_mistake(exc: BaseException) -> bool:
    """A bad value, file or place (exit status 2), not a crash or a lost DDP rank."""
    if isinstance(exc, SystemExit):
        return exc.code == 2
    user = find_user_error(exc) or disk_error(exc)
    return (user is not None and getattr(user, "exit_code", 2) == 2
            and not getattr(user, "keeps_run", False))  # e.g. a diverged run: its log stays


def _prune(folder: Path, stop: str | Path | None) -> None:
    if stop is None:
        return
    stop = Path(stop).resolve()
    cur = folder.resolve()
    while cur != stop and stop in cur.parents:
        try:
            cur.rmdir()  # only when empty
        except OSError:
            return
        cur = cur.parent


@contextmanager
def failed_run_guard(folder: str | Path | None, *, primary: bool | None = None, who: str = "",
                     prune_up_to: str | Path | None = None) -> Iterator[None]:
    """Around a command whose output folder already exists: when the command fails (an
    exception, or ``sys.exit`` with a non-zero status other than a deliberate stop), the
    folder is removed or marked ``FAILED`` (:func:`settle_failed_folder`); the error goes
    on. Secondary processes (DDP ranks > 0, ``primary=False``) never remove it and only
    mark it when the primary process did not (default: from the environment)."""
    primary = not secondary_rank() if primary is None else primary
    try:
        yield
    except BaseException as exc:
        if folder is not None and not is_stop(exc) and not isinstance(exc, KeyboardInterrupt):
            reason = (f"exited with status {exc.code}" if isinstance(exc, SystemExit)
                      else failure_reason(exc))
            # Only a user's mistake removes the folder: a crash keeps its log (marked).
            settle_failed_folder(folder, reason, may_remove=primary and users_mistake(exc),
                                 who=who, prune_up_to=prune_up_to)
        raise


@contextmanager
def failed_claims(kind: str) -> Iterator[None]:
    """Around a command that claims result folders with
    :func:`segflow.runs.layout.shared_claims` (``kind``: "eval"): when it fails, each folder it
    claimed is removed if still empty of results, else marked ``FAILED``."""
    key = f"SEGFLOW_CLAIMED_{kind.upper()}"
    before = os.environ.get(key)
    try:
        yield
    except BaseException as exc:
        after = os.environ.get(key)
        if after and after != before and not is_stop(exc) and not secondary_rank():
            import json

            reason = (f"exited with status {exc.code}" if isinstance(exc, SystemExit)
                      else failure_reason(exc))
            for folder in json.loads(after):
                settle_failed_folder(folder, reason, may_remove=users_mistake(exc))
        raise


def print_skipped(folder: Path, what: str = "run") -> None:
    """A warning line for a run skipped because it is marked ``FAILED``."""
    print(f"warning: skipped {folder}: the {what} is marked FAILED ({failed_reason(folder)})",
          file=sys.stderr, flush=True)
