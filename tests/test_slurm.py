"""launcher=slurm / trainer=slurm on a real scheduler: the local cluster of
tests/slurm/cluster.sh (one slurmctld, two slurmd nodes n1 and n2, a CPU partition
``debug``, no accounting). Each job is a tiny CPU run of a few seconds."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from slurm_cluster import slurm_cluster  # noqa: F401  (the session fixture)

from conftest import CONF, ROOT, TINY, run_dirs, run_entry

# A job of the CPU partition: 1 CPU, 1 GB (the nodes offer 2 CPUs, 2000 MB each).
CPU_JOB = ["trainer=slurm", "debug=default", "slurm.partition=debug", "slurm.gpus_per_node=0",
           "slurm.cpus_per_task=1", "slurm.mem_gb=1", "slurm.time_min=10"]


def _sweep(cluster, workdir, *overrides: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return run_entry("segflow.train", ["-m", *TINY, *CPU_JOB, *overrides], workdir,
                     timeout=timeout, env=cluster.env)


def _out(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout[-3000:] + proc.stderr[-5000:]


def _compose(*overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def test_cpu_partition_asks_for_no_gpu_and_trains_on_cpu():
    cfg = _compose("trainer=slurm", "slurm.gpus_per_node=0", "slurm.tasks_per_node=2")
    launcher = cfg.hydra.launcher
    assert (launcher.gpus_per_node, launcher.tasks_per_node) == (None, 2)  # no --gpus-per-node
    assert (cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.precision) == ("cpu", 2, "32-true")
    cfg = _compose("trainer=slurm", "slurm.gpus_per_node=0")
    assert (cfg.hydra.launcher.tasks_per_node, cfg.trainer.devices) == (1, 1)


def test_bad_slurm_counts_are_one_sentence():
    from segflow.conf import slurm_keys
    from segflow.infra.errors import ConfigError

    with pytest.raises(ConfigError, match=r"slurm.gpus_per_node=-1 is not valid"):
        slurm_keys.tasks(-1, None)
    with pytest.raises(ConfigError, match=r"slurm.tasks_per_node=2 with slurm.gpus_per_node=4"):
        slurm_keys.tasks(4, 2)
    with pytest.raises(ConfigError, match=r"slurm.tasks_per_node=0 is not valid"):
        slurm_keys.tasks(0, 0)


@pytest.mark.slurm
def test_two_job_sweep_on_the_cpu_partition(slurm_cluster, workdir):  # noqa: F811
    proc = _sweep(slurm_cluster, workdir, "model=unet,csnet", "sweep_name=two")
    assert proc.returncode == 0, _out(proc)
    jobs = run_dirs(workdir, "multirun")
    assert [j.name for j in jobs] == ["0", "1"]
    for job in jobs:
        summary = json.loads((job / "metrics.json").read_text())
        assert summary["global_step"] == 2 and "dice" in summary["test"]
        assert not (job / "FAILED").exists()
    # They ran as SLURM jobs on the cluster's nodes (submitit's per-task logs name them).
    logs = "".join(p.read_text() for p in jobs[0].parent.glob(".submitit/*/*_0_log.*"))
    assert "JobEnvironment(job_id=" in logs
    # Without accounting: one line saying so, not a warning per poll.
    console = proc.stdout + proc.stderr
    assert console.count("job states come from squeue") == 1
    assert "Bypassing sacct error" not in console and "accounting storage is disabled\n" not in console

    report = run_entry("segflow.report", [str(jobs[0].parent)], workdir, timeout=120)
    assert report.returncode == 0, _out(report)
    with (jobs[0].parent / "report" / "report.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["run"], r["model"]) for r in rows) == [("0", "unet"), ("1", "csnet")]


@pytest.mark.slurm
def test_two_node_ddp_through_slurm(slurm_cluster, workdir):  # noqa: F811
    digests = workdir / "digests"
    proc = _sweep(slurm_cluster, workdir, "slurm.nodes=2", "sweep_name=ddp",
                  "+callbacks.digest._target_=tests.probes.WeightDigest",
                  f"+callbacks.digest.folder={digests}")
    assert proc.returncode == 0, _out(proc)
    (job,) = run_dirs(workdir, "multirun")
    ranks = [json.loads((digests / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert {r["node"] for r in ranks} == {"n1", "n2"}  # one task on each node
    assert ranks[0]["weights"] == ranks[1]["weights"] and ranks[0]["global_step"] == 2
    # Per-rank logs named by each task's own SLURM_PROCID at run time.
    rank0, rank1 = (job / "train.log").read_text(), (job / "train_rank1.log").read_text()
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in rank0 and "[rank: 1]" not in rank0
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in rank1 and "[rank: 0]" not in rank1
    # One job, one set of results: one .hydra/, metrics.json, event file and checkpoints.
    assert sorted(p.name for p in job.rglob(".hydra")) == [".hydra"]
    summary = json.loads((job / "metrics.json").read_text())
    assert summary["effective_batch_size"] == 8  # 2 crops x 2 samples x world size 2
    assert len(list((job / "tensorboard").glob("events*"))) == 1
    assert sorted(p.name for p in (job / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


@pytest.mark.slurm
def test_refused_sbatch_is_one_sentence_and_leaves_no_folder(slurm_cluster, workdir):  # noqa: F811
    proc = _sweep(slurm_cluster, workdir, "slurm.partition=nope", "sweep_name=refused")
    assert proc.returncode == 2, _out(proc)
    err = proc.stdout + proc.stderr
    assert "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if "sbatch: error" in ln]  # one line, the sentence
    assert 'sbatch refused the job ("sbatch: error: invalid partition specified: nope' in line
    assert line.endswith("nothing was submitted")
    assert not (workdir / "outputs" / "multirun").exists()
    # A GPU request on a partition without GPUs (no gres): the same, with sbatch's words.
    proc = _sweep(slurm_cluster, workdir, "slurm.gpus_per_node=1", "sweep_name=refused")
    assert proc.returncode == 2, _out(proc)
    assert "Invalid generic resource (gres) specification" in proc.stdout + proc.stderr
    assert not (workdir / "outputs" / "multirun").exists()


def _paced_sweep(cluster, workdir: Path, pace: Path, *args: str) -> subprocess.Popen:
    """A multirun on the CPU partition whose jobs pace their steps (tests.probes.SlurmPace)
    and report them under ``pace``, started in the background."""
    cmd = [sys.executable, "-m", "segflow.train", "-m", *TINY, *CPU_JOB, *args,
           "+callbacks.pace._target_=tests.probes.SlurmPace", f"+callbacks.pace.folder={pace}",
           "+callbacks.pace.seconds=1.5"]
    env = {**os.environ, "SEGFLOW_OUTPUT_DIR": str(workdir / "outputs"),
           "SEGFLOW_DATA_DIR": str(workdir / "data"), "PYTHONPATH": str(ROOT),
           "HYDRA_FULL_ERROR": "0", **cluster.env}
    return subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, what: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None or time.time() > deadline:
            out, err = proc.communicate(timeout=60) if proc.poll() is None else proc.communicate()
            raise AssertionError(f"{what}: not seen\n{out[-2000:]}\n{err[-4000:]}")
        time.sleep(0.5)


def _paced_step(pace: Path, task: int) -> dict:
    try:
        return json.loads((pace / f"{task}.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {"step": -1}


@pytest.mark.slurm
def test_requeue_and_usr1_resume_to_the_same_step_count(slurm_cluster, workdir):  # noqa: F811
    # Three jobs of one config (their own experiment names, so each resumes its own run):
    # 0 runs through, 1 is requeued with `scontrol requeue`, 2 gets SIGUSR1 as
    # `sbatch --signal=USR1@90` sends it before a time limit (Lightning writes hpc_ckpt and
    # requeues the job itself). The requeued jobs resume and end at job 0's step count.
    pace = workdir / "pace"
    proc = _paced_sweep(slurm_cluster, workdir, pace, "trainer.max_epochs=3",
                        "experiment_name=plain,requeued,usr1", "sweep_name=requeue")
    try:
        _wait_for(lambda: _paced_step(pace, 1)["step"] >= 3, "job 1 at step 3", proc)
        done = slurm_cluster.run("scontrol", "requeue", _paced_step(pace, 1)["job"])
        assert done.returncode == 0, done.stderr
        _wait_for(lambda: _paced_step(pace, 2)["step"] >= 3, "job 2 at step 3", proc)
        done = slurm_cluster.run("scancel", "--signal=USR1", _paced_step(pace, 2)["job"])
        assert done.returncode == 0, done.stderr
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:] + err[-5000:]
    jobs = run_dirs(workdir, "multirun")
    summaries = [json.loads((j / "metrics.json").read_text()) for j in jobs]
    assert [s["global_step"] for s in summaries] == [6, 6, 6]
    assert summaries[0]["resumed_from"] is None
    assert [_paced_step(pace, t)["restarts"] for t in (0, 1, 2)] == [0, 1, 1]
    # Each requeued job resumed a checkpoint of its own folder: job 1 the last.ckpt written
    # on SLURM's SIGTERM; job 2 the hpc_ckpt Lightning wrote on SIGUSR1 at step 3, or the
    # newer last.ckpt of the SIGTERM that its own `scontrol requeue` brought.
    assert all(Path(s["resumed_from"]).is_relative_to(j) for s, j in zip(summaries[1:], jobs[1:], strict=True))
    assert Path(summaries[1]["resumed_from"]).name == "last.ckpt"
    assert not list(jobs[1].glob("hpc_ckpt_*.ckpt"))
    hpc = torch.load(jobs[2] / "hpc_ckpt_1.ckpt", weights_only=True, map_location="cpu")
    assert hpc["global_step"] >= 3 and "segflow_config" in hpc
    assert not any((j / "FAILED").exists() for j in jobs)
    # The sweep's summary: each job finished, the two requeued ones say so.
    summary_lines = [ln for ln in (out + err).splitlines() if "(SLURM job " in ln]
    assert len(summary_lines) == 3, summary_lines
    assert summary_lines[0].endswith("): finished")
    assert all(ln.endswith("): finished, requeued 1 time") for ln in summary_lines[1:])


@pytest.mark.slurm
@pytest.mark.slow  # two 2-node jobs and a node's return: ~2 min on 2 busy cores
def test_a_lost_node_fails_the_job_in_bounded_time_and_resume_auto_finishes(slurm_cluster,  # noqa: F811
                                                                          workdir):
    # A 2-node DDP job loses its second node mid-epoch: that node's slurmd and task are
    # killed (kill -9). The job ends within a bounded time, the run is marked FAILED, and
    # the same command with resume=auto continues it to the full step count.
    pace = workdir / "pace"
    args = ["slurm.nodes=2", "trainer.max_epochs=3", "sweep_name=lost"]
    proc = _paced_sweep(slurm_cluster, workdir, pace, *args)
    try:
        rank1 = pace / "0_rank1.json"
        _wait_for(lambda: rank1.exists() and json.loads(rank1.read_text())["step"] >= 3,
                  "rank 1 at step 3", proc)
        lost = json.loads(rank1.read_text())
        slurmd = int((slurm_cluster.state / "run" / f"slurmd-{lost['node']}.pid").read_text())
        os.kill(slurmd, signal.SIGKILL)
        os.kill(lost["pid"], signal.SIGKILL)
        killed = time.time()
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
        slurm_cluster.start()  # the node comes back (ReturnToService=2)
    assert proc.returncode == 1, out[-3000:] + err[-5000:]
    (failed,) = run_dirs(workdir, "multirun")
    # The surviving rank saw its peer go at once (not after ddp_timeout_s) and marked the run.
    assert (failed / "FAILED").stat().st_mtime - killed < 30
    assert "Traceback" not in out + err
    assert "a SLURM job of the sweep ended without a result" in out + err
    assert "another DDP rank died" in (failed / "FAILED").read_text()

    proc = _sweep(slurm_cluster, workdir, *args, "resume=auto")
    assert proc.returncode == 0, _out(proc)
    (resumed,) = [j for j in run_dirs(workdir, "multirun") if j != failed]
    summary = json.loads((resumed / "metrics.json").read_text())
    assert summary["global_step"] == 6
    assert Path(summary["resumed_from"]).is_relative_to(failed)
