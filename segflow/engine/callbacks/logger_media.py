"""What goes to every logger beside the metrics: the resolved run config and image grids.

Each Lightning logger stores these its own way; the functions below dispatch on the
logger's type and skip loggers that have no such notion (CSV keeps no images):

========================  ==================================  =============================
logger                    resolved config                     validation image grids
========================  ==================================  =============================
TensorBoard               text ``config`` (YAML)              images ``val_images/<name>``
MLflow                    artifact ``config.yaml``            artifacts ``val_images/*.png``
Weights & Biases          ``run.config``                      ``val_images/<name>`` images
CSV                       ``hparams.yaml`` (hyper-parameters)  —
========================  ==================================  =============================
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import yaml
from hydra.errors import InstantiationException
from torch import Tensor

from segflow.infra.errors import ConfigError

log = logging.getLogger(__name__)

#: logger class name → the optional extra that provides it
EXTRAS = {"MLFlowLogger": ("mlflow", "mlflow"), "WandbLogger": ("wandb", "wandb")}


def build_loggers(group: Any) -> list[Any]:
    """Instantiate the ``logger`` group; a logger whose package is not installed becomes one
    :class:`ConfigError` saying what to install."""
    from segflow.runs.logs import build_many

    try:
        return build_many(group)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, ModuleNotFoundError | ImportError):
            for name, (extra, package) in EXTRAS.items():
                if name in str(exc) or package in str(cause):
                    raise ConfigError(
                        f"logger={extra} needs the {package} package, which is not installed: "
                        f"pip install 'segflow[{extra}]' (or pip install {package}), or choose "
                        f"another logger (logger=tensorboard)") from None
        raise


def _kind(logger: Any) -> str:
    return type(logger).__name__


def log_config(loggers: list[Any], config: dict[str, Any]) -> None:
    """The full resolved run config to every logger that can store it."""
    text = yaml.safe_dump(config, sort_keys=False)
    for logger in loggers:
        kind = _kind(logger)
        try:
            if kind == "TensorBoardLogger":
                logger.experiment.add_text("config", f"```yaml\n{text}\n```", 0)
            elif kind == "MLFlowLogger":
                logger.experiment.log_text(logger.run_id, text, "config.yaml")
            elif kind == "WandbLogger":
                logger.experiment.config.update(config, allow_val_change=True)
        except Exception as exc:  # noqa: BLE001 - a logger's hiccup must not stop training
            log.warning("could not log the config to %s: %s", kind, exc)


def log_image_grid(logger: Any, name: str, grid: Tensor, step: int) -> bool:
    """One image grid (uint8 (3, H, W)) to ``logger``; False when it keeps no images."""
    kind = _kind(logger)
    if kind == "TensorBoardLogger":
        logger.experiment.add_image(f"val_images/{name}", grid, step)
        return True
    hwc = np.ascontiguousarray(grid.permute(1, 2, 0).cpu().numpy())
    if kind == "MLFlowLogger":
        stem = name.rsplit(".", 1)[0]
        logger.experiment.log_image(logger.run_id, hwc,
                                    artifact_file=f"val_images/{stem}_step{step:07d}.png")
        return True
    if kind == "WandbLogger":
        logger.log_image(key=f"val_images/{name}", images=[hwc], step=step)
        return True
    return False
