"""DDP on CPU (gloo, 2 processes) through Hydra: one folder per run or multirun job, one
event file, rank-0 logs, epoch metrics reduced over ranks; ddp_spawn; the trainer presets."""

from __future__ import annotations

import json
import signal
import time

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import CONF, assert_learned, run_dirs

# On top of the fixture's debug=default (2 batches per epoch); as `trainer=ddp
# trainer.accelerator=cpu trainer.devices=2` would give, with debug's short epochs.
DDP = ["trainer.strategy=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
PROBE = "+callbacks.probe._target_=tests.probes.RankLossProbe"


def _all_files(workdir):
    return sorted(p.relative_to(workdir / "outputs").as_posix()
                  for p in (workdir / "outputs").rglob("*") if p.is_file())


def _check_job_folder(job):
    """Everything a DDP job leaves, and that it is there once."""
    assert (job / ".hydra" / "config.yaml").is_file()
    assert (job / "train.log").is_file() and (job / "train_rank1.log").is_file()
    assert "world size 2" in (job / "train.log").read_text()
    assert "GLOBAL_RANK: 1" in (job / "train_rank1.log").read_text()
    events = list((job / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1, events
    for name in ("last.ckpt", "best.ckpt"):
        assert (job / "checkpoints" / name).is_file()
    summary = json.loads((job / "metrics.json").read_text())
    assert_learned(summary["test"])
    return summary, events[0]


def test_ddp_single_run_one_folder_and_epoch_metric_is_mean_over_ranks(train, workdir):
    proc, run = train(*DDP, "trainer.max_epochs=2", PROBE)
    assert run_dirs(workdir) == [run] and not (workdir / "outputs" / "multirun").exists()
    assert [p.name for p in (workdir / "outputs" / "runs").iterdir()] == ["unet_synthetic_xca"]
    assert not list(run.rglob("lightning_logs")) and not (workdir / "lightning_logs").exists()
    assert len(list(run.parent.iterdir())) == 1  # the child did not make a folder of its own
    summary, event_file = _check_job_folder(run)
    assert summary["effective_batch_size"] == 8  # 2 images x 2 crops x 2 ranks
    assert summary["global_step"] == 4  # 6 images / 2 ranks / 2 per batch = 2 steps/epoch

    ranks = [json.loads((run / f"probe_rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["pid"] != ranks[1]["pid"] and ranks[0]["world_size"] == 2
    assert ranks[0]["rank_mean"] != ranks[1]["rank_mean"]  # the ranks saw different crops
    acc = EventAccumulator(str(event_file), size_guidance={"scalars": 0})
    acc.Reload()
    logged = [e.value for e in acc.Scalars("train/loss")]
    for epoch in range(2):
        assert ranks[0]["rank_count"][epoch] == ranks[1]["rank_count"][epoch] == 6  # crops
        mean = (ranks[0]["rank_mean"][epoch] + ranks[1]["rank_mean"][epoch]) / 2
        assert ranks[0]["logged"][epoch] == pytest.approx(mean, rel=1e-6)
        assert ranks[1]["logged"][epoch] == pytest.approx(mean, rel=1e-6)
        assert logged[epoch] == pytest.approx(mean, rel=1e-6)  # what TensorBoard shows


def test_ddp_multirun_each_job_in_its_own_folder(train, workdir):
    proc, _ = train("-m", *DDP, "model=unet,csnet", "sweep_name=arch")
    jobs = run_dirs(workdir, "multirun")
    assert [j.name for j in jobs] == ["0", "1"], jobs
    sweep = jobs[0].parent
    assert sweep.parent.name == "arch" and len(list(sweep.parent.iterdir())) == 1
    # Nothing stray anywhere: only the sweep's multirun.yaml and the two job folders.
    # (and the sweep's own records: .jobs/<num>.json per job, sweep.json)
    assert sorted(p.name for p in sweep.iterdir()) == [".jobs", "0", "1", "multirun.yaml",
                                                       "sweep.json"]
    assert [p.name for p in (workdir / "outputs").iterdir()] == ["multirun"]
    files = _all_files(workdir)
    assert sum(f.endswith(".hydra/config.yaml") for f in files) == 2
    models = [_check_job_folder(j)[0]["model"] for j in jobs]
    assert models == ["unet", "csnet"]
    # The children ran the job's own overrides (model=csnet), not the sweep (model=unet,csnet).
    rank1 = (jobs[1] / "train_rank1.log").read_text()
    assert "csnet_synthetic_xca" in rank1 and "unet_synthetic_xca" not in rank1
    assert proc.stdout.count("Launching 2 jobs locally") == 1


def _kill_rank1(signum):
    return ["+callbacks.kill._target_=tests.probes.SignalAt", f"+callbacks.kill.signum={int(signum)}",
            "+callbacks.kill.step=3", "+callbacks.kill.rank=1"]


def test_a_rank_killed_mid_epoch_ends_the_job_marks_the_run_and_resume_auto_continues(train, workdir):
    start = time.monotonic()
    proc, run = train(*DDP, "trainer.max_epochs=3", *_kill_rank1(signal.SIGKILL), expect_ok=False)
    assert proc.returncode != 0 and time.monotonic() - start < 120, proc.stderr[-3000:]
    # Marked by rank 0 (its collective failed) or by the launcher that saw rank 1 die.
    reason = (run / "FAILED").read_text()
    assert ("another DDP rank died or stopped answering" in reason
            or "DDP rank 1" in reason and "SIGKILL" in reason), reason
    assert "Traceback" not in proc.stdout + proc.stderr
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2  # the end of epoch 1, written whole before the kill
    assert not (run / "metrics.json").exists()

    _, resumed = train(*DDP, "trainer.max_epochs=3", "resume=auto")
    summary = json.loads((resumed / "metrics.json").read_text())
    assert summary["resumed_from"] == str(run / "checkpoints" / "last.ckpt")
    assert summary["global_step"] == 6 and not (resumed / "FAILED").exists()
    assert "is marked FAILED" in (resumed / "train.log").read_text()


def test_a_hung_rank_times_out_and_every_process_ends(train, workdir):
    # SIGSTOP: rank 1 is alive but never answers; rank 0 fails after ddp_timeout_s and
    # kills it (else the stopped child would hold the pipes open until run_entry's timeout).
    start = time.monotonic()
    proc, run = train(*DDP, "trainer.max_epochs=3", "ddp_timeout_s=30",
                      *_kill_rank1(signal.SIGSTOP), expect_ok=False)
    assert proc.returncode == 1 and time.monotonic() - start < 150, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "stopped answering within ddp_timeout_s" in out and "Traceback" not in out
    assert "resume=auto continues from" in (run / "FAILED").read_text()


def test_ddp_timeout_is_the_strategy_timeout():
    from datetime import timedelta

    from omegaconf import OmegaConf

    from segflow.engine.faults import strategy_with_timeout
    from segflow.infra.errors import ConfigError

    for name in ("ddp", "ddp_spawn", "ddp_find_unused_parameters_true"):
        strategy = strategy_with_timeout(OmegaConf.create({"strategy": name}), 45)
        assert strategy._timeout == timedelta(seconds=45), name
    assert strategy._ddp_kwargs == {"find_unused_parameters": True}
    assert strategy_with_timeout(OmegaConf.create({"strategy": "auto"}), 45) is None
    with pytest.raises(ConfigError, match="ddp_timeout_s='soon' is not valid"):
        strategy_with_timeout(OmegaConf.create({"strategy": "ddp"}), "soon")


@pytest.mark.slow  # 5 interpreter start-ups (spawned ranks for fit and for test): ~40 s CPU
def test_ddp_spawn_two_processes(train, workdir):
    _, run = train("trainer.strategy=ddp_spawn", "trainer.accelerator=cpu", "trainer.devices=2")
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["global_step"] == 2 and summary["effective_batch_size"] == 8
    assert_learned(summary["test"])  # test results come back from the spawned ranks
    assert "world size 2" in (run / "train.log").read_text()
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert run_dirs(workdir) == [run]


def test_trainer_presets_compose():
    names = sorted(p.stem for p in (CONF / "trainer").glob("*.yaml"))
    assert {"cpu", "gpu", "ddp", "ddp_find_unused", "ddp_spawn", "fsdp", "debug"} <= set(names)
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF), version_base="1.3"):
        strategies = {n: compose("train", overrides=[f"trainer={n}"]).trainer.strategy
                      for n in ["ddp", "ddp_find_unused", "ddp_spawn", "fsdp"]}
        cfg = compose("train", overrides=["trainer=ddp", "trainer.devices=[1,2,3]",
                                          "trainer.precision=bf16-mixed", "trainer.num_nodes=2"])
    assert strategies == {"ddp": "ddp", "ddp_find_unused": "ddp_find_unused_parameters_true",
                          "ddp_spawn": "ddp_spawn", "fsdp": "fsdp"}
    assert list(cfg.trainer.devices) == [1, 2, 3] and cfg.trainer.num_nodes == 2
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"


def test_fsdp_on_cpu_is_one_clear_error():
    from omegaconf import OmegaConf

    from segflow.engine.training import build_trainer
    from segflow.infra.errors import ConfigError

    cfg = OmegaConf.create({"trainer": {"_target_": "pytorch_lightning.Trainer",
                                        "accelerator": "cpu", "devices": 2, "strategy": "fsdp"}})
    with pytest.raises(ConfigError, match="trainer=fsdp needs CUDA GPUs"):
        build_trainer(cfg)
    cfg.trainer.strategy, cfg.trainer.devices = "ddp", "five"  # Lightning's own refusal
    with pytest.raises(ConfigError, match=r"trainer.devices=five.*cannot run here"):
        build_trainer(cfg)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_ddp_on_all_gpus_bf16(train, workdir):
    n = torch.cuda.device_count()
    _, run = train("trainer.accelerator=gpu", "trainer.strategy=ddp", "trainer.devices=-1",
                   "trainer.precision=bf16-mixed", "trainer.max_epochs=2")
    summary, _ = _check_job_folder(run) if n > 1 else (json.loads((run / "metrics.json").read_text()), None)
    assert summary["effective_batch_size"] == 4 * n
