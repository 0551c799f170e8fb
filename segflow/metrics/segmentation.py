"""Pixel-overlap metrics for binary vessel segmentation as a torchmetrics ``Metric``."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class VesselMetrics(Metric):
    """Dice/F1, IoU, sensitivity, specificity, accuracy, precision and binned AUC-ROC.

    Aggregation (stated because papers differ):

    * ``dice``, ``iou``, ``sensitivity``, ``specificity``, ``accuracy``, ``precision``:
      **dataset-level** — confusion counts summed over every valid pixel of every image,
      then the ratio (the usual protocol for DRIVE-style tables).
    * ``dice_per_image``, ``iou_per_image``: the ratio per image, then the **mean over
      images** (the usual protocol for XCA/OCTA tables).
    * ``auc``: dataset-level ROC AUC over all valid pixels from the probabilities, computed
      exactly on a histogram of ``auc_bins`` equal-width probability bins (memory bounded
      whatever the data size; ties within a bin count one half).

    Only pixels where ``valid`` > 0.5 count (field of view; padding excluded). All states
    are sums, so the DDP reduction is exact. After each ``update``, ``last_per_image``
    holds that batch's per-image ratios (for per-image tables; not a state).

    Args:
        threshold: probability above which a pixel is foreground.
        auc_bins: histogram bins for AUC.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, threshold: float = 0.5, auc_bins: int = 1000, **kwargs):
        super().__init__(**kwargs)
        self.threshold, self.auc_bins = threshold, auc_bins
        for name in ("tp", "fp", "fn", "tn", "dice_sum", "iou_sum", "n_images"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("pos_hist", torch.zeros(auc_bins, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("neg_hist", torch.zeros(auc_bins, dtype=torch.float64), dist_reduce_fx="sum")
        self.last_per_image: dict[str, list[float]] = {}

    def update(self, probs: Tensor, mask: Tensor, valid: Tensor | None = None) -> None:
        """Args: probs, mask (B, 1, H, W); valid (B, 1, H, W) or None."""
        probs = probs.detach().float()
        target = mask > 0.5
        valid_b = torch.ones_like(target) if valid is None else valid > 0.5
        pred = probs > self.threshold
        dims = tuple(range(1, probs.ndim))
        tp = (pred & target & valid_b).sum(dims).double()
        fp = (pred & ~target & valid_b).sum(dims).double()
        fn = (~pred & target & valid_b).sum(dims).double()
        tn = (~pred & ~target & valid_b).sum(dims).double()
        self.tp += tp.sum()
        self.fp += fp.sum()
        self.fn += fn.sum()
        self.tn += tn.sum()
        # Per image: an image with no vessel and no prediction scores 1 (perfect agreement).
        denom_d, denom_i = 2 * tp + fp + fn, tp + fp + fn
        self.dice_sum += torch.where(denom_d > 0, 2 * tp / denom_d.clamp_min(1), 1.0).sum()
        self.iou_sum += torch.where(denom_i > 0, tp / denom_i.clamp_min(1), 1.0).sum()
        self.n_images += probs.shape[0]
        self.last_per_image = _per_image_ratios(tp, fp, fn, tn)
        bins = (probs.clamp(0, 1) * self.auc_bins).long().clamp_max(self.auc_bins - 1)
        self.pos_hist += torch.bincount(bins[target & valid_b], minlength=self.auc_bins).double()
        self.neg_hist += torch.bincount(bins[~target & valid_b], minlength=self.auc_bins).double()

    def compute(self) -> dict[str, Tensor]:
        tp, fp, fn, tn = self.tp, self.fp, self.fn, self.tn

        def ratio(a: Tensor, b: Tensor) -> Tensor:
            return torch.where(b > 0, a / b.clamp_min(1e-12), torch.zeros_like(a))

        # AUC = P(score_pos > score_neg) + ½ P(same bin), from the two histograms.
        neg_below = torch.cumsum(self.neg_hist, 0) - self.neg_hist
        n_pos, n_neg = self.pos_hist.sum(), self.neg_hist.sum()
        auc = ratio((self.pos_hist * (neg_below + 0.5 * self.neg_hist)).sum(), n_pos * n_neg)
        out = {
            "dice": ratio(2 * tp, 2 * tp + fp + fn),
            "iou": ratio(tp, tp + fp + fn),
            "sensitivity": ratio(tp, tp + fn),
            "specificity": ratio(tn, tn + fp),
            "accuracy": ratio(tp + tn, tp + tn + fp + fn),
            "precision": ratio(tp, tp + fp),
            "auc": auc,
            "dice_per_image": ratio(self.dice_sum, self.n_images),
            "iou_per_image": ratio(self.iou_sum, self.n_images),
        }
        return {k: v.float() for k, v in out.items()}


def _per_image_ratios(tp: Tensor, fp: Tensor, fn: Tensor, tn: Tensor) -> dict[str, list[float]]:
    """Per-image ratios from (B,) confusion counts; an empty ratio (0/0) means perfect
    agreement on that class and scores 1."""

    def r(a: Tensor, b: Tensor) -> list[float]:
        return torch.where(b > 0, a / b.clamp_min(1), torch.ones_like(a)).tolist()

    return {"dice": r(2 * tp, 2 * tp + fp + fn), "iou": r(tp, tp + fp + fn),
            "sensitivity": r(tp, tp + fn), "specificity": r(tn, tn + fp),
            "precision": r(tp, tp + fp), "accuracy": r(tp + tn, tp + tn + fp + fn)}
