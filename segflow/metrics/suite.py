"""The full evaluation suite in one object: every metric, per-image rows, one ``compute``."""

from __future__ import annotations

import warnings
from typing import Any

from torch import Tensor, nn

from segflow.metrics.auc import ExactAUC
from segflow.metrics.calibration import CalibrationError
from segflow.metrics.distance import HD95
from segflow.metrics.ensemble import EnsembleTopologySpread
from segflow.metrics.segmentation import VesselMetrics
from segflow.metrics.topology import BettiErrors, ClDice


class EvalMetrics(nn.Module):
    """Every vessel metric segflow reports, updated together.

    Members (each a torchmetrics ``Metric`` whose states are sums, so the DDP
    reduction is exact; see each class for its aggregation):

    * ``pixel`` — :class:`VesselMetrics`: Dice, IoU, sensitivity, specificity, accuracy,
      precision (dataset-level and per image);
    * ``auc`` — :class:`~segflow.metrics.auc.ExactAUC`: the exact, rank-based ROC AUC
      (it replaces ``pixel``'s 1,000-bin histogram AUC, which validation keeps);
    * ``calibration`` — :class:`CalibrationError`: ECE, MCE;
    * ``cldice`` — :class:`ClDice` (dataset-level and per image);
    * ``betti`` — :class:`BettiErrors` (β0 / β1 errors, per image);
    * ``hd95`` — :class:`HD95` (per image);
    * ``spread`` — :class:`EnsembleTopologySpread` (ensembles of ≥ 2 members only).

    Args:
        threshold: probability above which a pixel is foreground.
        auc_bins: histogram bins of ``pixel``'s AUC (not reported: the exact one is).
        ece_bins: probability bins of the ECE.
        topology: include clDice, Betti errors, HD95 and the ensemble spread (CPU work
            per image: skeletons, labelling, distance transforms).
    """

    def __init__(self, threshold: float = 0.5, auc_bins: int = 1000, ece_bins: int = 10,
                 topology: bool = True):
        super().__init__()
        self.pixel = VesselMetrics(threshold, auc_bins)
        self.calibration = CalibrationError(ece_bins)
        self.auc = ExactAUC()  # registered after pixel: its "auc" replaces the binned one
        self.topology = topology
        if topology:
            self.cldice = ClDice(threshold)
            self.betti = BettiErrors(threshold)
            self.hd95 = HD95(threshold)
            self.spread = EnsembleTopologySpread(threshold)

    def update(self, probs: Tensor, mask: Tensor, valid: Tensor | None = None,
               samples: Tensor | None = None) -> list[dict[str, float]]:
        """Update every metric with one batch.

        Args:
            probs, mask: (B, 1, H, W); valid: (B, 1, H, W) or None.
            samples: (B, N, 1, H, W) ensemble members, or None.

        Returns:
            one dict of per-image metric values per image of the batch.
        """
        members: list[Any] = [self.pixel, self.calibration]
        self.pixel.update(probs, mask, valid)
        self.calibration.update(probs, mask, valid)
        self.auc.update(probs, mask, valid)
        if self.topology:
            for metric in (self.cldice, self.betti, self.hd95):
                metric.update(probs, mask, valid)
                members.append(metric)
            if samples is not None:
                self.spread.update(samples, mask, valid)
                members.append(self.spread)
        rows: list[dict[str, float]] = [{} for _ in range(probs.shape[0])]
        for metric in members:
            for key, values in metric.last_per_image.items():
                for row, value in zip(rows, values, strict=True):
                    row[key] = value
        return rows

    def compute(self) -> dict[str, Tensor]:
        """All metrics, reduced over every rank (call on all ranks)."""
        out: dict[str, Tensor] = {}
        for metric in self.children():
            with warnings.catch_warnings():
                # The ensemble spread is legitimately never updated for one-pass methods.
                warnings.filterwarnings("ignore", message=".*called before the ``update``")
                out.update(metric.compute())
        return out

    def reset(self) -> None:
        for metric in self.children():
            metric.reset()
