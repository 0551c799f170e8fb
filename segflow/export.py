"""``python -m segflow.export``: a trained run's network as TorchScript or ONNX.

Examples:
    python -m segflow.export run_dir=outputs/runs/unet_synthetic_xca/<time>
    python -m segflow.export run_dir=<run> format=onnx          # pip install 'segflow[export]'
    python -m segflow.export run_dir=<run>/checkpoints/last.ckpt output_dir=exported size=128

Writes ``model.pt`` / ``model.onnx`` and ``export.json`` (inputs, output, preprocessing,
threshold, and a generative run's method and sampler settings) into ``output_dir``
(default: a new ``<run>/export/<format>``); see :mod:`segflow.inference.export`.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from segflow.conf.resolvers import register_resolvers
from segflow.inference.export import export_configured
from segflow.infra.commands import start_hydra
from segflow.infra.errors import command
from segflow.runs.guards import run_output_guard

log = logging.getLogger("segflow.export")


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def _hydra_main(cfg: DictConfig) -> None:
    with run_output_guard(cfg, log) as out:  # a failed export leaves no folder of its own
        export_configured(cfg, out)


@command
def main() -> None:
    """Entry point (``segflow-export``): ``model.*`` overrides merge into the run's config."""
    start_hydra(_hydra_main, register_resolvers, open_keys=True)


if __name__ == "__main__":
    sys.exit(main())
