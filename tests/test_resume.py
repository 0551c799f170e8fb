"""Stopping and resuming: kill -9 then resume=auto (bit-exact on CPU), SIGTERM / Ctrl+C
write last.ckpt, config fingerprints, the OOM advice."""

from __future__ import annotations

import json
import signal

import pytest
import torch
from omegaconf import OmegaConf

from segflow.infra.errors import ConfigError
from segflow.runs.auto_resume import find_last_checkpoint, fingerprint, resolve_resume

# Three epochs of two steps; gradient noise from the global RNG (like a generative loss).
RUN = ["trainer.max_epochs=3", "+callbacks.noise._target_=tests.probes.GradNoise"]


def _load(path):
    # weights_only=True: a resumable checkpoint must not need arbitrary unpickling.
    return torch.load(path, map_location="cpu", weights_only=True)


def test_kill9_then_resume_auto_ends_bit_exact(train, workdir):
    _, straight = train(*RUN)
    proc, killed = train(*RUN, "+callbacks.kill._target_=tests.probes.SignalAt",
                         f"+callbacks.kill.signum={int(signal.SIGKILL)}", "+callbacks.kill.epoch=2",
                         expect_ok=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    saved = _load(killed / "checkpoints" / "last.ckpt")
    assert (saved["epoch"], saved["global_step"]) == (1, 4)  # the end of epoch 1
    assert not (killed / "metrics.json").exists()

    # Same command + resume=auto, with DataLoader workers this time (they must not matter).
    _, resumed = train(*RUN, "resume=auto", "data.num_workers=2")
    summary = json.loads((resumed / "metrics.json").read_text())
    assert summary["resumed_from"] == str(killed / "checkpoints" / "last.ckpt")
    assert "resume=auto: resuming" in (resumed / "train.log").read_text()
    end, ref = _load(resumed / "checkpoints" / "last.ckpt"), _load(straight / "checkpoints" / "last.ckpt")
    assert (end["epoch"], end["global_step"]) == (ref["epoch"], ref["global_step"]) == (2, 6)
    # AdamW continued from the saved moments: its step counter is 6, not 2.
    assert {float(s["step"]) for s in end["optimizer_states"][0]["state"].values()} == {6.0}
    assert end["state_dict"].keys() == ref["state_dict"].keys()
    for key, value in ref["state_dict"].items():
        assert torch.equal(end["state_dict"][key], value), f"{key} differs after resume"
    for a, b in zip(end["optimizer_states"][0]["state"].values(),
                    ref["optimizer_states"][0]["state"].values(), strict=True):
        assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])


def _stop_at_step_3(train, signum):
    proc, run = train("trainer.max_epochs=3", "+callbacks.stop._target_=tests.probes.SignalAt",
                      f"+callbacks.stop.signum={int(signum)}", "+callbacks.stop.step=3",
                      expect_ok=False)
    assert proc.returncode == 128 + signum, proc.stdout[-2000:] + proc.stderr[-3000:]
    last = _load(run / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 3  # the step in flight finished; nothing after it ran
    assert "segflow_config" in last and last["state_dict"]
    log = (run / "train.log").read_text()
    assert f"stopped by {signum.name}" in log and "resume=auto" in log
    assert not (run / "metrics.json").exists()


def test_sigterm_writes_last_ckpt_at_the_current_step(train):
    _stop_at_step_3(train, signal.SIGTERM)


@pytest.mark.slow  # the same path as SIGTERM, entered through Ctrl+C
def test_ctrl_c_writes_last_ckpt_at_the_current_step(train):
    _stop_at_step_3(train, signal.SIGINT)


def test_cuda_oom_names_the_memory_keys(monkeypatch):
    from segflow.engine.training import _stop_cleanly
    from segflow.infra.errors import OutOfMemoryAdvice

    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    cfg = OmegaConf.create({"data": {"train_bs": 4, "num_samples_per_image": 8, "image_size": 256},
                            "trainer": {"precision": "32-true", "accumulate_grad_batches": 1}})
    with pytest.raises(OutOfMemoryAdvice) as err, _stop_cleanly(cfg, None, None):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    for key in ["data.train_bs=4", "data.num_samples_per_image=8", "data.image_size=256",
                "trainer.precision=32-true", "16-mixed", "trainer.accumulate_grad_batches=1",
                "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"]:
        assert key in str(err.value), key


def _cfg(**changes):
    base = {"experiment_name": "unet_x", "seed": 1, "resume": None, "ckpt_path": None,
            "model": {"name": "unet", "learning_rate": 1e-3, "num_log_images": 4},
            "data": {"name": "x", "train_bs": 4, "num_workers": 2},
            "trainer": {"max_epochs": 10, "devices": 1, "strategy": "auto", "precision": "32-true"}}
    cfg = OmegaConf.create(base)
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def test_fingerprint_ignores_placement_and_length_but_not_learning():
    fp = fingerprint(_cfg())
    for same in [{"trainer.devices": [0, 1]}, {"trainer.strategy": "ddp"},
                 {"trainer.max_epochs": 40}, {"data.num_workers": 8},
                 {"model.num_log_images": 2}, {"ckpt_path": "x"}]:
        assert fingerprint(_cfg(**same)) == fp, same
    for other in [{"model.learning_rate": 2e-3}, {"seed": 2}, {"data.train_bs": 2},
                  {"trainer.precision": "16-mixed"}, {"model.name": "csnet"}]:
        assert fingerprint(_cfg(**other)) != fp, other


def test_fingerprint_is_an_allowlist_new_keys_keep_it():
    """A key nobody listed as defining the run (a new logging option, a speed knob, a
    whole new section) leaves the fingerprint alone; the optimisation recipe does not."""
    fp = fingerprint(_cfg())
    for unrelated in [{"model.log_image_every": 3}, {"trainer.enable_new_logging": True},
                      {"data.cache_decoded": True}, {"logger": {"name": "wandb"}},
                      {"model.inference": {"tile_size": 64}}, {"trainer.limit_val_batches": 2}]:
        cfg = _cfg()
        for key, value in unrelated.items():
            OmegaConf.update(cfg, key, value, force_add=True)
        assert fingerprint(cfg) == fp, unrelated
    for defining in [{"model.optimizer": {"_target_": "torch.optim.SGD"}},
                     {"model.scheduler": {"warmup": 0.1}}, {"model.ema_decay": 0.999},
                     {"data.augment": {"hflip": 0.0}}, {"trainer.gradient_clip_val": 1.0}]:
        cfg = _cfg()
        for key, value in defining.items():
            OmegaConf.update(cfg, key, value, force_add=True)
        assert fingerprint(cfg) != fp, defining


def test_resume_auto_picks_newest_matching_run(tmp_path, monkeypatch):
    import os
    import time

    def make_run(rel, cfg):
        run = tmp_path / rel
        (run / ".hydra").mkdir(parents=True)
        (run / "checkpoints").mkdir()
        OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
        ckpt = run / "checkpoints" / "last.ckpt"
        torch.save({"epoch": 0}, ckpt)  # intact (damaged ones are skipped: test_bad_inputs)
        return ckpt

    old = make_run("runs/unet_x/t1", _cfg())
    new = make_run("multirun/sw/t2/0", _cfg(**{"trainer.devices": 2}))
    other_lr = make_run("runs/unet_x/t3", _cfg(**{"model.learning_rate": 5e-3}))
    other_exp = make_run("runs/unet_y/t4", _cfg(experiment_name="unet_y"))
    now = time.time()
    for i, ckpt in enumerate([old, new, other_lr, other_exp]):
        os.utime(ckpt, (now + i, now + i))
    cfg = _cfg(resume="auto")
    assert find_last_checkpoint(tmp_path, "unet_x", fingerprint(cfg)) == new
    assert resolve_resume(cfg, tmp_path) == str(new)
    assert resolve_resume(_cfg(resume="auto", seed=9), tmp_path) is None  # fresh start
    assert resolve_resume(_cfg(), tmp_path) is None
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # a requeued SLURM job resumes by itself
    assert resolve_resume(_cfg(), tmp_path) == str(new)
    monkeypatch.delenv("SLURM_RESTART_COUNT")
    with pytest.raises(ConfigError, match="resume=auto"):
        resolve_resume(_cfg(resume="yes"), tmp_path)
    with pytest.raises(ConfigError, match="keep one"):
        resolve_resume(_cfg(resume="auto", ckpt_path=str(old)), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("all_ranks", [False, True], ids=["kill-rank0", "kill-every-rank"])
def test_sigterm_under_ddp_stops_every_rank_at_the_same_step(train, all_ranks):
    proc, run = train("trainer.strategy=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                      "trainer.max_epochs=3",
                      "stop_check_every=1",  # agree after every batch: stop right after step 3
                      "+callbacks.stop._target_=tests.probes.SignalAt",
                      f"+callbacks.stop.signum={int(signal.SIGTERM)}", "+callbacks.stop.step=3",
                      f"+callbacks.stop.all_ranks={all_ranks}", expect_ok=False)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    assert _load(run / "checkpoints" / "last.ckpt")["global_step"] == 3
    assert "stopped by SIGTERM" in (run / "train.log").read_text()
    assert ("SIGTERM: finishing this step" in (run / "train_rank1.log").read_text()) == all_ranks
