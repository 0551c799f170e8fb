"""Segmenting a folder of new (unlabelled) images with a trained run (``segflow.predict``).

Each image goes through :class:`segflow.inference.api.Run`, as in the Python API: of any size
(PNG/JPG/TIF/BMP/GIF/PGM, gray or colour), preprocessed as in training (the run's
:class:`~segflow.data.preprocess.Preprocess`: ``data.channels``,
``gray_from``, ``intensity`` such as CLAHE, ``mean``, ``std``), segmented whole (padded to
the network's multiple), and written as ``<stem>_mask.png`` (0/255),
``<stem>_prob.png`` (probability × 255) and, for ensembles, ``<stem>_uncertainty.png``;
``predictions.csv`` lists per image the vessel fraction, β0/β1 of the mask and, for
ensembles, the spread of β0/β1 across the members (label-free topology uncertainty).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.progress import track

from segflow.data.finite import check_finite_output
from segflow.data.io import IMAGE_EXTS, decode_image, list_images
from segflow.inference.api import auto_fov, fov_array, load_run
from segflow.inference.window import resolve_device
from segflow.infra.debug import debug_sampling
from segflow.infra.errors import ConfigError, DataError
from segflow.infra.validate import validate_eval
from segflow.metrics import betti_numbers, member_topology
from segflow.runs.layout import PREDICTION_TABLE, check_overwrites, prediction_dir
from segflow.runs.results import save_prediction_pngs, write_csv

log = logging.getLogger("segflow.predict")


def fov_masks(cfg: DictConfig, images: dict[str, Path]) -> dict[str, Path] | str | None:
    """The field-of-view source of ``cfg``: per image stem its mask file (``fov_dir``:
    ``<stem>.<ext>`` or ``<stem>_mask.<ext>``), ``"auto"`` (``fov=auto``) or None.

    Raises:
        ConfigError: both or an unknown ``fov``; DataError: ``fov_dir`` is not a folder or
            lacks a mask for an image.
    """
    fov_dir, fov = cfg.get("fov_dir"), cfg.get("fov")
    if fov not in (None, "auto"):
        raise ConfigError(f"fov={fov} is not understood; use fov=auto (thresholded from each "
                          f"fundus image) or fov_dir=<folder of masks>")
    if fov_dir and fov:
        raise ConfigError("give fov_dir=<folder of masks> or fov=auto, not both")
    if not fov_dir:
        return fov
    folder = Path(fov_dir)
    if not folder.is_dir():
        raise DataError(f"fov_dir={folder} is not a folder; point it at the field-of-view masks "
                        f"(<stem>.png or <stem>_mask.png per image)")
    masks = list_images(folder)
    found = {stem: masks.get(stem) or masks.get(f"{stem}_mask") for stem in images}
    missing = [stem for stem, p in found.items() if p is None]
    if missing:
        raise DataError(f"fov_dir={folder} has no mask for {len(missing)} of the {len(images)} "
                        f"images (e.g. {missing[0]}: looked for {missing[0]}.<ext> and "
                        f"{missing[0]}_mask.<ext>)")
    return found


def colour_note(images: dict[str, Path], channels: int, gray_from: str) -> str | None:
    """One sentence on how colour images become the run's input, when any image is colour."""
    for path in images.values():
        try:
            raw = decode_image(path)
        except DataError:
            continue
        if raw.ndim == 3 and raw.shape[2] >= 3 and channels == 1:
            how = {"green": "their green channel", "luma": "ITU-R 601 luma (0.299 R + 0.587 G "
                   "+ 0.114 B)"}.get(gray_from, gray_from)
            return (f"colour images (e.g. {path.name}) are converted to gray by {how}, as the "
                    f"run was trained (data.gray_from={gray_from})")
        if raw.ndim == 3 and raw.shape[2] >= 3:
            return None
    return None


def limit_images(images: dict[str, Path], limit: int | float | None) -> dict[str, Path]:
    """The first images by name, as Lightning reads ``trainer.limit_predict_batches`` (one
    image per batch): an int is a count, a float in [0, 1] a fraction; None keeps all."""
    if limit is None:
        return images
    if isinstance(limit, bool) or not isinstance(limit, int | float) or limit < 0 or (
            isinstance(limit, float) and limit > 1):
        raise ConfigError(f"trainer.limit_predict_batches={limit!r}: give an image count "
                          f"(int >= 0) or a fraction in [0.0, 1.0]")
    n = limit if isinstance(limit, int) else int(len(images) * limit)
    return dict(list(images.items())[:n])


@torch.no_grad()
def predict_folder(cfg: DictConfig, out: Path | None = None) -> list[dict[str, Any]]:
    """Segment every image of ``cfg.input_dir``; returns the rows of ``predictions.csv``.

    Args:
        out: the output folder (the entry point passes Hydra's, already chosen); default
            :func:`segflow.runs.layout.prediction_dir`.

    Raises:
        DataError: no image could be read (nothing is written then).
    """
    validate_eval(cfg)
    input_dir = Path(cfg.input_dir)
    if not input_dir.is_dir():
        raise DataError(f"input_dir={input_dir} is not a folder; point it at a folder of images")
    images = list_images(input_dir)
    if not images:
        raise DataError(f"no images in {input_dir} (looked for {', '.join(IMAGE_EXTS)})")
    images = limit_images(images, OmegaConf.select(cfg, "trainer.limit_predict_batches"))
    out = out if out is not None else prediction_dir(cfg.get("output_dir"), cfg.run_dir,
                                                    cfg.input_dir)
    fovs = fov_masks(cfg, images)
    check_overwrites(out, list(images), bool(cfg.get("overwrite", False)))
    overrides = OmegaConf.to_container(cfg.model, resolve=True) if cfg.get("model") else {}
    run = load_run(cfg.run_dir, cfg.which, cfg.weights, resolve_device(str(cfg.device)),
                   **overrides)
    run.module.method = debug_sampling(run.module.method, cfg, log)  # debug=... only
    crop = OmegaConf.select(cfg, "data.eval_crop") or OmegaConf.select(
        cfg, "debug.data.eval_crop")  # asked for: the central square only
    torch.manual_seed(int(cfg.seed))
    log.info("%s (%s) on %d images from %s -> %s, settings %s", run.config.model.get("name"),
             run.checkpoint, len(images), input_dir, out, run.sampling_settings)
    note = colour_note(images, run.preprocess.channels, run.preprocess.gray_from)
    if note:
        log.info("%s", note)
    if fovs is not None:
        log.info("field of view: %s; outputs are 0 outside it",
                 "thresholded from each image (fov=auto)" if fovs == "auto" else
                 f"masks from {cfg.fov_dir}")
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    for stem, path in track(list(images.items()), description="predicting"):
        try:
            fov = None
            if fovs is not None:
                given = auto_fov(path) if fovs == "auto" else fovs[stem]
                fov = fov_array(given, run.preprocess.read(path).shape[:2], path.name)
            x = run.preprocess(path, None if fov is None else fov.astype(np.uint8))  # (C, H, W)
            if crop:
                h, w = x.shape[-2:]
                top, left = max(0, (h - int(crop)) // 2), max(0, (w - int(crop)) // 2)
                x = x[:, top: top + int(crop), left: left + int(crop)]
                fov = None if fov is None else fov[top: top + int(crop), left: left + int(crop)]
        except (DataError, ValueError) as exc:  # one unreadable file must not lose the rest
            log.error("skipped %s", exc)
            skipped.append(path.name)
            continue
        start = time.perf_counter()
        pred = run.predict_tensor(x[None], seed=None)  # the global generator seeded above
        seconds = time.perf_counter() - start
        check_finite_output(pred.probs, path.name)  # no NaN mask, no empty mask
        if fov is not None:
            pred = restrict(pred, fov)
        rows.append(_save(out, stem, path.name, x.shape[-2:], pred, run.threshold, seconds))
    if not rows:
        raise DataError(f"none of the {len(images)} images in {input_dir} could be read "
                        f"({', '.join(skipped[:3])}{' ...' if len(skipped) > 3 else ''}); see the "
                        f"errors above, re-export them (PNG recommended)")
    write_csv(out / PREDICTION_TABLE, rows)
    log.info("wrote masks, probabilities%s of %d images to %s%s",
             " and uncertainty maps" if any("n_samples" in r for r in rows) else "", len(rows),
             out, f"; skipped {len(skipped)} unreadable: {', '.join(skipped)}" if skipped else "")
    return rows


def restrict(pred: Any, fov: np.ndarray) -> Any:
    """``pred`` (a batch of one) with probabilities, uncertainty and members 0 outside ``fov``."""
    from dataclasses import replace

    inside = torch.from_numpy(fov).to(pred.probs.device)

    def zero(t):
        return None if t is None else torch.where(inside, t, torch.zeros((), dtype=t.dtype,
                                                                          device=t.device))

    return replace(pred, probs=zero(pred.probs), uncertainty=zero(pred.uncertainty),
                   samples=zero(pred.samples))


def _save(out: Path, stem: str, name: str, size: tuple[int, int], pred: Any, threshold: float,
          seconds: float) -> dict[str, Any]:
    """Write one image's PNGs; its row of ``predictions.csv``."""
    save_prediction_pngs(out, stem, pred.probs[0], None if pred.uncertainty is None
                         else pred.uncertainty[0], threshold)
    binary = (pred.probs[0, 0] > threshold).cpu().numpy()
    b0, b1 = betti_numbers(binary)
    row: dict[str, Any] = {"name": name, "height": size[0], "width": size[1],
                           "vessel_fraction": float(binary.mean()), "betti0": b0, "betti1": b1,
                           "nfe": pred.nfe, "seconds": round(seconds, 4)}
    if pred.samples is not None and pred.samples.shape[1] > 1:
        topo = member_topology((pred.samples[0, :, 0] > threshold).cpu().numpy())
        row.update(n_samples=int(pred.samples.shape[1]),
                   mean_uncertainty=float(pred.uncertainty[0].mean()),
                   betti0_std=float(np.std(topo["betti0"])),
                   betti1_std=float(np.std(topo["betti1"])))
    return row
