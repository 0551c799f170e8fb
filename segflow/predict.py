"""``python -m segflow.predict``: segment a folder of new (unlabelled) images.

Examples:
    python -m segflow.predict run_dir=outputs/runs/unet_synthetic_xca/<time> input_dir=my_images
    python -m segflow.predict run_dir=<run>/checkpoints/last.ckpt input_dir=in output_dir=out device=cuda:1
    python -m segflow.predict run_dir=<run> input_dir=in model.method.steps=10 model.method.n_samples=8
    python -m segflow.predict run_dir=<run> input_dir=DRIVE/test/images fov_dir=DRIVE/test/mask

Writes ``<stem>_mask.png``, ``<stem>_prob.png`` (and, for ensembles,
``<stem>_uncertainty.png``) and ``predictions.csv``; see :mod:`segflow.inference.prediction`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from segflow.infra.commands import config_help, start_hydra, wants_help
from segflow.infra.errors import command

log = logging.getLogger("segflow.predict")
CONFIG = Path(__file__).parent / "conf" / "predict.yaml"


def _hydra_main() -> None:
    import hydra
    from omegaconf import DictConfig

    from segflow.inference.prediction import predict_folder
    from segflow.runs.guards import run_output_guard

    @hydra.main(version_base="1.3", config_path="conf", config_name="predict")
    def run(cfg: DictConfig) -> None:
        with run_output_guard(cfg, log) as out:
            predict_folder(cfg, out)

    run()


@command
def main() -> None:
    """Entry point (``segflow-predict``): ``model.*`` overrides are merged into the run's
    config (see eval). ``--help``: this command's keys, at once (no torch imported)."""
    if wants_help(sys.argv[1:]):
        print(config_help(__doc__, CONFIG))
        return
    from segflow.conf.resolvers import register_resolvers

    start_hydra(_hydra_main, register_resolvers, open_keys=True)


if __name__ == "__main__":
    sys.exit(main())
