"""``python -m segflow.export``: a trained run's network as TorchScript or ONNX.

Examples:
    python -m segflow.export run_dir=outputs/runs/unet_synthetic_xca/<time>
    python -m segflow.export run_dir=<run> format=onnx          # pip install 'segflow[export]'
    python -m segflow.export run_dir=<run>/checkpoints/last.ckpt output_dir=exported size=128

Writes ``model.pt`` / ``model.onnx`` and ``export.json`` (inputs, output, preprocessing,
threshold, and a generative run's method and sampler settings) into ``output_dir``
(default: a new ``<run>/export/<format>``); see :mod:`segflow.export`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from segflow.cli.guards import run_output_guard
from segflow.cli.overrides import open_key_overrides
from segflow.conf.resolvers import register_resolvers
from segflow.config_files import check_config_dirs
from segflow.errors import ConfigError
from segflow.export import check_format
from segflow.runs.checkpoints import checkpoint_path
from segflow.runs.folders import claim_dir, run_folder

log = logging.getLogger("segflow.export")


def output_folder(output_dir: str | None, run_dir: str, fmt: str) -> Path:
    """``output_dir``, else a new ``<run folder>/export/<format>`` (``_1``, ``_2`` when taken).

    Raises:
        ConfigError: ``run_dir`` is missing or holds no checkpoint, or the format cannot be
            written here (checked before any folder is made).
    """
    if not Path(run_dir).exists():
        raise ConfigError(f"run_dir={run_dir} does not exist; pass a run folder "
                          f"(outputs/runs/<experiment>/<time>) or a .ckpt file")
    check_format(str(fmt))
    checkpoint_path(run_dir)  # a folder without a checkpoint: refused before any folder is made
    if output_dir:
        return Path(output_dir)
    return claim_dir(run_folder(run_dir) / "export" / str(fmt))


def export(cfg: DictConfig, out: Path) -> Path:
    """Load ``cfg.run_dir`` and export its network into ``out``; returns ``export.json``."""
    from segflow.api import load_run
    from segflow.export import export_run

    model = cfg.get("model")
    overrides = OmegaConf.to_container(model, resolve=True) if model is not None else {}
    run = load_run(cfg.run_dir, which=cfg.which, weights=cfg.weights, device="cpu",
                   **{str(k): v for k, v in overrides.items()})
    return export_run(run, out, str(cfg.format), cfg.get("size"), float(cfg.tolerance))


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def _hydra_main(cfg: DictConfig) -> None:
    with run_output_guard(cfg, log) as out:  # a failed export leaves no folder of its own
        export(cfg, out)


def main() -> None:
    """Entry point (``segflow-export``): ``model.*`` overrides merge into the run's config."""
    check_config_dirs()  # a YAML syntax error in --config-dir: one sentence
    sys.argv[1:] = open_key_overrides(sys.argv[1:])
    register_resolvers()
    _hydra_main()


if __name__ == "__main__":
    main()
