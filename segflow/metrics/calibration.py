"""Calibration of probabilistic outputs: the expected calibration error (ECE)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class CalibrationError(Metric):
    """Expected calibration error of the foreground probability (Naeini et al., "Obtaining
    Well Calibrated Probabilities Using Bayesian Binning", AAAI 2015; as used by Guo et
    al., ICML 2017).

    The valid pixels of **all images are pooled** (dataset-level) into ``n_bins``
    equal-width bins of the predicted foreground probability p; in each bin the mean p
    (confidence) is compared with the fraction of vessel pixels (observed frequency):

        ECE = Σ_m (n_m / N) · |mean_p(m) − freq(m)| = Σ_m |Σ p − Σ y|_m / N.

    A perfectly calibrated predictor scores 0. For ensembles p is the ensemble mean. After
    each ``update``, ``last_per_image["ece"]`` holds each image's own ECE (its pixels only),
    the per-image value paired intervals are drawn from.
    States are per-bin sums, so the DDP reduction is exact. Also reports ``mce`` (the
    largest per-bin gap over non-empty bins).

    Args:
        n_bins: number of probability bins.
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, n_bins: int = 10, **kwargs):
        super().__init__(**kwargs)
        if n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}")
        self.n_bins = n_bins
        for name in ("count", "prob_sum", "pos_sum"):
            self.add_state(name, torch.zeros(n_bins, dtype=torch.float64), dist_reduce_fx="sum")
        self.last_per_image: dict[str, list[float]] = {}

    def update(self, probs: Tensor, mask: Tensor, valid: Tensor | None = None) -> None:
        """Args: probs, mask (B, 1, H, W); valid (B, 1, H, W) or None."""
        p = probs.detach().double().clamp(0, 1)
        y = (mask.detach() > 0.5).double()
        keep = torch.ones_like(p, dtype=torch.bool) if valid is None else valid.detach() > 0.5
        n_img = p.shape[0]
        image = torch.arange(n_img, device=p.device).view(-1, 1, 1, 1).expand_as(p)[keep]
        p, y = p[keep], y[keep]
        bins = (p * self.n_bins).long().clamp_max(self.n_bins - 1)
        cell = image * self.n_bins + bins  # (image, bin) of each valid pixel
        size = n_img * self.n_bins
        count = torch.bincount(cell, minlength=size).double().view(n_img, self.n_bins)
        prob = torch.bincount(cell, weights=p, minlength=size).view(n_img, self.n_bins)
        pos = torch.bincount(cell, weights=y, minlength=size).view(n_img, self.n_bins)
        self.count += count.sum(0)
        self.prob_sum += prob.sum(0)
        self.pos_sum += pos.sum(0)
        per_image = (prob - pos).abs().sum(1) / count.sum(1).clamp_min(1)
        self.last_per_image = {"ece": per_image.float().tolist()}

    def compute(self) -> dict[str, Tensor]:
        gap = (self.prob_sum - self.pos_sum).abs()
        total = self.count.sum().clamp_min(1)
        per_bin = torch.where(self.count > 0, gap / self.count.clamp_min(1), torch.zeros_like(gap))
        return {"ece": (gap.sum() / total).float(), "mce": per_bin.max().float()}
