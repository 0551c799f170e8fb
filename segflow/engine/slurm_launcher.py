"""``launcher=slurm`` (``hydra_plugins.segflow_slurm.SlurmLauncher``, hydra-submitit-launcher's
SLURM launcher): a refused submission as one sentence, and job states read from ``squeue``
where the cluster keeps no accounting.

* A refused ``sbatch`` (an unknown partition, a GPU request on a partition without GPUs,
  a request over a limit) is one sentence quoting sbatch's own message, exit status 2 (no
  traceback), and the sweep folder it had started, which then holds only submitit's
  bookkeeping, is removed.
* submitit follows its jobs with ``sacct``; on a cluster without accounting every poll
  fails with a warning ("Bypassing sacct error ..., status may be inaccurate"). After the
  first such failure :class:`SqueueWatcher` logs one line and reads the states from
  ``squeue`` instead (which lists finished jobs for the cluster's ``MinJobAge``), so a
  job that ends without a result (cancelled, its node lost) is seen as ended.
* When the jobs are done, one line per job says whether it finished or failed and how
  often SLURM requeued it; a job that ended without a result (its task failed, it was
  cancelled, its node was lost) stops the sweep with one sentence, exit status 1.
"""

from __future__ import annotations

import io
import logging
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from segflow.infra.errors import ConfigError, SegflowError

log = logging.getLogger(__name__)

#: What sacct prints where the cluster has no accounting storage.
_NO_ACCOUNTING = "accounting storage is disabled"


def _squeue_command(job_ids: set[str]) -> list[str]:
    return ["squeue", "--noheader", "--states=all", "--format=%i|%T|%N",
            "--jobs=" + ",".join(sorted(job_ids))]


def _make_watcher_class() -> type:
    from submitit.slurm.slurm import SlurmInfoWatcher

    class SqueueWatcher(SlurmInfoWatcher):
        """submitit's SLURM state watcher, switching from sacct to squeue when the cluster
        has no accounting (one log line instead of a warning per poll)."""

        use_squeue = False

        def update(self) -> None:
            command = self._make_command()
            if command is None:
                return
            self._num_calls += 1
            if not self.use_squeue:
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode == 0:
                    self._store(done.stdout)
                    return
                message = (done.stderr or done.stdout).strip()
                type(self).use_squeue = True
                log.info("sacct cannot report job states here (%s): job states come from squeue",
                         message.splitlines()[0] if message else f"exit status {done.returncode}")
            ids = {jid.split("_")[0] for jid in self._registered - self._finished}
            done = subprocess.run(_squeue_command(ids), capture_output=True, text=True)
            if done.returncode == 0:  # else (a job already purged): keep the states known
                self._store("JobID|State|NodeList\n" + done.stdout)
            else:
                log.debug("squeue: %s", done.stderr.strip())
                self._store("")

        def _store(self, output: str) -> None:
            import time

            self._info_dict.update(self.read_info(output))
            self._last_status_check = time.time()
            for job_id in self._registered - self._finished:
                if self.is_done(job_id, mode="cache"):
                    self._finished.add(job_id)

    return SqueueWatcher


def _install_watcher() -> None:
    """Make every submitit SLURM job of this process use :class:`SqueueWatcher` (submitit
    keeps one watcher for all its SLURM jobs, a class attribute)."""
    from submitit.slurm.slurm import SlurmJob

    if type(SlurmJob.watcher).__name__ != "SqueueWatcher":
        SlurmJob.watcher = _make_watcher_class()(delay_s=600)


class _HoldSbatchErrors(io.TextIOBase):
    """``sys.stderr`` while jobs are submitted: submitit prints a refused sbatch's stderr
    before raising it; that text is held (it becomes the error's sentence), everything
    else passes through."""

    def __init__(self, target: Any):
        self.target = target
        self.held: list[str] = []
        self._after_held = False

    def write(self, text: str) -> int:
        if text.startswith("sbatch: "):
            self.held.append(text)
            self._after_held = True
            return len(text)
        if self._after_held and text == "\n":  # the end of print()'s line
            self._after_held = False
            return len(text)
        self._after_held = False
        return self.target.write(text)

    def flush(self) -> None:
        self.target.flush()


@contextmanager
def _held_sbatch_errors() -> Iterator[_HoldSbatchErrors]:
    stream = _HoldSbatchErrors(sys.stderr)
    saved, sys.stderr = sys.stderr, stream
    try:
        yield stream
    finally:
        sys.stderr = saved


def sbatch_refusal(exc: BaseException) -> str | None:
    """sbatch's own message when ``exc`` is submitit's error for a refused submission."""
    cause = exc.__cause__
    if not isinstance(cause, subprocess.CalledProcessError):
        return None
    if "sbatch" not in Path(str((cause.cmd or [""])[0])).name:
        return None
    text = cause.stderr or cause.output or ""
    text = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(dict.fromkeys(lines)) or f"exit status {cause.returncode}"


def remove_unstarted_sweep(sweep_dir: Path, stop: Path | None = None) -> bool:
    """Remove ``sweep_dir`` when it holds no job folder (only ``.submitit/`` and
    ``multirun.yaml``), and the parents this leaves empty up to ``stop``."""
    if not sweep_dir.is_dir() or any(p.name not in (".submitit", "multirun.yaml")
                                     for p in sweep_dir.iterdir()):
        return False
    shutil.rmtree(sweep_dir)
    cur = sweep_dir.parent.resolve()
    stop = stop.resolve() if stop is not None else None
    while stop is not None and cur != stop and stop in cur.parents:
        try:
            cur.rmdir()  # only when empty
        except OSError:
            break
        cur = cur.parent
    return True


def _restarts(job_id: str) -> int | None:
    """How often SLURM requeued the job (``scontrol show job``: ``Restarts=``), None when
    SLURM no longer knows it."""
    done = subprocess.run(["scontrol", "--oneliner", "show", "job", job_id], capture_output=True,
                          text=True)
    for field in done.stdout.split() if done.returncode == 0 else []:
        if field.startswith("Restarts=") and field[len("Restarts="):].isdigit():
            return int(field[len("Restarts="):])
    return None


def summarise(returns: Sequence[Any]) -> None:
    """One line per job of the sweep: finished or failed, and how often it was requeued."""
    from hydra.core.utils import JobStatus

    for ret in returns:
        job = ret.hydra_cfg.hydra.job if ret.hydra_cfg is not None else None
        job_id = str(job.id) if job is not None else "?"
        restarts = _restarts(job_id) if job is not None else None
        state = "finished" if ret.status == JobStatus.COMPLETED else "failed"
        log.info("job %s (SLURM job %s): %s%s", job.num if job is not None else "?", job_id, state,
                 f", requeued {restarts} time{'s' if restarts > 1 else ''}" if restarts else "")


class JobEnded(SegflowError, RuntimeError):
    """A job of the sweep ended without a result (failed, cancelled, its node lost): exit 1."""

    exit_code = 1


def job_ended(exc: BaseException) -> str:
    """One sentence for submitit's error about a job that ended without a result."""
    lines = []
    for line in (ln.strip() for ln in str(exc).splitlines()):
        if line.startswith(("---", "Error stream", "Traceback")) or len(lines) == 2:
            break
        lines.append(line)
    first = re.sub(r" with path \S+", "", " ".join(lines)) or type(exc).__name__
    match = re.search(r"with path (\S+)", str(exc))
    where = f" (its SLURM logs: {Path(match.group(1)).parent})" if match else ""
    return (f"a SLURM job of the sweep ended without a result: {first.rstrip('.:')}{where}; "
            f"its run folder is marked FAILED with the reason where training had started, and "
            f"the same command with resume=auto continues from its last checkpoint")


def checked_launch(launcher: Any, launch: Callable[[], Any]) -> Any:
    """Run ``launch`` (hydra-submitit-launcher's ``SlurmLauncher.launch`` of ``launcher``)
    with the squeue watcher and a refused sbatch as one sentence (exit status 2)."""
    from submitit.core.utils import UncompletedJobError

    from segflow.infra.errors import exit_on_user_error
    from segflow.runs.layout import Layout

    _install_watcher()
    with exit_on_user_error(log):  # the sentence, exit status 2
        try:
            with _held_sbatch_errors():
                returns = launch()
            summarise(returns)
            return returns
        except UncompletedJobError as exc:  # FailedJobError included
            refusal = sbatch_refusal(exc)
            if refusal is None:
                raise JobEnded(job_ended(exc)) from None
            root = Layout.at(launcher.config.get("paths", {}).get("output_root")).root
            remove_unstarted_sweep(Path(str(launcher.config.hydra.sweep.dir)), root)
            raise ConfigError(
                f'sbatch refused the job ("{refusal}"): change the slurm.* keys to what the '
                f"cluster offers (slurm.partition={launcher.params.get('partition')}, "
                f"slurm.gpus_per_node; `sinfo` lists the partitions); nothing was submitted"
            ) from None
