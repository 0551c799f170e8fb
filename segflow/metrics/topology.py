"""Topology metrics of binary vessel masks: clDice and exact Betti-number errors.

The per-image functions work on numpy boolean arrays (H, W); the ``Metric`` classes wrap
them for batches of probabilities and keep only sums as states, so the DDP reduction is
exact. Connectivity follows the usual digital-topology pairing that makes Betti numbers
well defined on the pixel grid: **foreground 8-connected, background 4-connected**.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from skimage.morphology import skeletonize
from torch import Tensor
from torchmetrics import Metric

# 8-connectivity for the foreground, 4-connectivity for the background (the dual pair:
# a diagonal chain of foreground pixels is one curve *and* separates the background).
FOREGROUND_STRUCTURE = np.ones((3, 3), dtype=bool)
BACKGROUND_STRUCTURE = ndimage.generate_binary_structure(2, 1)


def betti_numbers(mask: np.ndarray) -> tuple[int, int]:
    """Exact Betti numbers of a 2-D binary mask.

    β0 = number of 8-connected foreground components; β1 = number of holes = 4-connected
    background components that do not touch the image border.

    Args:
        mask: (H, W) boolean.

    Returns:
        (β0, β1).
    """
    mask = np.asarray(mask, dtype=bool)
    _, beta0 = ndimage.label(mask, structure=FOREGROUND_STRUCTURE)
    background, n_bg = ndimage.label(~mask, structure=BACKGROUND_STRUCTURE)
    if n_bg == 0:
        return int(beta0), 0
    border = np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])
    touching = np.unique(border[border > 0])
    return int(beta0), int(n_bg - touching.size)


def cldice_parts(pred: np.ndarray, target: np.ndarray) -> tuple[int, int, int, int]:
    """The four counts of clDice for one image.

    Returns:
        (|S(P) ∩ L|, |S(P)|, |S(L) ∩ P|, |S(L)|) with S the morphological skeleton
        (Zhang–Suen thinning, ``skimage.morphology.skeletonize``), P the prediction and
        L the label.
    """
    pred, target = np.asarray(pred, dtype=bool), np.asarray(target, dtype=bool)
    skel_pred = skeletonize(pred) if pred.any() else np.zeros_like(pred)
    skel_true = skeletonize(target) if target.any() else np.zeros_like(target)
    return (int((skel_pred & target).sum()), int(skel_pred.sum()),
            int((skel_true & pred).sum()), int(skel_true.sum()))


def cldice_from_parts(pred_in_true: float, pred_skel: float, true_in_pred: float,
                      true_skel: float) -> float:
    """clDice = harmonic mean of topology precision |S(P)∩L|/|S(P)| and topology
    sensitivity |S(L)∩P|/|S(L)|. Both skeletons empty (no vessel, none predicted) → 1;
    only one empty → 0."""
    if pred_skel == 0 and true_skel == 0:
        return 1.0
    t_prec = pred_in_true / pred_skel if pred_skel > 0 else 0.0
    t_sens = true_in_pred / true_skel if true_skel > 0 else 0.0
    if t_prec + t_sens == 0:
        return 0.0
    return 2.0 * t_prec * t_sens / (t_prec + t_sens)


def cldice(pred: np.ndarray, target: np.ndarray) -> float:
    """clDice of one pair of (H, W) boolean masks (Shit et al., CVPR 2021)."""
    return cldice_from_parts(*cldice_parts(pred, target))


def binarise(probs: Tensor, mask: Tensor, valid: Tensor | None,
             threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(B, 1, H, W) probabilities and labels → boolean numpy (B, H, W) prediction and
    truth, both set to background outside the field of view."""
    if probs.ndim != 4 or probs.shape[1] != 1:
        raise ValueError(f"topology metrics expect (B, 1, H, W) probabilities, got {tuple(probs.shape)}")
    pred = probs.detach()[:, 0] > threshold
    truth = mask.detach()[:, 0] > 0.5
    if valid is not None:
        inside = valid.detach()[:, 0] > 0.5
        pred, truth = pred & inside, truth & inside
    return pred.cpu().numpy(), truth.cpu().numpy()


class ClDice(Metric):
    """clDice (Shit et al., "clDice — a Novel Topology-Preserving Loss Function for
    Tubular Structure Segmentation", CVPR 2021) on thresholded predictions.

    Aggregation, both reported:

    * ``cldice`` — **dataset-level**: the four skeleton counts summed over all images,
      then topology precision / sensitivity and their harmonic mean;
    * ``cldice_per_image`` — clDice per image, then the **mean over images**.

    Pixels outside ``valid`` (field of view) are background in both masks.
    After each ``update``, ``last_per_image`` holds that batch's per-image values.

    Args:
        threshold: probability above which a pixel is foreground.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, threshold: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.threshold = threshold
        for name in ("pred_in_true", "pred_skel", "true_in_pred", "true_skel", "cldice_sum",
                     "n_images"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.last_per_image: dict[str, list[float]] = {}

    def update(self, probs: Tensor, mask: Tensor, valid: Tensor | None = None) -> None:
        """Args: probs, mask (B, 1, H, W); valid (B, 1, H, W) or None."""
        pred, truth = binarise(probs, mask, valid, self.threshold)
        values = []
        for p, t in zip(pred, truth, strict=True):
            parts = cldice_parts(p, t)
            self.pred_in_true += parts[0]
            self.pred_skel += parts[1]
            self.true_in_pred += parts[2]
            self.true_skel += parts[3]
            values.append(cldice_from_parts(*parts))
        self.cldice_sum += float(sum(values))
        self.n_images += len(values)
        self.last_per_image = {"cldice": values}

    def compute(self) -> dict[str, Tensor]:
        pooled = cldice_from_parts(float(self.pred_in_true), float(self.pred_skel),
                                   float(self.true_in_pred), float(self.true_skel))
        mean = float(self.cldice_sum / self.n_images) if self.n_images > 0 else 0.0
        return {"cldice": torch.tensor(pooled), "cldice_per_image": torch.tensor(mean)}


class BettiErrors(Metric):
    """Betti-0 and Betti-1 errors: |β_k(prediction) − β_k(label)| per image, then the
    **mean over images** (the protocol of topology-aware segmentation papers, e.g. Hu et
    al., NeurIPS 2019; Shit et al., CVPR 2021).

    β0 counts 8-connected foreground components, β1 counts holes (4-connected
    background components not touching the border), computed exactly by connected
    component labelling (no persistent-homology approximation). Outside ``valid`` both
    masks are background. Also reports the mean β0/β1 of predictions and labels.
    After each ``update``, ``last_per_image`` holds that batch's per-image values.

    Args:
        threshold: probability above which a pixel is foreground.
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, threshold: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.threshold = threshold
        for name in ("betti0_err", "betti1_err", "betti0_pred", "betti1_pred", "betti0_true",
                     "betti1_true", "n_images"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.last_per_image: dict[str, list[float]] = {}

    def update(self, probs: Tensor, mask: Tensor, valid: Tensor | None = None) -> None:
        """Args: probs, mask (B, 1, H, W); valid (B, 1, H, W) or None."""
        pred, truth = binarise(probs, mask, valid, self.threshold)
        rows: dict[str, list[float]] = {k: [] for k in ("betti0_pred", "betti1_pred",
                                                        "betti0_true", "betti1_true",
                                                        "betti0_error", "betti1_error")}
        for p, t in zip(pred, truth, strict=True):
            b0p, b1p = betti_numbers(p)
            b0t, b1t = betti_numbers(t)
            for key, val in (("betti0_pred", b0p), ("betti1_pred", b1p), ("betti0_true", b0t),
                             ("betti1_true", b1t), ("betti0_error", abs(b0p - b0t)),
                             ("betti1_error", abs(b1p - b1t))):
                rows[key].append(float(val))
        self.betti0_err += sum(rows["betti0_error"])
        self.betti1_err += sum(rows["betti1_error"])
        self.betti0_pred += sum(rows["betti0_pred"])
        self.betti1_pred += sum(rows["betti1_pred"])
        self.betti0_true += sum(rows["betti0_true"])
        self.betti1_true += sum(rows["betti1_true"])
        self.n_images += len(pred)
        self.last_per_image = rows

    def compute(self) -> dict[str, Tensor]:
        n = self.n_images.clamp_min(1)
        return {"betti0_error": (self.betti0_err / n).float(),
                "betti1_error": (self.betti1_err / n).float(),
                "betti0_pred": (self.betti0_pred / n).float(),
                "betti1_pred": (self.betti1_pred / n).float(),
                "betti0_true": (self.betti0_true / n).float(),
                "betti1_true": (self.betti1_true / n).float()}
