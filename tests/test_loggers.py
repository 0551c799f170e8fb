"""logger=mlflow (its default local SQLite store): metrics, the resolved config and validation image grids
reach the store; a logger whose package is missing is one clear error."""

from __future__ import annotations

import importlib.util

import pytest
import yaml

from conftest import run_entry


def test_mlflow_run_in_a_local_store(train, workdir):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    from mlflow.tracking import MlflowClient

    _, run = train("logger=mlflow", "trainer.max_epochs=2", "experiment_name=mlf")
    store = workdir / "outputs" / "mlflow.db"  # the default: <output_root>/mlflow.db
    assert store.is_file()
    client = MlflowClient(f"sqlite:///{store}")
    exp = client.get_experiment_by_name("mlf")
    (mlrun,) = client.search_runs([exp.experiment_id])
    assert mlrun.info.status == "FINISHED"
    assert "val/dice" in mlrun.data.metrics and "train/loss_step" in mlrun.data.metrics
    assert mlrun.data.params["model"] == "unet" and mlrun.data.tags["run_dir"] == str(run)
    arts = {a.path for a in client.list_artifacts(mlrun.info.run_id)}
    assert {"config.yaml", "val_images"} <= arts
    grids = client.list_artifacts(mlrun.info.run_id, "val_images")
    assert grids and all(g.path.endswith(".png") for g in grids)
    assert (workdir / "outputs" / "mlartifacts").is_dir()
    local = client.download_artifacts(mlrun.info.run_id, "config.yaml", str(workdir))
    config = yaml.safe_load(open(local))
    assert config["model"]["name"] == "unet" and config["experiment_name"] == "mlf"


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_a_logger_without_its_package_says_what_to_install(workdir):
    proc = run_entry("segflow.train", ["logger=wandb", "debug=default"], workdir)
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert "pip install 'segflow[wandb]'" in err and "Traceback" not in err
