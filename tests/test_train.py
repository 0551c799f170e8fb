"""End-to-end runs of `python -m segflow.train` (tiny nets, tiny synthetic data, CPU)."""

import json

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import assert_learned, run_dirs


def test_run_folder_layout_metrics_and_tensorboard(train):
    proc, run = train("trainer.max_epochs=2", "model.num_log_images=2")
    assert run.parent.name == "unet_synthetic_xca" and run.parent.parent.name == "runs"
    for rel in [".hydra/config.yaml", ".hydra/overrides.yaml", "train.log",
                "checkpoints/last.ckpt", "checkpoints/best.ckpt", "metrics.json"]:
        assert (run / rel).is_file(), rel
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["global_step"] == 4 and summary["effective_batch_size"] == 4
    # 4 steps: above the all-foreground Dice of synthetic XCA (≈ 0.17; measured 0.34) and chance AUC.
    assert_learned(summary["test"], dice_floor=0.25, auc_floor=0.6)
    log = (run / "train.log").read_text()
    assert "effective batch size = train_bs 2 x num_samples_per_image 2 x world size 1" in log
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1, events  # one event file per run, fit and test together
    acc = EventAccumulator(str(events[0]), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    for tag in ["val/dice", "val/auc", "val/sensitivity", "val/specificity", "val/iou",
                "val/accuracy", "train/loss", "test/dice"]:
        assert tag in scalars, (tag, scalars)
    assert len(acc.Scalars("val/dice")) == 2  # one per epoch
    images = acc.Tags()["images"]
    assert sorted(images) == ["val_images/0006.png", "val_images/0007.png"], images
    img = acc.Images("val_images/0006.png")[-1]
    assert img.width > 4 * img.height  # image | truth | prediction | error side by side


def test_named_log_images(train):
    _, run = train("model.log_image_names=[0007.png]")
    acc = EventAccumulator(str(next((run / "tensorboard").glob("events*"))), size_guidance={"images": 0})
    acc.Reload()
    assert acc.Tags()["images"] == ["val_images/0007.png"]


def test_resume_continues_step_and_optimizer_state(train):
    _, first = train("trainer.max_epochs=2")
    last = first / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 4 and saved["epoch"] == 1
    _, second = train("trainer.max_epochs=3", f"ckpt_path={last}")
    assert second != first
    resumed = torch.load(second / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert resumed["global_step"] == 6 and resumed["epoch"] == 2
    # AdamW's per-parameter step counter continues from the saved state (4 + 2), it does
    # not restart (a fresh optimiser would be at 2).
    steps = {float(s["step"]) for s in resumed["optimizer_states"][0]["state"].values()}
    assert steps == {6.0}
    assert resumed["lr_schedulers"][0]["last_epoch"] == 6
    assert "Restoring states from the checkpoint" in (second / "train.log").read_text()


def test_missing_resume_checkpoint_is_one_clear_error(train, workdir):
    proc, _ = train("ckpt_path=/nonexistent/last.ckpt", expect_ok=False)
    assert proc.returncode == 2
    assert "ckpt_path=/nonexistent/last.ckpt does not exist" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


def test_bad_data_folder_is_one_clear_error(train, workdir):
    proc, _ = train("data=folder", f"data.root={workdir}/nowhere", expect_ok=False)
    out = proc.stderr + proc.stdout
    assert proc.returncode == 2
    assert f"data folder {workdir}/nowhere/train does not exist" in out and "data.root" in out
    assert "Traceback" not in out


def test_image_without_label_is_one_clear_error_in_a_worker_run(train, workdir):
    import cv2
    import numpy as np

    root = workdir / "mine"
    for split in ("train", "val"):
        for sub in ("image", "label"):
            (root / split / sub).mkdir(parents=True)
        for i in range(2):
            cv2.imwrite(str(root / split / "image" / f"{i}.png"), np.zeros((40, 40), np.uint8))
            cv2.imwrite(str(root / split / "label" / f"{i}.png"), np.zeros((40, 40), np.uint8))
    cv2.imwrite(str(root / "train" / "image" / "9.png"), np.zeros((40, 40), np.uint8))
    proc, _ = train("data=folder", f"data.root={root}", "data.num_workers=2", expect_ok=False)
    out = proc.stderr + proc.stdout
    assert proc.returncode == 2 and "9.png has no label" in out and "Traceback" not in out


def test_csnet_on_synthetic_octa(train):
    _, run = train("model=csnet", "data=synthetic_octa")
    assert run.parent.name == "csnet_synthetic_octa"
    assert json.loads((run / "metrics.json").read_text())["model"] == "csnet"


def test_multirun_writes_one_folder_per_job(train, workdir):
    proc, _ = train("-m", "model=unet,csnet")
    jobs = run_dirs(workdir, "multirun")
    assert len(jobs) == 2, jobs
    assert {j.name for j in jobs} == {"0", "1"}
    # named after the sweep (the swept key and the data), not after its first model
    assert all(j.parent.parent.name == "model_synthetic_xca" for j in jobs)
    models = {json.loads((j / "metrics.json").read_text())["model"] for j in jobs}
    assert models == {"unet", "csnet"}
    for j in jobs:
        assert (j / "checkpoints" / "last.ckpt").is_file()
        assert len(list((j / "tensorboard").glob("events*"))) == 1
    assert not (workdir / "outputs" / "runs").exists()  # nothing stray


def test_ema_weights_are_checkpointed_and_raw_weights_kept(train):
    _, run = train("trainer.max_epochs=2", "model.ema_decay=0.9")
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert "current_model_state" in ckpt and "averaging_state" in ckpt
    key = "net.head.weight"
    assert not torch.equal(ckpt["state_dict"][key], ckpt["current_model_state"][key])


def test_the_default_sweep_name_comes_from_the_swept_keys():
    from segflow.runs.layout import swept_keys

    assert swept_keys(["model=unet,csnet", "data=synthetic_octa", "seed=range(3)"]) == ["model", "seed"]
    assert swept_keys(["callbacks.time_to_dice.levels=[0.7,0.8]", "+x=choice(1,2)",
                       "hydra.launcher.n_jobs=2,3", "sweep_name=a,b"]) == ["x"]
    from segflow.runs.layout import sweep_name

    assert sweep_name("unet_synthetic_xca", "synthetic_xca", ["model=unet,csnet"]) == "model_synthetic_xca"
    assert sweep_name("unet_x", "x", ["data=a,b", "seed=0,1"]) == "data-seed"
    assert sweep_name("unet_x", "x", ["model=unet"]) == sweep_name("unet_x", "x", None) == "unet_x"
