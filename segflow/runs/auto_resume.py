"""``resume=auto``: find the newest ``last.ckpt`` of the same experiment and configuration.

A run's *fingerprint* is a hash of what it learns — an explicit allowlist of ``model``,
``data``, ``seed`` and the ``trainer`` keys that change the optimisation
(:data:`FINGERPRINT_KEYS`) — and leaves out where and how long it runs (devices,
strategy, nodes, ``max_epochs``, loader workers, logging cadence), so that the
same command re-run after a crash, a ``kill`` or a SLURM requeue, on other GPUs or with
more epochs, finds its own checkpoint, and a run with another learning rate never does.
Earlier runs are fingerprinted from their ``.hydra/config.yaml``; nothing extra is written.
The candidates are each run's ``checkpoints/last.ckpt`` and the ``hpc_ckpt_<n>.ckpt`` that
Lightning writes on SLURM's pre-timeout signal (``launcher=slurm``). A run marked
``FAILED`` (:mod:`segflow.runs.failed`) is a candidate only through a checkpoint written
whole before it failed; one without a checkpoint never is.

Hydra/OmegaConf only (an entry-point helper).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from segflow.infra.atomic import checkpoint_problem, write_json
from segflow.infra.errors import ConfigError
from segflow.runs.failed import failed_reason
from segflow.runs.layout import Layout, RunFolder, run_folder
from segflow.runs.records import read_run_config

log = logging.getLogger(__name__)

# What defines a run, as an allowlist: a key joins the fingerprint only when it is named
# here (None: the whole section), so a new key — a logging option, a speed knob — never
# changes the fingerprint of existing runs. Left out on purpose: placement and length
# (devices, strategy, nodes, max_epochs, max_time), speed (loader workers, val_bs,
# limit_*_batches), logging and image logging, and the test/inference settings.
FINGERPRINT_KEYS: dict[str, tuple[str, ...] | None] = {
    "seed": None,
    # the network, the method and the optimisation recipe
    "model": ("name", "net", "method", "optimizer", "scheduler", "learning_rate", "weight_decay",
              "ema_decay"),
    # the training images, how they are read, cropped, normalised and augmented, and the
    # validation split that picks the best checkpoint
    "data": ("name", "root", "train_dir", "val_dir", "image_dir", "label_dir", "fov_dir",
             "channels", "gray_from", "image_size", "train_bs", "num_samples_per_image", "mean",
             "std", "intensity", "augment", "val_fraction", "split_seed", "synthetic", "seed"),
    # the trainer settings that change the optimisation's numbers
    "trainer": ("precision", "accumulate_grad_batches", "gradient_clip_val",
                "gradient_clip_algorithm", "deterministic", "sync_batchnorm"),
    # debug=...: the batch settings it uses in place of data.* (a smoke run never resumes
    # into a real one)
    "debug": ("data",),
}


def fingerprint(cfg: DictConfig) -> str:
    """12 hex characters identifying what a run learns: the keys of
    :data:`FINGERPRINT_KEYS` (see the module docstring)."""
    part: dict[str, Any] = {}
    for section, keys in FINGERPRINT_KEYS.items():
        node = cfg.get(section)
        if node is None and section == "debug":  # only runs under the debug group have it
            continue
        value = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        if keys is not None and isinstance(value, dict):
            value = {k: v for k, v in value.items() if k in keys}
        part[section] = value
    blob = json.dumps(part, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def find_last_checkpoint(output_root: str | Path, experiment_name: str, fp: str) -> Path | None:
    """The newest ``checkpoints/last.ckpt`` under ``output_root`` (single runs and multirun
    jobs) whose run has this ``experiment_name`` and fingerprint ``fp``; None if none."""
    candidates: list[tuple[float, Path]] = []
    for ckpt in Layout.at(output_root).resumable():
        run_dir = run_folder(ckpt)
        cfg = read_run_config(run_dir)
        if cfg is None or cfg.get("experiment_name") is None:
            continue
        try:
            same = str(cfg.experiment_name) == experiment_name and fingerprint(cfg) == fp
        except Exception as exc:  # interpolations that no longer resolve: not a candidate
            log.debug("skipping %s: %s", run_dir, exc)
            continue
        if same:
            candidates.append((ckpt.stat().st_mtime, ckpt))
    for _, ckpt in sorted(candidates, reverse=True):  # newest intact one
        running = live_lock(run_folder(ckpt))
        if running is not None:
            log.warning("resume=auto: skipping %s: its run is still training (%s; its %s); "
                        "trying the next newest", ckpt, running, RunFolder(run_folder(ckpt)).lock.name)
            continue
        problem = checkpoint_problem(ckpt)
        if problem is None:
            reason = failed_reason(run_folder(ckpt))
            if reason is not None:
                log.info("resume=auto: the run of %s is marked FAILED (%s); its checkpoint was "
                         "written whole before that", ckpt, reason)
            return ckpt
        log.warning("resume=auto: skipping %s: it %s (cut short by a full disk or a kill?); "
                    "trying the next newest", ckpt, problem)
    return None


@contextmanager
def run_lock(run_dir: str | Path, primary: bool = True) -> Iterator[None]:
    """``<run>/RUNNING`` (pid, host, SLURM job id) while the run trains, so that
    ``resume=auto`` elsewhere never forks it; removed when training ends, however it ends
    (a ``kill -9`` leaves it, naming a process that is gone)."""
    lock = RunFolder(Path(run_dir)).lock
    if primary:
        write_json(lock, {"pid": os.getpid(), "host": socket.gethostname(),
                          "slurm_job_id": os.environ.get("SLURM_JOB_ID")})
    try:
        yield
    finally:
        if primary:
            lock.unlink(missing_ok=True)


def live_lock(run_dir: str | Path) -> str | None:
    """Who is training ``run_dir`` now ("pid 123 on host"), or None: no lock, its process
    is gone, or it is this SLURM job's own earlier attempt (requeued)."""
    try:
        held = json.loads(RunFolder(Path(run_dir)).lock.read_text())
        pid, host = int(held["pid"]), str(held["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    job = os.environ.get("SLURM_JOB_ID")
    if job and held.get("slurm_job_id") == job:
        return None
    if host != socket.gethostname():
        return f"pid {pid} on {host}"  # cannot be asked from here: taken as running
    if pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return f"pid {pid} on {host}"


def slurm_requeued() -> bool:
    """True in a SLURM job that was requeued (pre-emption, time-out with submitit)."""
    return os.environ.get("SLURM_RESTART_COUNT", "0").strip() not in ("", "0")


def resolve_resume(cfg: DictConfig, output_root: str | Path) -> str | None:
    """The checkpoint to resume from: ``ckpt_path`` as given, or for ``resume=auto`` the
    newest matching ``last.ckpt`` (None when there is none yet: the run starts fresh).
    A job that SLURM requeued resumes as with ``resume=auto`` unless told otherwise.

    Raises:
        ConfigError: an unknown ``resume`` value, or both ``resume`` and ``ckpt_path``.
    """
    resume = cfg.get("resume")
    ckpt_path = cfg.get("ckpt_path")
    if resume in (None, False, "none", "null") and not ckpt_path and slurm_requeued():
        log.info("SLURM requeued this job (SLURM_RESTART_COUNT=%s): resume=auto",
                 os.environ["SLURM_RESTART_COUNT"])
        resume = "auto"
    if resume in (None, False, "none", "null"):
        return str(ckpt_path) if ckpt_path else None
    if resume != "auto":
        raise ConfigError(f"resume={resume} is not understood; use resume=auto (newest last.ckpt "
                          f"of this experiment and config) or ckpt_path=<file>")
    if ckpt_path:
        raise ConfigError(f"both resume=auto and ckpt_path={ckpt_path} are set; keep one")
    fp = fingerprint(cfg)
    found = find_last_checkpoint(output_root, str(cfg.experiment_name), fp)
    if found is None:
        log.info("resume=auto: no last.ckpt of experiment %s with config fingerprint %s under "
                 "%s; starting fresh", cfg.experiment_name, fp, output_root)
        return None
    log.info("resume=auto: resuming %s (experiment %s, config fingerprint %s)",
             found, cfg.experiment_name, fp)
    return str(found)
