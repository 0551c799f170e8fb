"""launcher=slurm / trainer=slurm on a real scheduler: the local cluster of
tests/slurm/cluster.sh (one slurmctld, two slurmd nodes n1 and n2, a CPU partition
``debug``, no accounting). Each job is a tiny CPU run of a few seconds."""

from __future__ import annotations

import csv
import json
import subprocess

import pytest
from slurm_cluster import slurm_cluster  # noqa: F401  (the session fixture)

from conftest import CONF, TINY, run_dirs, run_entry

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
    from segflow.errors import ConfigError

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
