"""``python -m segflow.predict``: segment a folder of new (unlabelled) images.

Examples:
    python -m segflow.predict run_dir=outputs/runs/unet_synthetic_xca/<time> input_dir=my_images
    python -m segflow.predict run_dir=<run>/checkpoints/last.ckpt input_dir=in output_dir=out device=cuda:1
    python -m segflow.predict run_dir=<run> input_dir=in model.method.steps=10 model.method.n_samples=8

Images of any size (PNG/JPG/TIF/BMP/GIF/PGM, gray or colour) are preprocessed as in
training (the run's :class:`~segflow.data.preprocess.Preprocess`: ``data.channels``,
``gray_from``, ``intensity`` such as CLAHE, ``mean``, ``std``), segmented whole (padded to
the network's multiple), and written as ``<stem>_mask.png`` (0/255),
``<stem>_prob.png`` (probability × 255) and, for ensembles, ``<stem>_uncertainty.png``;
``predictions.csv`` lists per image the vessel fraction, β0/β1 of the mask and, for
ensembles, the spread of β0/β1 across the members (label-free topology uncertainty).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.progress import track

from segflow.data.io import IMAGE_EXTS, list_images
from segflow.data.preprocess import Preprocess
from segflow.errors import DataError, exit_on_user_error
from segflow.eval import load_for_eval, open_key_overrides, run_folder
from segflow.metrics import betti_numbers, member_topology
from segflow.outputs import save_prediction_pngs, write_csv
from segflow.progress import sampling_progress

log = logging.getLogger("segflow.predict")


def output_folder(output_dir: str | None, run_dir: str, input_dir: str) -> Path:
    """``output_dir`` when set, else ``<run folder>/predict/<input folder name>``."""
    if output_dir:
        return Path(output_dir)
    return run_folder(run_dir) / "predict" / Path(input_dir).resolve().name


OmegaConf.register_new_resolver(
    "segflow_predict_dir", lambda out, run, inp: str(output_folder(out, run, inp)), replace=True)


def pick_device(name: str) -> torch.device:
    """``auto`` → the first CUDA device when there is one, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"device={name} but no CUDA device is visible; use device=cpu")
    return device


@torch.no_grad()
def predict_folder(cfg: DictConfig) -> list[dict[str, Any]]:
    """Segment every image of ``cfg.input_dir``; returns the rows of ``predictions.csv``."""
    input_dir = Path(cfg.input_dir)
    if not input_dir.is_dir():
        raise DataError(f"input_dir={input_dir} is not a folder; point it at a folder of images")
    images = list_images(input_dir)
    if not images:
        raise DataError(f"no images in {input_dir} (looked for {', '.join(IMAGE_EXTS)})")
    out = output_folder(cfg.get("output_dir"), cfg.run_dir, cfg.input_dir)
    module, stored, meta = load_for_eval(cfg)
    device = pick_device(str(cfg.device))
    module.to(device)
    # The run's own preprocessing (channels, gray, data.intensity, mean/std), as in training.
    preprocess = Preprocess.from_data_config(stored.data)
    threshold = float(module.hparams.threshold)
    torch.manual_seed(int(cfg.seed))
    log.info("%s (%s) on %d images from %s -> %s, settings %s", stored.model.get("name"),
             meta["checkpoint"], len(images), input_dir, out, module.method.sampling_settings())
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    for stem, path in track(list(images.items()), description="predicting"):
        try:
            x = preprocess(path)[None].to(device)
        except (DataError, ValueError) as exc:  # one unreadable file must not lose the rest
            log.error("skipped %s", exc)
            skipped.append(path.name)
            continue
        start = time.perf_counter()
        with sampling_progress():  # a bar for long sampling loops (e.g. 1000-step DDPM)
            pred = module(x)
        seconds = time.perf_counter() - start
        save_prediction_pngs(out, stem, pred.probs[0], None if pred.uncertainty is None
                             else pred.uncertainty[0], threshold)
        binary = (pred.probs[0, 0] > threshold).cpu().numpy()
        b0, b1 = betti_numbers(binary)
        row: dict[str, Any] = {"name": path.name, "height": x.shape[-2],
                               "width": x.shape[-1], "vessel_fraction": float(binary.mean()),
                               "betti0": b0, "betti1": b1, "nfe": pred.nfe,
                               "seconds": round(seconds, 4)}
        if pred.samples is not None and pred.samples.shape[1] > 1:
            topo = member_topology((pred.samples[0, :, 0] > threshold).cpu().numpy())
            row.update(n_samples=int(pred.samples.shape[1]),
                       mean_uncertainty=float(pred.uncertainty[0].mean()),
                       betti0_std=float(np.std(topo["betti0"])),
                       betti1_std=float(np.std(topo["betti1"])))
        rows.append(row)
    write_csv(out / "predictions.csv", rows)
    log.info("wrote masks, probabilities%s of %d images to %s%s",
             " and uncertainty maps" if any("n_samples" in r for r in rows) else "", len(rows),
             out, f"; skipped {len(skipped)} unreadable: {', '.join(skipped)}" if skipped else "")
    return rows


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def _hydra_main(cfg: DictConfig) -> None:
    with exit_on_user_error(log):
        predict_folder(cfg)


def main() -> None:
    """Entry point: ``model.*`` overrides are merged into the run's config (see eval)."""
    sys.argv[1:] = open_key_overrides(sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
