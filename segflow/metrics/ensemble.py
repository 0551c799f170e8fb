"""Topology-aware uncertainty of an ensemble: how much the members disagree on topology."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from segflow.metrics.topology import betti_numbers, cldice


def member_topology(samples: np.ndarray, truth: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """β0, β1 (and clDice against ``truth`` when given) of each binary ensemble member.

    Args:
        samples: (N, H, W) boolean members.
        truth: (H, W) boolean label, or None (label-free: Betti numbers only).

    Returns:
        ``{"betti0": (N,), "betti1": (N,)[, "cldice": (N,)]}``.
    """
    b = np.array([betti_numbers(s) for s in samples], dtype=np.float64).reshape(-1, 2)
    out = {"betti0": b[:, 0], "betti1": b[:, 1]}
    if truth is not None:
        out["cldice"] = np.array([cldice(s, truth) for s in samples], dtype=np.float64)
    return out


class EnsembleTopologySpread(Metric):
    """Topology-aware uncertainty: per image, the standard deviation (population, over
    the N ensemble members, each thresholded) of β0, β1 and of clDice against the label;
    then the **mean over images**. 0 when every member has the same topology. Also
    ``mean_uncertainty``: the per-pixel standard deviation of the members' probabilities,
    averaged over the valid pixels (the mean of the uncertainty map) — per image, the
    number to rank images by expected error — and, per image only,
    ``uncertainty_per_foreground``: the same spread summed and divided by the number of
    pixels the ensemble's mean calls vessel (the spread sits on vessel borders, so the
    plain mean also measures how much vessel an image has).

    Only images predicted by an ensemble of N ≥ 2 count; with none, :meth:`compute`
    returns an empty dict. Outside ``valid`` members and label are background.
    After each ``update``, ``last_per_image`` holds that batch's per-image values.

    Args:
        threshold: probability above which a member's pixel is foreground.
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, threshold: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.threshold = threshold
        for name in ("betti0_std", "betti1_std", "cldice_std", "mean_uncertainty", "n_images"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.last_per_image: dict[str, list[float]] = {}

    def update(self, samples: Tensor, mask: Tensor, valid: Tensor | None = None) -> None:
        """Args: samples (B, N, 1, H, W) members in [0, 1]; mask, valid (B, 1, H, W)."""
        if samples.ndim != 5 or samples.shape[2] != 1:
            raise ValueError(f"samples must be (B, N, 1, H, W), got {tuple(samples.shape)}")
        self.last_per_image = {}
        if samples.shape[1] < 2:
            return
        std_map = samples.detach()[:, :, 0].float().std(dim=1, unbiased=False)  # (B, H, W)
        members = samples.detach()[:, :, 0] > self.threshold
        truth = mask.detach()[:, 0] > 0.5
        if valid is not None:
            inside = valid.detach()[:, 0] > 0.5
            members, truth = members & inside[:, None], truth & inside
            weight = inside.float()
        else:
            weight = torch.ones_like(std_map)
        spread = (std_map * weight).flatten(1).sum(1)
        mean_uncertainty = (spread / weight.flatten(1).sum(1).clamp_min(1.0)).double().cpu()
        # Per predicted vessel pixel: the spread sits on vessel borders, so its image mean
        # grows with the vessel area; this one does not.
        foreground = ((samples.detach()[:, :, 0].float().mean(dim=1) > self.threshold).float()
                      * weight).flatten(1).sum(1)
        per_foreground = (spread / foreground.clamp_min(1.0)).double().cpu()
        rows: dict[str, list[float]] = {"betti0_std": [], "betti1_std": [], "cldice_std": [],
                                        "mean_uncertainty": [float(v) for v in mean_uncertainty],
                                        "uncertainty_per_foreground":
                                            [float(v) for v in per_foreground]}
        for m, t in zip(members.cpu().numpy(), truth.cpu().numpy(), strict=True):
            topo = member_topology(m, t)
            for key in ("betti0", "betti1", "cldice"):
                rows[f"{key}_std"].append(float(topo[key].std()))
        self.betti0_std += sum(rows["betti0_std"])
        self.betti1_std += sum(rows["betti1_std"])
        self.cldice_std += sum(rows["cldice_std"])
        self.mean_uncertainty += float(mean_uncertainty.sum())
        self.n_images += len(members)
        self.last_per_image = rows

    def compute(self) -> dict[str, Tensor]:
        if self.n_images == 0:
            return {}
        return {k: (getattr(self, k) / self.n_images).float()
                for k in ("betti0_std", "betti1_std", "cldice_std", "mean_uncertainty")}
