"""Hydra launchers and sweepers: joblib (parallel jobs), submitit's local executor (the
SLURM code path without a cluster, here with a 2-process DDP job), slurm and optuna
configs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from segflow.engine.distributed import env_global_rank

from conftest import CONF, assert_learned, run_dirs


def _event_pid(job) -> int:
    (event,) = (job / "tensorboard").glob("events.out.tfevents.*")
    return int(event.name.split(".")[-2])


def test_joblib_runs_two_jobs_in_parallel(train, workdir):
    # With loader worker processes: a joblib job runs in a loky worker, whose own start
    # method torch's DataLoader workers cannot use (the datamodule picks fork/spawn).
    proc, _ = train("-m", "launcher=joblib", "model=unet,csnet", "sweep_name=par",
                    "data.num_workers=1")
    jobs = run_dirs(workdir, "multirun")
    assert [j.name for j in jobs] == ["0", "1"]
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    assert {json.loads((j / "metrics.json").read_text())["model"] for j in jobs} == {"unet", "csnet"}
    # Two worker processes, both dispatched at once (n_jobs=2 for 2 jobs). Whether their
    # wall-clock spans overlap depends on worker start-up vs. these tiny jobs' length, so
    # the test does not assert it (it failed on an idle machine where a job takes ~1 s).
    assert _event_pid(jobs[0]) != _event_pid(jobs[1])


@pytest.mark.parametrize("launcher", ["local", "joblib"])
def test_a_sweep_keeps_its_valid_jobs(train, workdir, launcher):
    # Four jobs: two valid, one that diverges at run time, one refused before launch.
    proc, _ = train("-m", f"launcher={launcher}", "sweep_name=keep",
                    "model.learning_rate=0.001,1e12,bogus,0.002", expect_ok=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "error: job #2 (model.learning_rate=bogus) will not run" in out
    assert "2 of 4 jobs finished, 2 failed" in out, out[-3000:]
    assert "job #1 (model.learning_rate=1000000000000.0) failed: training diverged at step" in out
    (sweep,) = (workdir / "outputs" / "multirun" / "keep").iterdir()
    assert (sweep / "0" / "metrics.json").is_file() and (sweep / "3" / "metrics.json").is_file()
    assert (sweep / "1" / "FAILED").is_file() and not (sweep / "2").exists()
    jobs = json.loads((sweep / "sweep.json").read_text())["jobs"]
    assert [j["status"] for j in jobs] == ["finished", "failed", "refused", "finished"]
    if launcher == "local":
        from conftest import run_entry

        report = run_entry("segflow.report", [str(sweep), "--no-pictures"], workdir)
        assert report.returncode == 0, report.stderr[-2000:]
        assert f"sweep job #2 of {sweep} refused: model.learning_rate=bogus" in report.stderr
        assert f"sweep job #1 of {sweep} failed: training diverged" in report.stderr


def test_submitit_local_runs_a_ddp_job(train, workdir):
    # Lightning would re-run submitit's own __main__ for rank 1; segflow hands it the job.
    train("-m", "launcher=submitit_local", "trainer.strategy=ddp", "trainer.accelerator=cpu",
          "trainer.devices=2", "sweep_name=sub")
    (job,) = run_dirs(workdir, "multirun")
    summary = json.loads((job / "metrics.json").read_text())
    assert summary["effective_batch_size"] == 8
    assert_learned(summary["test"])
    assert "GLOBAL_RANK: 1" in (job / "train_rank1.log").read_text()
    assert len(list((job / "tensorboard").glob("events*"))) == 1
    assert list(job.parent.glob(".submitit/*/*_log.out"))  # it went through submitit


def test_slurm_and_optuna_configs_compose():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(str(CONF), version_base="1.3"):
        composed = compose("train", overrides=["launcher=slurm", "trainer=slurm", "sweeper=optuna",
                                               "slurm.partition=gpu", "slurm.gpus_per_node=4",
                                               "slurm.nodes=2"], return_hydra_config=True)
    cfg = OmegaConf.to_container(composed, resolve=False)
    launcher, sweeper = cfg["hydra"]["launcher"], cfg["hydra"]["sweeper"]
    assert launcher["_target_"] == "hydra_plugins.segflow_slurm.SlurmLauncher"
    from hydra_plugins.segflow_slurm import SlurmLauncher

    # submitit's, with segflow's checks (Hydra's plugin scan may load a second copy of
    # submitit's module: compared by name)
    assert "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in [
        f"{c.__module__}.{c.__qualname__}" for c in SlurmLauncher.__mro__]
    for key in ["partition", "nodes", "gpus_per_node", "tasks_per_node", "timeout_min", "mem_gb",
                "cpus_per_task", "max_num_timeout"]:
        assert "${slurm." in launcher[key], key
    assert cfg["slurm"]["partition"] == "gpu" and cfg["slurm"]["nodes"] == 2
    assert "${slurm.gpus_per_node}" in cfg["trainer"]["devices"]
    assert cfg["trainer"]["num_nodes"] == "${slurm.nodes}"
    # Resolved: 4 tasks and 4 GPUs per node, one Lightning process per GPU.
    assert (composed.hydra.launcher.tasks_per_node, composed.hydra.launcher.gpus_per_node) == (4, 4)
    assert (composed.trainer.accelerator, composed.trainer.devices) == ("gpu", 4)
    assert sweeper["_target_"].endswith("OptunaSweeper") and sweeper["direction"] == "maximize"
    assert "model.learning_rate" in sweeper["params"]


def test_rank_resolvers_for_slurm_tasks(monkeypatch):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"sub": "${segflow.rank0_only:.hydra}", "log": "${segflow.rank_log:train}"})
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert (cfg.sub, cfg.log, env_global_rank()) == (".hydra", "train.log", 0)
    monkeypatch.setenv("SLURM_PROCID", "3")
    assert (cfg.sub, cfg.log, env_global_rank()) == (None, "train_rank3.log", 3)


@pytest.mark.slow
def test_optuna_sweep_runs_trials(train, workdir):
    proc, _ = train("-m", "sweeper=optuna", "hydra.sweeper.n_trials=2", "sweep_name=opt")
    jobs = run_dirs(workdir, "multirun")
    assert len(jobs) == 2
    overrides = [yaml.safe_load((j / ".hydra" / "overrides.yaml").read_text()) for j in jobs]
    lrs = {o for job in overrides for o in job if o.startswith("model.learning_rate=")}
    assert len(lrs) == 2  # two different trials
    assert all("best_val_dice" in json.loads((j / "metrics.json").read_text()) for j in jobs)
    assert "Best parameters" in proc.stdout + proc.stderr
    assert (jobs[0].parent / "optimization_results.yaml").is_file()


@pytest.mark.slow  # two interpreter start-ups and a run: ~15 s CPU
def test_make_train_bg_detaches_and_logs_inside_the_run_folder(workdir):
    import os
    import subprocess
    import time

    from conftest import ROOT, TINY

    env = {**os.environ, "SEGFLOW_OUTPUT_DIR": str(workdir / "outputs"),
           "SEGFLOW_DATA_DIR": str(workdir / "data"), "PY": sys.executable}
    args = " ".join([*TINY, "debug=default", "trainer.max_epochs=2"])
    out = subprocess.run(["make", "-s", "-C", str(ROOT), "train", "BG=1", f"ARGS={args}"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    pid, log = int(lines["PID"]), Path(lines["log"])
    assert log.parent.parent == workdir / "outputs" / "runs" / "unet_synthetic_xca"
    deadline = time.time() + 240
    while time.time() < deadline and os.path.exists(f"/proc/{pid}") and \
            "Z" not in open(f"/proc/{pid}/stat").read().split()[2]:
        time.sleep(1)
    run = run_dirs(workdir)
    assert run == [log.parent]  # the folder printed before the start is the run's folder
    assert json.loads((run[0] / "metrics.json").read_text())["global_step"] == 4
    text = (run[0] / "train.log").read_text()
    assert "epoch 1/2  step 2" in text and "epoch 2/2  step 4" in text  # one line per epoch
    assert "metrics written" in (run[0] / "console.log").read_text()


def test_sigusr1_under_slurm_saves_a_checkpoint_and_requeues(workdir):
    import os
    import signal

    import torch

    from conftest import TINY, run_entry

    bin_dir, calls = workdir / "bin", workdir / "scontrol_calls.txt"
    bin_dir.mkdir()
    stub = bin_dir / "scontrol"
    # SLURM's requeue: record the call, then stop the job (SIGTERM to the caller).
    stub.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nkill -TERM $PPID\n')
    stub.chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_NTASKS": "1",
           "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "segflow", "SLURM_PROCID": "0",
           "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "127.0.0.1"}
    args = [*TINY, "debug=default", "launcher=slurm", "trainer.accelerator=cpu",
            "trainer.max_epochs=3", "+callbacks.usr1._target_=tests.probes.SignalAt",
            f"+callbacks.usr1.signum={int(signal.SIGUSR1)}", "+callbacks.usr1.step=3"]
    proc = run_entry("segflow.train", args, workdir, env=env)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert calls.read_text().split() == ["requeue", "4242"]
    (run,) = run_dirs(workdir)
    hpc = torch.load(run / "hpc_ckpt_1.ckpt", weights_only=True, map_location="cpu")
    assert hpc["global_step"] == 3 and "segflow_config" in hpc
    assert not (run / "FAILED").exists()  # a pre-emption is not a failure

    # The requeued job: the same command, SLURM_RESTART_COUNT set, no signal this time.
    proc = run_entry("segflow.train", args[:-3], workdir, env={**env, "SLURM_RESTART_COUNT": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    resumed = [r for r in run_dirs(workdir) if r != run][0]
    summary = json.loads((resumed / "metrics.json").read_text())
    assert Path(summary["resumed_from"]).parent.parent == run or Path(summary["resumed_from"]).parent == run
    assert summary["global_step"] == 6
