"""A sweep keeps its valid jobs: every job checked before the first one starts, a job that
fails marked and the others run, one summary at the end.

* :func:`announce` — the jobs refused up front (their one sentence each), before launch;
  the jobs learn which ones through the environment (joblib workers inherit it).
* :func:`sweep_job` — around one job of a multirun: a refused job stops at once (its folder
  removed, as any failed start), a failure is recorded in ``<sweep>/.jobs/<num>.json`` and
  swallowed, so the launcher (basic or joblib) goes on to the next job.
* :func:`finish` — after the sweep, in the parent: ``<sweep>/sweep.json`` (every job, its
  status and sentence), a summary, and the exit status (0: all finished; else the
  failures' status, 2 when they were the user's mistakes).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from segflow.infra.atomic import write_json
from segflow.infra.errors import ConfigError, user_error
from segflow.runs.failed import failed_reason, failure_reason
from segflow.runs.layout import RunFolder, SweepFolder, claimed_sweep

log = logging.getLogger("segflow.sweep")

_REJECTED = "SEGFLOW_SWEEP_REJECTED"
#: Exit statuses of a run stopped by a signal (SIGTERM, SIGINT) after writing last.ckpt.
_STOPPED = (143, 130)


def announce(plan: Any) -> None:
    """Print the jobs of ``plan`` (:class:`segflow.infra.precheck.Plan`) refused before
    launch and tell the jobs; nothing for a single run."""
    os.environ.pop(_REJECTED, None)
    if not plan.multirun or not plan.checked:
        return  # (Optuna's sweeper asks each trial for its value: failures end it as before)
    rejected = {str(j.num): j.error for j in plan.rejected}
    for job in plan.rejected:
        print(f"error: job #{job.num} ({shown(job.overrides, plan)}) will not run: {job.error}",
              file=sys.stderr, flush=True)
    if rejected:
        n = len(plan.jobs) - len(rejected)
        print(f"the sweep runs the other {n} of {len(plan.jobs)} jobs", file=sys.stderr, flush=True)
    os.environ[_REJECTED] = json.dumps(rejected)


@contextmanager
def sweep_job(sweep_dir: str | Path | None, num: Any, overrides: list[str]) -> Iterator[None]:
    """Around one job (``sweep_dir`` None: a single run, nothing changes; a sweep whose jobs
    were not checked up front, e.g. Optuna's, which needs each failure: nothing changes)."""
    if sweep_dir is None or _REJECTED not in os.environ:
        yield
        return
    folder = SweepFolder(Path(sweep_dir))
    record = {"num": int(num), "overrides": list(overrides), "folder": str(folder.job(num))}
    try:
        yield
    except (Exception, SystemExit) as exc:
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            write_json(folder.job_status(num), {**record, "status": "finished"})
            return
        if isinstance(exc, SystemExit) and os.environ.get("SLURM_JOB_ID") and exc.code in _STOPPED:
            # stopped by SLURM (requeue, pre-emption): the requeued run writes its own end
            write_json(folder.job_status(num), {**record, "status": "requeued",
                                                "reason": f"stopped (exit {exc.code}) and requeued"})
            raise  # submitit must see the stop, or it reports the job as done and stops waiting
        reason = _reason(exc, folder.job(num))
        write_json(folder.job_status(num), {**record, "status": "failed", "reason": reason,
                                            "user_error": _is_user_error(exc)})
        if user_error(exc) is None and not isinstance(exc, SystemExit):
            log.exception("job #%s failed", num)  # a bug: its traceback in the job's log
        return
    write_json(folder.job_status(num), {**record, "status": "finished"})


def shown(overrides: list[str], plan: Any) -> str:
    """The overrides that tell this job from the others of the sweep."""
    common = set.intersection(*(set(j.overrides) for j in plan.jobs)) if plan.jobs else set()
    return " ".join(o for o in overrides if o not in common) or " ".join(overrides)


def refuse_if_rejected(num: Any) -> None:
    """Stop job ``num`` of this multirun when it was refused before launch (inside the
    failed-run guard: its folder is removed, as any failed start's)."""
    refused = json.loads(os.environ.get(_REJECTED, "{}") or "{}").get(str(num))
    if refused:
        raise ConfigError(refused)


def _is_user_error(exc: BaseException) -> bool:
    error = user_error(exc)  # also behind the SystemExit(2) of exit_on_user_error
    return error is not None and getattr(error, "exit_code", 2) == 2


def _reason(exc: BaseException, job: Path) -> str:
    if user_error(exc) is not None or not isinstance(exc, SystemExit):
        return failure_reason(exc)
    return failed_reason(job) or f"exited with status {exc.code}"


def finish(plan: Any) -> int:
    """In the parent after a multirun: write ``sweep.json``, print the summary, return the
    exit status."""
    if not plan.multirun:
        return 0
    sweep = claimed_sweep()
    if sweep is None:
        return 0
    jobs = []
    nums = [j.num for j in plan.jobs] if plan.checked else sorted(
        int(p.stem) for p in (sweep.path / ".jobs").glob("*.json") if p.stem.isdigit())
    for num in nums:
        status_file = sweep.job_status(num)
        planned = next((j for j in plan.jobs if j.num == num), None)
        if status_file.is_file():
            entry = json.loads(status_file.read_text())
        else:
            entry = {"num": num, "overrides": planned.overrides if planned else [],
                     "folder": str(sweep.job(num)), "status": "missing",
                     "reason": "the job did not report (its process was killed?)"}
        if planned is not None and planned.error is not None:
            entry.update(status="refused", reason=planned.error, user_error=True)
        jobs.append(entry)
    write_json(sweep.summary, {"sweep": str(sweep.path), "jobs": jobs})
    done = [j for j in jobs if j["status"] == "finished"]
    requeued = [j for j in jobs if j["status"] == "requeued"]  # SLURM runs them again
    bad = [j for j in jobs if j["status"] not in ("finished", "requeued")]
    if requeued:
        print(f"sweep {sweep.path}: {len(requeued)} job(s) stopped and requeued by SLURM; "
              f"their requeued runs write their own end (.jobs/<num>.json)", file=sys.stderr,
              flush=True)
    print(f"sweep {sweep.path}: {len(done)} of {len(jobs)} jobs finished, {len(bad)} failed",
          file=sys.stderr, flush=True)
    for j in bad:
        print(f"  job #{j['num']} ({shown(j['overrides'], plan)}) {j['status']}: {j.get('reason')}",
              file=sys.stderr, flush=True)
    if not bad:
        return 0
    return 2 if all(j.get("user_error") for j in bad) else 1


def unfinished_jobs(paths: list[str | Path]) -> list[dict[str, Any]]:
    """The jobs of the sweeps at or under ``paths`` (their ``sweep.json``) that have no
    result: refused, failed, or missing (finished by its record but its folder holds no
    ``metrics.json``), each with its number, overrides, status and sentence."""
    found: list[dict[str, Any]] = []
    summaries = {s for p in map(Path, paths) if p.is_dir()
                 for s in ([p / "sweep.json"] if (p / "sweep.json").is_file() else p.rglob("sweep.json"))}
    for summary in sorted(summaries):
        try:
            jobs = json.loads(summary.read_text()).get("jobs", [])
        except (OSError, ValueError, AttributeError):
            continue
        folder = SweepFolder(summary.parent)
        for job in jobs:
            has_result = RunFolder(folder.job(job.get("num"))).metrics.is_file()
            if job.get("status") == "finished" and has_result:
                continue
            if job.get("status") == "finished":
                job = {**job, "status": "missing", "reason": "its metrics.json is gone"}
            found.append({**job, "sweep": str(folder.path)})
    return found
