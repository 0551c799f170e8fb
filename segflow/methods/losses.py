"""Segmentation losses on probabilities, restricted to valid pixels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def masked_mean(x: Tensor, valid: Tensor | None) -> Tensor:
    """Mean of ``x`` (B, C, H, W) over the pixels where ``valid`` (B, 1, H, W) is 1 (a
    weighted mean for soft weights); the plain mean when ``valid`` is None. Padding and
    out-of-FOV pixels carry no target, so every loss averages through this."""
    if valid is None:
        return x.mean()
    weight = valid.to(x.dtype).expand_as(x)
    return (x * weight).sum() / weight.sum().clamp_min(1.0)


def _masked_sum(x: Tensor, valid: Tensor | None) -> Tensor:
    """Per-sample sum over (C, H, W) of ``x`` inside ``valid``. Returns (B,)."""
    if valid is not None:
        x = x * valid
    return x.flatten(1).sum(1)


def bce_loss(logits: Tensor, mask: Tensor, valid: Tensor | None = None,
             pos_weight: float | None = None) -> Tensor:
    """Binary cross-entropy on logits, averaged over valid pixels.

    Args:
        logits, mask: (B, C, H, W); mask in {0, 1}.
        valid: (B, 1, H, W) weights (1 inside the FOV / image, 0 in padding) or None.
        pos_weight: weight of the foreground term (vessels are a small fraction).
    """
    pw = None if pos_weight is None else torch.tensor(pos_weight, device=logits.device)
    per_pixel = F.binary_cross_entropy_with_logits(logits, mask, pos_weight=pw, reduction="none")
    return masked_mean(per_pixel, valid)


def masked_bce_on_probs(probs: Tensor, mask: Tensor, valid: Tensor | None = None,
                        eps: float = 1e-4) -> Tensor:
    """Binary cross-entropy of probabilities (clamped to [eps, 1 − eps]) against a {0, 1}
    mask, averaged over valid pixels (for estimates that are not logits, e.g. x̂1)."""
    p, m = probs.float().clamp(eps, 1.0 - eps), mask.float()
    # written out: safe under autocast (F.binary_cross_entropy is not)
    return masked_mean(-(m * p.log() + (1.0 - m) * (1.0 - p).log()), valid)


def soft_dice_loss(probs: Tensor, mask: Tensor, valid: Tensor | None = None,
                   eps: float = 1.0) -> Tensor:
    """1 − soft Dice (Milletari et al., V-Net 2016), per sample then averaged.

    ``eps`` smooths empty masks (a crop with no vessel gives loss ≈ 0 for an empty prediction).
    """
    inter = _masked_sum(probs * mask, valid)
    denom = _masked_sum(probs, valid) + _masked_sum(mask, valid)
    return (1.0 - (2.0 * inter + eps) / (denom + eps)).mean()


def soft_skeleton(x: Tensor, iters: int = 10) -> Tensor:
    """Differentiable morphological skeleton of a soft mask (Shit et al., clDice, CVPR 2021).

    Iterated soft erosion (min-pool) and opening (max-pool of the erosion); the residue
    ``x − open(x)`` at each scale accumulates the skeleton.
    """

    def erode(t: Tensor) -> Tensor:
        p1 = -F.max_pool2d(-t, (3, 1), 1, (1, 0))
        p2 = -F.max_pool2d(-t, (1, 3), 1, (0, 1))
        return torch.minimum(p1, p2)

    def dilate(t: Tensor) -> Tensor:
        return F.max_pool2d(t, 3, 1, 1)

    skel = F.relu(x - dilate(erode(x)))
    for _ in range(iters):
        x = erode(x)
        delta = F.relu(x - dilate(erode(x)))
        skel = skel + F.relu(delta - skel * delta)
    return skel


def soft_cldice_loss(probs: Tensor, mask: Tensor, valid: Tensor | None = None,
                     iters: int = 10, eps: float = 1.0) -> Tensor:
    """1 − soft clDice (Shit et al., CVPR 2021): harmonic mean of topology precision
    (predicted skeleton inside the true mask) and sensitivity (true skeleton inside the
    prediction)."""
    skel_pred, skel_true = soft_skeleton(probs, iters), soft_skeleton(mask, iters)
    tprec = (_masked_sum(skel_pred * mask, valid) + eps) / (_masked_sum(skel_pred, valid) + eps)
    tsens = (_masked_sum(skel_true * probs, valid) + eps) / (_masked_sum(skel_true, valid) + eps)
    return (1.0 - 2.0 * tprec * tsens / (tprec + tsens)).mean()
