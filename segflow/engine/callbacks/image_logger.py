"""Image grids of chosen validation images, to every logger that keeps images."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from segflow.engine.callbacks.logger_media import log_image_grid
from segflow.engine.distributed import all_gather_object

log = logging.getLogger(__name__)


def _to_rgb(x: Tensor) -> Tensor:
    """(C, H, W) → (3, H, W) in [0, 1], min-max scaled per image."""
    x = x.float()
    x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-8)
    return x.expand(3, -1, -1) if x.shape[0] == 1 else x[:3]


def make_grid(image: Tensor, mask: Tensor, probs: Tensor, uncertainty: Tensor | None,
              threshold: float = 0.5, valid: Tensor | None = None) -> Tensor:
    """One row: image | truth | prediction | [uncertainty] | error, as uint8 (3, H, W·k).

    Error colours: true positive white, false positive red, false negative blue (outside
    the field of view: dark grey).

    Args:
        image: (C, H, W) normalised image; mask, probs, uncertainty, valid: (1, H, W).
    """
    pred = probs > threshold
    truth = mask > 0.5
    err = torch.zeros(3, *mask.shape[-2:], device=mask.device)
    tp, fp, fn = (pred & truth)[0], (pred & ~truth)[0], (~pred & truth)[0]
    err[:, tp] = 1.0
    err[0, fp] = 1.0
    err[2, fn] = 1.0
    if valid is not None:
        err[:, (valid[0] <= 0.5)] = 0.25
    cols = [_to_rgb(image), truth.float().expand(3, -1, -1), probs.float().clamp(0, 1).expand(3, -1, -1)]
    if uncertainty is not None:
        # The std of samples in [0, 1] is at most 0.5: scale by 2 for a fixed colour range.
        cols.append((2 * uncertainty.float()).clamp(0, 1).expand(3, -1, -1))
    cols.append(err)
    sep = torch.ones(3, mask.shape[-2], 2, device=mask.device)
    row = torch.cat([c for col in cols for c in (col, sep)][:-1], dim=2)
    return (row * 255).round().to(torch.uint8).cpu()


class ValImageLogger(pl.Callback):
    """Logs image | truth | prediction | uncertainty | error grids of validation images.

    Which images: the module's ``log_image_names`` (file names or stems), or, when empty,
    the first ``num_log_images`` of the validation set. Under DDP the grids are gathered
    from every rank so a named image is logged wherever it was evaluated; only rank 0
    writes. Reads its settings from the module (``model.log_image_enabled``,
    ``model.log_image_names``, ``model.num_log_images``).
    """

    def __init__(self, every_n_val_epochs: int = 1):
        self.every = max(1, every_n_val_epochs)
        self._grids: list[tuple[str, Tensor]] = []
        self._val_epochs = 0

    def _wanted(self, module: Any, name: str, index: int) -> bool:
        names = module.log_image_names
        if names:
            return name in names or Path(name).stem in {Path(n).stem for n in names}
        return index < module.num_log_images

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Say so when ``model.log_image_names`` names no validation image (else nothing is
        logged without a word)."""
        names = list(getattr(pl_module, "log_image_names", None) or [])
        dm = getattr(trainer, "datamodule", None)
        if not names or not getattr(pl_module, "log_image_enabled", False) or dm is None \
                or not hasattr(dm, "samples") or trainer.global_rank != 0:
            return
        try:
            have = [s.name for s in dm.samples("val")]
        except Exception:  # noqa: BLE001 - the datamodule reports its own errors
            return
        stems = {Path(n).stem for n in have}
        missing = [n for n in names if n not in have and Path(n).stem not in stems]
        if missing:
            log.warning("model.log_image_names: %s %s not among the %d validation images (e.g. "
                        "%s); nothing is logged for %s", ", ".join(map(str, missing)),
                        "is" if len(missing) == 1 else "are", len(have),
                        ", ".join(have[:3]), "it" if len(missing) == 1 else "them")

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._grids = []

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if (not getattr(pl_module, "log_image_enabled", False) or trainer.sanity_checking
                or self._val_epochs % self.every):
            return
        pred = outputs["prediction"]
        for i, (name, index) in enumerate(zip(batch["name"], batch["index"].tolist(), strict=True)):
            if self._wanted(pl_module, name, index):
                unc = None if pred.uncertainty is None else pred.uncertainty[i]
                self._grids.append((name, make_grid(batch["image"][i], batch["mask"][i], pred.probs[i],
                                                    unc, pl_module.hparams.threshold,
                                                    batch["valid"][i])))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        active = getattr(pl_module, "log_image_enabled", False) and self._val_epochs % self.every == 0
        self._val_epochs += 1
        if not active:
            return
        grids = [g for part in all_gather_object(self._grids) for g in part]
        if trainer.global_rank != 0:
            return
        for logger in trainer.loggers:  # every logger that keeps images (not CSV)
            for name, grid in sorted(grids, key=lambda g: g[0]):
                if not log_image_grid(logger, name, grid, trainer.global_step):
                    break
