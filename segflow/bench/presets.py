"""Model presets for the benchmark: discover ``conf/model/*.yaml``, compose, instantiate.

Presets are composed through the same primary config as training (``train.yaml`` with
``model=<name>``), so interpolations such as ``${data.channels}`` resolve exactly as in a
run, then built with ``hydra.utils.instantiate``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # segflow/conf


@contextlib.contextmanager
def hydra_context(conf_dir: Path = CONF_DIR) -> Iterator[None]:
    """Make the compose API usable: inside a ``@hydra.main`` app Hydra is already set up
    (with its search path, e.g. ``hydra.searchpath`` additions); elsewhere (notebooks,
    tests) initialise it on ``conf_dir`` for the duration."""
    if GlobalHydra.instance().is_initialized():
        yield
        return
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        yield


def extra_searchpath() -> list[str]:
    """``hydra.searchpath`` of the running app (e.g. ``hydra.searchpath=[file://my_conf]`` on
    the command line). Hydra applies it to the primary config's own load only, so it is
    passed on to every later compose to find presets in those folders too."""
    if HydraConfig.initialized():
        return [str(p) for p in HydraConfig.get().searchpath]
    return []


def _searchpath_overrides(searchpath: list[str] | None) -> list[str]:
    if not searchpath:
        return []
    return ["hydra.searchpath=[" + ",".join(f"'{p}'" for p in searchpath) + "]"]


def available_presets(searchpath: list[str] | None = None) -> list[str]:
    """Names of the options of the ``model`` config group (every search-path entry)."""
    loader = GlobalHydra.instance().config_loader()
    return sorted(loader.get_group_options("model", config_name="train",
                                           overrides=_searchpath_overrides(searchpath)))


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, path + "."))
        else:
            out[path] = value
    return out


def compose_preset(name: str, data_channels: int = 1, overrides: Mapping[str, Any] | None = None,
                   searchpath: list[str] | None = None) -> tuple[DictConfig, list[str]]:
    """Compose the full training config for ``model=<name>``.

    Args:
        name: a preset in the ``model`` group.
        data_channels: image channels (``data.channels``) the preset's net reads.
        overrides: dotted keys under ``model`` (nested dicts allowed) applied only where the
            preset has that key.
        searchpath: extra config folders (see :func:`extra_searchpath`).

    Returns:
        (config, notes): the composed config (``config.model`` is the preset) and a note
        for every override that did not apply.
    """
    cfg = compose(config_name="train", overrides=[
        f"model={name}", f"data.channels={data_channels}", *_searchpath_overrides(searchpath)])
    notes = []
    for key, value in _flatten(dict(overrides or {})).items():
        if OmegaConf.select(cfg.model, key, default="__absent__") == "__absent__":
            notes.append(f"{name}: no key model.{key}; override {key}={value} not applied")
            continue
        OmegaConf.update(cfg.model, key, value, merge=False)
    return cfg, notes


def build_preset(cfg: DictConfig):
    """Instantiate ``cfg.model`` (a :class:`~segflow.engine.module.SegModule`)."""
    return instantiate(cfg.model)


def preset_overrides(model_overrides: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The ``all`` overrides, then the preset's own on top."""
    merged: dict[str, Any] = {}
    for key in ("all", name):
        block = model_overrides.get(key) or {}
        merged.update(_flatten(dict(block)))
    return merged
