"""Every option of every config group composes (and the objects instantiate)."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf

from segflow.infra.errors import NetworkMismatchError

from conftest import CONF

# Groups selected in train.yaml's defaults list (hydra/ is Hydra's own node).
GROUPS = ["model", "data", "trainer", "launcher", "sweeper", "logger", "callbacks", "paths", "experiment",
          "debug"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("[!_]*.yaml"))  # _x.yaml: a base, no option


ALL = [(g, o) for g in GROUPS for o in options(g)]


@pytest.fixture(autouse=True)
def _hydra(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGFLOW_DATA_DIR", str(tmp_path / "data"))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def test_every_group_has_options():
    for g in GROUPS:
        if g != "experiment":
            assert options(g), f"conf/{g}/ is empty"


@pytest.mark.parametrize(("group", "option"), ALL, ids=[f"{g}={o}" for g, o in ALL])
def test_option_composes_and_resolves(group, option, tmp_path):
    overrides = [f"{group}={option}"]
    raw = OmegaConf.load(CONF / group / f"{option}.yaml")
    if group == "data" and OmegaConf.is_missing(raw, "root"):
        overrides.append("data.root=/tmp/somewhere")
    cfg = compose("train", overrides=overrides, return_hydra_config=True)
    # Resolve everything, Hydra's runtime interpolations included, as in a real run.
    OmegaConf.set_readonly(cfg.hydra, False)
    cfg.hydra.runtime.output_dir = str(tmp_path / "run")
    HydraConfig.instance().set_config(cfg)
    resolved = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
                for k in cfg if k != "hydra"}
    assert resolved["model"]["name"] and resolved["data"]["name"]
    assert "/runs/" in cfg.hydra.run.dir


@pytest.mark.parametrize("model", options("model"))
@pytest.mark.parametrize("data", ["synthetic_xca", "synthetic_octa"])
def test_models_and_datamodules_instantiate(model, data):
    cfg = compose("train", overrides=[f"model={model}", f"data={data}"])
    if "prior_run" in cfg.model.method:  # a refinement preset: needs a trained supervised run
        with pytest.raises(Exception) as info:
            instantiate(cfg.model)
        assert "model.method.prior_run is not set" in str(info.value)
        return
    module = instantiate(cfg.model)
    dm = instantiate(cfg.data)
    assert module.name == model and dm.name == data


def test_wrong_network_for_method_is_a_clear_type_error():
    cfg = compose("train", overrides=["model=unet"])
    OmegaConf.update(cfg, "model.net", {"_target_": "torch.nn.Conv2d", "in_channels": 1,
                                        "out_channels": 1, "kernel_size": 1}, merge=False)
    with pytest.raises(Exception) as info:
        instantiate(cfg.model)
    err = info.value
    while err is not None and not isinstance(err, NetworkMismatchError):
        err = err.__cause__ or err.__context__
    assert isinstance(err, TypeError) and "needs a SegNet network, got Conv2d" in str(err)


def test_guide_keys_exist():
    cfg = compose("train")
    for key in ["model.learning_rate", "model.log_image_enabled", "model.log_image_names",
                "data.name", "data.train_dir", "data.train_bs", "data.num_samples_per_image",
                "data.image_size", "trainer.max_epochs", "trainer.devices", "trainer.strategy",
                "trainer.precision", "trainer.check_val_every_n_epoch",
                "trainer.accumulate_grad_batches"]:
        assert OmegaConf.select(cfg, key, throw_on_missing=False) is not None or key.endswith("names"), key
    assert Path(cfg.data.train_dir).name == "train"
