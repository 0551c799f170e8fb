"""A run stopped by the user's mistake before it produced anything leaves no folder.

Hydra creates the run folder (``.hydra/``, ``train.log``) before segflow reads the config;
a bad value, a missing dataset or nothing to resume then stops the run at once. Such a
folder holds nothing a user could want — the error is printed on the console — and would
otherwise be listed among real runs (``resume=auto``, ``segflow.report``, a sweep's
folders). :func:`discard_unstarted_run` removes it. A folder that holds anything else (a
checkpoint, metrics, a background run's ``console.log`` that the user reads the error
from) is left alone.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from segflow.errors import disk_error, find_user_error

#: What Hydra and the log set-up write before the first step: nothing else may be there.
UNSTARTED = frozenset({".hydra", "train.log", "preprocess.json"})


def is_unstarted(run_dir: Path, also: tuple[str, ...] = ()) -> bool:
    """True when ``run_dir`` holds only :data:`UNSTARTED` files (and ``also``) and empty
    folders."""
    for entry in run_dir.iterdir():
        if entry.name in UNSTARTED or entry.name in also:
            continue
        if entry.is_dir() and not any(p.is_file() for p in entry.rglob("*")):
            continue  # e.g. an empty tensorboard/ a logger created
        return False
    return True


@contextmanager
def discard_unstarted_run(log: logging.Logger, also: tuple[str, ...] = ()) -> Iterator[None]:
    """On a user error (see :mod:`segflow.errors`) in the block, remove the Hydra output
    folder when :func:`is_unstarted` (``also``: other files that count as nothing, e.g.
    ``export.log``); the error then propagates unchanged (rank 0 only)."""
    try:
        yield
    except Exception as exc:
        if find_user_error(exc) is not None or disk_error(exc) is not None:
            _discard(log, also)
        raise


def _discard(log: logging.Logger, also: tuple[str, ...] = ()) -> None:
    from hydra.core.hydra_config import HydraConfig

    from segflow.runs.folders import _is_secondary_rank

    try:
        run_dir = Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # not inside a Hydra job
        return
    if _is_secondary_rank() or not run_dir.is_dir() or not is_unstarted(run_dir, also):
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    try:  # the experiment's folder, when this was its only run
        run_dir.parent.rmdir()
    except OSError:
        pass
    log.info("removed %s: the run stopped before training", run_dir)
