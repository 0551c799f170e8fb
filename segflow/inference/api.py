"""The Python API: load a trained run, segment images (arrays or files).

Example::

    import segflow
    run = segflow.load_run("outputs/runs/unet_synthetic_xca/2026-01-01_12-00-00")
    out = run.predict("image.png")                 # or an (H, W[, C]) numpy array
    out.probabilities, out.mask, out.uncertainty   # (H, W) arrays; uncertainty for ensembles
    outs = run.predict("my_images/")               # a folder, a list of paths/arrays or an
                                                   # (N, H, W[, C]) stack: a list, batched
    out = run.predict(image, steps=10, n_samples=8)  # a generative model's sampling settings

The image goes through the run's own preprocessing (:class:`segflow.data.preprocess.Preprocess`:
channels, gray conversion, ``data.intensity`` such as CLAHE, normalisation), so the
probabilities are those ``segflow.eval`` computes for the same image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from segflow.data.finite import check_finite_batch, check_finite_input
from segflow.data.preprocess import Preprocess
from segflow.infra.errors import DataError
from segflow.infra.progress import sampling_progress
from segflow.runs.checkpoints import load_model


def auto_fov(source: str | Path | np.ndarray) -> np.ndarray:
    """The field of view of a fundus image as ``segflow.prepare`` derives one
    (:func:`segflow.data.prepare.fov.threshold_fov` on the raw pixels): uint8 (H, W) in {0, 1}."""
    from segflow.data.io import decode_image
    from segflow.data.prepare.fov import threshold_fov

    raw = decode_image(source) if isinstance(source, str | Path) else np.asarray(source)
    return threshold_fov(raw)


def fov_array(fov: Any, shape: tuple[int, int], name: str | None) -> np.ndarray:
    """A field-of-view mask as bool (H, W); a path is read as a mask (non-zero inside).

    Raises:
        DataError: its size differs from the image's.
    """
    if isinstance(fov, np.ndarray) and fov.dtype == object and fov.ndim == 0:
        fov = fov.item()  # a path, as an item of a list of inputs holds it
    if isinstance(fov, str | Path):
        from segflow.data.io import read_mask

        fov = read_mask(fov)
    arr = np.asarray(fov)
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    if arr.shape != tuple(shape):
        raise DataError(f"the field-of-view mask of {name or 'the image'} is {arr.shape[1]}x"
                        f"{arr.shape[0]} px but the image is {shape[1]}x{shape[0]}; give a mask "
                        f"of the image's size")
    return arr > 0


@dataclass
class Segmentation:
    """One image's prediction.

    Attributes:
        probabilities: float32 (H, W) foreground probability (the ensemble mean for
            generative models).
        mask: bool (H, W): ``probabilities > threshold``.
        uncertainty: float32 (H, W) per-pixel spread of an ensemble, or None.
        samples: float32 (N, H, W) the ensemble members' probabilities, or None.
        nfe: network evaluations per member.
        name: the file name, or ``#i`` (the position) for arrays.
        fov: bool (H, W) field of view the prediction was restricted to, or None.
    """

    probabilities: np.ndarray
    mask: np.ndarray
    uncertainty: np.ndarray | None
    samples: np.ndarray | None
    nfe: int
    name: str | None = None
    fov: np.ndarray | None = None

    def restricted(self, fov: np.ndarray) -> Segmentation:
        """This prediction with everything outside ``fov`` (bool (H, W)) set to 0: no
        probability, mask or uncertainty outside the field of view."""
        out = [None if a is None else np.where(fov, a, np.zeros((), a.dtype))
               for a in (self.probabilities, self.mask, self.uncertainty)]
        samples = None if self.samples is None else np.where(fov[None], self.samples, 0.0)
        return Segmentation(out[0], out[1], out[2], samples, self.nfe, self.name, fov)


class Run:
    """A trained model with its preprocessing (see :func:`load_run`).

    Attributes:
        module: the :class:`~segflow.engine.module.SegModule` (eval mode).
        config: the run's resolved config (``config.model``, ``config.data``, ...).
        preprocess: the run's :class:`~segflow.data.preprocess.Preprocess`.
        checkpoint: the checkpoint file loaded.
        device: where the model runs.
    """

    def __init__(self, module: Any, config: DictConfig, checkpoint: Path,
                 device: torch.device | str = "cpu"):
        self.module, self.config, self.checkpoint = module, config, Path(checkpoint)
        self.preprocess = Preprocess.from_data_config(config.get("data"))
        self.device = torch.device(device)
        self.module.to(self.device).eval()

    @property
    def sampling_settings(self) -> dict[str, Any]:
        """The method's current sampling settings (empty for one-pass models)."""
        return self.module.method.sampling_settings()

    @property
    def threshold(self) -> float:
        return float(self.module.hparams.threshold)

    def __repr__(self) -> str:
        name = self.config.model.get("name") if self.config.get("model") is not None else None
        data = self.config.get("data") or {}
        settings = ", ".join(f"{k}={v}" for k, v in self.sampling_settings.items())
        return (f"Run({name or type(self.module.net).__name__}: {type(self.module.net).__name__} + "
                f"{type(self.module.method).__name__}, data={data.get('name', '?')}, "
                f"checkpoint={self.checkpoint}, device={self.device}, threshold={self.threshold:g}"
                f"{', ' + settings if settings else ''})")

    def to(self, device: torch.device | str) -> Run:
        self.device = torch.device(device)
        self.module.to(self.device)
        return self

    @torch.no_grad()
    def predict_tensor(self, image: torch.Tensor, seed: int | None = 0,
                       **sampling_settings: Any):
        """A preprocessed batch (B, C, H, W) → :class:`~segflow.methods.base.Prediction`."""
        check_finite_input(image, "the image tensor given to Run.predict_tensor")
        base = self.module.method
        try:
            if sampling_settings:
                self.module.method = base.with_settings(**sampling_settings)
            generator = None
            if seed is not None:
                generator = torch.Generator(device=self.device).manual_seed(int(seed))
            with sampling_progress():  # a bar for long sampling loops (e.g. 1000-step DDPM)
                return self.module(image.to(self.device), generator)
        finally:
            self.module.method = base

    def predict(self, image: Any, fov: Any = None, seed: int | None = 0,
                threshold: float | None = None, batch_size: int = 8,
                **sampling_settings: Any) -> Segmentation | list[Segmentation]:
        """Segment one image, or many in batches on the device.

        Args:
            image: an (H, W) / (H, W, 1|3|4) array in RGB order (uint8, uint16 or float in
                [0, 1]) or an image file: one :class:`Segmentation`; an (N, H, W[, C])
                stack, a list of paths and/or arrays, or a folder of images: a list of them
                in input order (folder: by file name). See :mod:`segflow.inference.inputs`.
            fov: optional field of view: an (H, W) mask (non-zero inside) or a mask file
                (a list or stack, one per image, for many), or ``"auto"``: thresholded from
                each fundus image as ``segflow.prepare`` does for datasets without masks.
                ``data.intensity`` statistics are taken inside it, as in training, and
                every output is 0 outside it (no rim of false vessels at the disc's edge).
            seed: seed of a generative model's sampling noise, drawn once per batch
                (None: unseeded).
            threshold: probability threshold of ``mask`` (default: the model's).
            batch_size: images of one size per network call.
            sampling_settings: a generative model's settings for this call, e.g.
                ``steps=10, n_samples=8, solver="heun"`` (see ``sampling_settings``).

        Returns:
            :class:`Segmentation` at the image's size, or a list of them.

        Raises:
            segflow.infra.errors.DataError: an input of another form, an empty array or folder,
                a missing file (one sentence saying what is accepted).
        """
        from segflow.inference.inputs import batches, gather

        auto = isinstance(fov, str) and fov == "auto"
        items, single = gather(image, None if auto else fov)
        fovs: list[np.ndarray | None] = []
        for it in items:
            given = auto_fov(it.source) if auto else it.fov
            fovs.append(None if given is None else
                        fov_array(given, self.preprocess.read(it.source).shape[:2], it.name))
            it.fov = None if fovs[-1] is None else fovs[-1].astype(np.uint8)
        thr = self.threshold if threshold is None else float(threshold)
        out: list[Segmentation | None] = [None] * len(items)
        for index, x in batches(items, lambda it: self.preprocess(it.source, it.fov), batch_size):
            pred = self.predict_tensor(x, seed, **sampling_settings)
            check_finite_batch(pred.probs, [items[i].name for i in index])
            for k, i in enumerate(index):
                probs = pred.probs[k, 0].float().cpu().numpy()
                unc = (None if pred.uncertainty is None
                       else pred.uncertainty[k, 0].float().cpu().numpy())
                samples = None if pred.samples is None else pred.samples[k, :, 0].float().cpu().numpy()
                out[i] = Segmentation(probs, probs > thr, unc, samples, int(pred.nfe),
                                      items[i].name)
                if fovs[i] is not None:
                    out[i] = out[i].restricted(fovs[i])
        return out[0] if single else out


def load_run(path: str | Path, which: str = "best", weights: str = "ema",
             device: torch.device | str = "cpu", **model_overrides: Any) -> Run:
    """Load a trained run for prediction.

    Args:
        path: a run folder (``outputs/runs/<experiment>/<time>``) or a ``.ckpt`` file.
        which: ``best`` or ``last`` checkpoint of a run folder.
        weights: ``ema`` (the checkpoint's weights: the average when training kept one)
            or ``raw``.
        device: ``cpu``, ``cuda``, ``cuda:1`` ...
        model_overrides: dotted keys merged into the stored model config, e.g.
            ``**{"method.steps": 10}`` or ``threshold=0.4``.

    Raises:
        segflow.infra.errors.ConfigError: no checkpoint there, or not one written by segflow.
    """
    module, stored, meta = load_model(path, which, weights, model_overrides)
    return Run(module, stored, Path(meta["checkpoint"]), device)
