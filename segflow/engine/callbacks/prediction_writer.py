"""Write probability / binary / uncertainty PNGs of every test image (used by ``segflow.eval``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from segflow.runs.results import save_prediction_pngs


class TestPredictionWriter(pl.Callback):
    """After each test batch, save each image's prediction as PNGs in ``folder``.

    Every rank writes the images it evaluated (names are unique, so files never clash).

    Args:
        folder: where to write; change it between ``trainer.test`` calls (grids).
        max_images: only images whose dataset index is below this (None: all).
    """

    def __init__(self, folder: str | Path | None = None, max_images: int | None = None):
        self.folder = Path(folder) if folder is not None else None
        self.max_images = max_images

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                          outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.folder is None:
            return
        pred = outputs["prediction"]
        threshold = float(pl_module.hparams.threshold)
        for i, (name, index) in enumerate(zip(batch["name"], batch["index"].tolist(), strict=True)):
            if self.max_images is not None and index >= self.max_images:
                continue
            unc = None if pred.uncertainty is None else pred.uncertainty[i]
            save_prediction_pngs(self.folder, Path(name).stem, pred.probs[i], unc, threshold)
